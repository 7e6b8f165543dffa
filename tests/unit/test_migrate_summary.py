"""`make migrate`'s closing lines (tools.migrate.summary) from the lines a run logged."""
from __future__ import annotations

from authmigrate.tasks import FAILURE_MARK
from tools.migrate import summary

FINISHED = ("2026-12-01T21:51:12.523209Z [info     ] DagRun Finished: dag_id=mongo_to_postgres, logical_date=x, "
            "run_id=manual__1, run_start_date=x, state={state}, run_type=manual, [airflow.models.dagrun.DagRun]")


def logged(text: str) -> str:
    return f"2026-12-01T21:51:12Z [error    ] {text} [authmigrate] loc=tasks.py:308"


def test_a_failed_run_ends_with_each_task_failure_and_what_to_do():
    lines = [
        logged(f"{FAILURE_MARK} users.plan failed (try 1): collection 'user' not found (it has: ['users'])"),
        logged(f"{FAILURE_MARK} users.plan   What to do: correct the param"),
        FINISHED.format(state="failed"),
    ]
    assert summary(lines, 1) == [
        "",
        "==== authmigrate: run manual__1 FAILED (airflow exit code 1) ====",
        "  users.plan failed (try 1): collection 'user' not found (it has: ['users'])",
        "  users.plan   What to do: correct the param",
    ]


def test_a_run_that_reported_nothing_says_so_and_a_passing_run_points_at_the_report():
    assert summary([], -9)[1:] == [
        "==== authmigrate: run ? FAILED (airflow exit code -9) ====",
        "  no task reported its failure (the process may have been stopped); see the log above",
    ]
    passed = summary([FINISHED.format(state="success")], 0)
    assert passed[1] == "==== authmigrate: run manual__1 SUCCESS (airflow exit code 0) ===="
    assert "authmigrate.runs" in passed[2]
