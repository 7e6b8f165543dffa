"""The verify tasks' content checks reach the report as those tasks recorded them, in the run's
order, and each verify task's time is a line of its own."""
from __future__ import annotations

from authmigrate.config import RunConfig
from authmigrate.validate import Check, loaded_content_checks, timings


def _verified(*checks, seconds):
    return {"checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks], "seconds": seconds}


RESULTS = {
    "users": {"transform": {"tables": {"users": "u.parquet", "user_roles": "ur.parquet"}, "seconds": 20.0},
              "load": {"seconds": 10.0, "changes": {}},
              "verify": _verified(("content users", False, "1 rows hashed; first mismatches: x: email"),
                                  ("content user_roles", True, "2 parents hashed"), seconds=4.0)},
    "oauthClientApps": {"transform": {"tables": {"oauth_client_apps": "a.parquet"}, "seconds": 1.0},
                        "load": {"seconds": 2.5, "changes": {}},
                        "verify": _verified(("content oauth_client_apps", True, "3 rows"), seconds=0.5)},
}


def test_checks_recorded_by_the_verify_tasks_are_the_reports_in_the_runs_order_and_a_failure_stays_one():
    checks = loaded_content_checks(RunConfig.from_params({}, "r"), RESULTS)
    assert checks == [Check("content users", False, "1 rows hashed; first mismatches: x: email"),
                      Check("content user_roles", True, "2 parents hashed"),
                      Check("content oauth_client_apps", True, "3 rows")]


def test_each_verify_task_has_its_own_line_in_the_time_per_task():
    assert timings(RESULTS) == {"users.transform": 20.0, "users.load": 10.0, "users.verify": 4.0,
                                "oauthClientApps.transform": 1.0, "oauthClientApps.load": 2.5,
                                "oauthClientApps.verify": 0.5}
