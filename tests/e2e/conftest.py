"""One real Airflow stack for the whole e2e session (API and browser tests share it).

`tools.airflow_stack` starts api-server, scheduler, dag-processor and triggerer on free
ports, with a fresh metadata database, against a fresh nx-27017 seeded with 500 generated
users and a fresh target database. Everything is stopped and dropped in the finalizer, also
when a test (or the start itself) fails. The stack's logs stay in the session's scratch
folder; failures name it.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tools.airflow_stack import DAG_ID, AirflowStack, free_port
from tools.mongo_server import MongoServer

PG_ADMIN = os.environ.get("AUTHMIGRATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
N_USERS = 500
E2E_REDIS_DB = 14  # read-only for this DAG's default params (sessions export); never flushed here
TERMINAL = {"success", "failed"}


@dataclass
class E2E:
    stack: AirflowStack
    mongo: MongoServer
    target_uri: str
    artifacts: Path
    _token: str | None = None

    @property
    def url(self) -> str:
        return self.stack.url

    def token(self) -> str:
        if self._token is None:
            self._token = self.stack.token()
        return self._token

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        return self.stack.request(method, path, body, token=token or self.token())

    def where(self) -> str:
        return f"(stack logs: {self.stack.log_dir}; task logs: {self.stack.home / 'logs'})"

    def dag_details(self) -> dict:
        return self.stack.wait_for_dag(DAG_ID, timeout=120)

    def unpause(self) -> None:
        self.dag_details()  # the dag-processor must have parsed it first
        status, body = self.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False, (status, body)

    def wait_run(self, run_id: str, timeout: float = 150) -> dict:
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            status, run = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
            assert status == 200, (status, run)
            if run["state"] in TERMINAL:
                return run
            time.sleep(2)
        raise AssertionError(f"run {run_id} still {run.get('state')} after {timeout}s {self.where()}")

    def task_instances(self, run_id: str) -> dict[str, dict]:
        status, body = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
        assert status == 200, (status, body)
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def sql(self, query: str, params=None) -> list[tuple]:
        with psycopg.connect(self.target_uri) as conn:
            return conn.execute(query, params).fetchall()


@pytest.fixture(scope="session")
def e2e(pytestconfig, tmp_path_factory):
    from tools.seed_mongo import seed

    suffix = uuid.uuid4().hex[:8]
    scratch = pytestconfig.scratch / f"e2e-{suffix}"
    meta_db, target_db = f"authmigrate_e2e_meta_{suffix}", f"authmigrate_e2e_target_{suffix}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}. Start it (scripts/ensure_services.sh).")
    mongo = stack = None
    try:
        admin.execute(f'CREATE DATABASE "{target_db}"')
        target_uri = PG_ADMIN.rsplit("/", 1)[0] + f"/{target_db}"
        mongo = MongoServer(scratch / "mongo", free_port()).start()
        seed(mongo.uri, "idp", n_users=N_USERS)
        stack = AirflowStack(
            scratch / "airflow", port=free_port(), db_name=meta_db, pg_admin=PG_ADMIN,
            extra_env={
                "AIRFLOW_CONN_MONGO_DEFAULT": mongo.conn_uri("idp"),
                "AIRFLOW_CONN_POSTGRES_DEFAULT": target_uri.replace("postgresql://", "postgres://", 1),
                "AIRFLOW_CONN_REDIS_DEFAULT": f"redis://127.0.0.1:6379?db={E2E_REDIS_DB}",
                "AUTHMIGRATE_RETRIES": "1",
                "AUTHMIGRATE_RETRY_DELAY_SECONDS": "1",
                "AUTHMIGRATE_MAX_RETRY_DELAY_SECONDS": "2",
            },
        )
        t0 = time.monotonic()
        stack.start(timeout=180)
        print(f"\ne2e: Airflow up at {stack.url} in {time.monotonic() - t0:.0f}s (state in {stack.state_dir})")
        yield E2E(stack, mongo, target_uri, tmp_path_factory.mktemp("e2e-artifacts"))
    finally:
        if stack is not None:
            stack.stop()
            stack.drop_database()
        if mongo is not None:
            mongo.stop()
        admin.execute(f'DROP DATABASE IF EXISTS "{target_db}" WITH (FORCE)')
        admin.execute(f'DROP DATABASE IF EXISTS "{meta_db}" WITH (FORCE)')
        admin.close()
