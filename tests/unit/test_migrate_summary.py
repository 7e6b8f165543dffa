"""`make migrate` (tools.migrate): its closing lines from the lines a run logged, and its executor settings."""
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


def test_tasks_at_once_default_to_the_cores_and_a_bad_setting_is_refused(monkeypatch):
    import os

    import pytest

    from tools import migrate

    monkeypatch.delenv("AUTHMIGRATE_PARALLELISM", raising=False)
    assert migrate.parallelism() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("AUTHMIGRATE_PARALLELISM", "3")
    assert migrate.parallelism() == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("AUTHMIGRATE_PARALLELISM", bad)
        with pytest.raises(SystemExit, match="AUTHMIGRATE_PARALLELISM must be a positive integer"):
            migrate.parallelism()


def test_the_executor_environment_points_tasks_at_the_api_server_and_shares_one_secret():
    from tools import migrate

    env = migrate.executor_env({"PATH": "/bin"}, 41234, 2)
    from airflow.executors.local_executor import LocalExecutor
    from airflow.sdk._shared.module_loading import import_string

    # a LocalExecutor that waits for the API server (authmigrate/executor.py), by its import path
    assert issubclass(import_string(env["AIRFLOW__CORE__EXECUTOR"]), LocalExecutor)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "2"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:41234/execution/"
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32 and env["PATH"] == "/bin"
    assert env["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "1"  # a finished task is seen within 1 s, not 5
    assert migrate.executor_env({"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "3"}, 1, 1)[
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "3"
    assert migrate.executor_env({}, 1, 1)["AIRFLOW__API_AUTH__JWT_SECRET"] != env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert migrate.executor_env({"AIRFLOW__API_AUTH__JWT_SECRET": "kept"}, 1, 1)["AIRFLOW__API_AUTH__JWT_SECRET"] \
        == "kept"  # a deployment's own secret is used as it is


def test_the_executor_waits_for_the_api_server_and_fails_at_once_when_it_is_gone():
    """The executor starts its workers once the server's health check answers 200 (the server
    boots beside `airflow dags test`); a server process that exited, or one that never answers,
    fails at once with a message, instead of tasks failing on a refused connection."""
    import http.server
    import subprocess
    import sys
    import threading

    import pytest

    from authmigrate.executor import wait_for_api

    asked = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200 if self.path == "/execution/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/execution/"
    try:
        wait_for_api(url, timeout=30, pid=None)
        assert asked == ["/execution/health"]
    finally:
        server.shutdown()
        server.server_close()
    # nothing listens on that port now
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    with pytest.raises(RuntimeError, match=rf"server \(pid {exited.pid}\) exited before it answered"):
        wait_for_api(url, timeout=600, pid=exited.pid)
    with pytest.raises(RuntimeError, match="did not answer at .*/execution/health within 0s"):
        wait_for_api(url, timeout=0, pid=None)
