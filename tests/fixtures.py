"""Shared fixtures that start and stop the real servers: nx-27017 (MongoDB wire protocol),
a fresh PostgreSQL database per test session, and the Airflow metadata DB."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tools.mongo_server import MongoServer, free_port

PG_ADMIN = os.environ.get("AUTHMIGRATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def airflow_db():
    """`airflow db migrate` once per session (SQLite under the session's AIRFLOW_HOME)."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, env=os.environ.copy(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture(scope="session")
def mongo(pytestconfig):
    server = MongoServer(pytestconfig.scratch / f"mongo-{uuid.uuid4().hex[:8]}", free_port()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database for the session, dropped afterwards. Yields its URI."""
    name = f"authmigrate_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}. Start it (see README) and re-run.")
    admin.execute(f'CREATE DATABASE "{name}"')
    uri = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield uri
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
