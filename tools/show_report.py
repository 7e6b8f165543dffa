"""Print the report of the latest (or a given) run from authmigrate.runs.

    python -m tools.show_report [--run-id RUN_ID]
Reads the target from AIRFLOW_CONN_POSTGRES_DEFAULT (a postgres:// URI).
"""
from __future__ import annotations

import argparse
import os
import sys

import psycopg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id")
    args = parser.parse_args()
    uri = os.environ.get("AIRFLOW_CONN_POSTGRES_DEFAULT", "")
    if not uri.startswith(("postgres://", "postgresql://")):
        print("AIRFLOW_CONN_POSTGRES_DEFAULT must be a postgres:// URI", file=sys.stderr)
        return 2
    uri = uri.split("?", 1)[0].replace("postgres://", "postgresql://", 1)
    with psycopg.connect(uri) as conn:
        row = conn.execute(
            "SELECT run_id, status, report FROM authmigrate.runs "
            + ("WHERE run_id = %s " if args.run_id else "")
            + "ORDER BY started_at DESC LIMIT 1",
            (args.run_id,) if args.run_id else None,
        ).fetchone()
    if row is None:
        print("no run recorded in authmigrate.runs", file=sys.stderr)
        return 1
    run_id, status, report = row
    print(report or f"run {run_id}: {status} (no report: the run failed before validation)")
    return 0 if status == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
