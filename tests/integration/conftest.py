from __future__ import annotations

import re
import uuid
from pathlib import Path

import zlib

import psycopg
import pymongo
import redis
import pytest

from tests.fixtures import airflow_db, mongo, pg_database  # noqa: F401  (fixtures)

from authmigrate.sqlfiles import declared_tables  # noqa: E402

TABLES = list(declared_tables())  # every table schema.sql creates


@pytest.fixture(scope="session")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert not bag.import_errors
    dag = bag.dags["mongo_to_postgres"]
    # dag.test(run_conf=...) updates dag.params in place: every run passes the full conf
    dag.authmigrate_defaults = {k: dag.params[k] for k in dag.params}
    return dag


class Migration:
    """One isolated migration: its own MongoDB database and its own target schema."""

    def __init__(self, dag, mongo, pg_uri, monkeypatch, name):
        self.dag, self.mongo, self.pg_uri = dag, mongo, pg_uri
        self.name = f"{re.sub(r'[^a-z0-9]', '_', name.lower())[:30]}_{uuid.uuid4().hex[:6]}"
        self.schema = f"t_{self.name}"
        self.client = pymongo.MongoClient(mongo.uri)
        self.db = self.client[f"idp_{self.name}"]
        monkeypatch.setenv("AIRFLOW_CONN_MONGO_DEFAULT", mongo.conn_uri(self.db.name))
        monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", pg_uri.replace("postgresql://", "postgres://", 1))
        # a Redis DB of its own (never DB 0); only tests about sessions seed and flush it
        self.redis_db = 1 + zlib.crc32(self.name.encode()) % 15
        monkeypatch.setenv("AIRFLOW_CONN_REDIS_DEFAULT", f"redis://127.0.0.1:6379?db={self.redis_db}")
        self.redis = redis.Redis(host="127.0.0.1", port=6379, db=self.redis_db)

    def seed(self, documents: dict[str, list[dict]]) -> None:
        for collection, docs in documents.items():
            self.db[collection].drop()
            if docs:
                self.db[collection].insert_many([dict(d) for d in docs])
            else:
                self.db.create_collection(collection)

    def run(self, expect: str = "success", **conf):
        # the hand-made fixture is deliberately dirty (15 of 35 documents rejected)
        conf = {**self.dag.authmigrate_defaults, "target_schema": self.schema, "max_reject_ratio": 0.5,
                "sessions": False, **conf}
        dr = self.dag.test(run_conf=conf)
        states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
        assert dr.state == expect, f"run ended {dr.state}, tasks: {states}"
        self.last_states = states
        return dr

    def sql(self, query: str, params=None) -> list[tuple]:
        with psycopg.connect(self.pg_uri) as conn:
            conn.execute(f'SET search_path TO "{self.schema}", public')
            return conn.execute(query, params).fetchall()

    def execute(self, statement: str) -> None:
        with psycopg.connect(self.pg_uri) as conn:
            conn.execute(f'SET search_path TO "{self.schema}", public')
            conn.execute(statement)

    def snapshot(self, with_synced_at: bool = True) -> dict[str, list[tuple]]:
        out = {}
        with psycopg.connect(self.pg_uri) as conn:
            for table in TABLES:
                cols = [r[0] for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                    " ORDER BY ordinal_position", (self.schema, table))]
                if not with_synced_at:
                    cols = [c for c in cols if c != "synced_at"]
                select = ", ".join(f'"{c}"' for c in cols)
                out[table] = conn.execute(
                    f'SELECT {select} FROM "{self.schema}"."{table}" ORDER BY 1, 2').fetchall()
        return out

    def counts(self) -> dict[str, int]:
        return {t: self.sql(f'SELECT count(*) FROM "{t}"')[0][0] for t in TABLES}

    def rejects(self, run_id: str) -> list[tuple]:
        return self.sql("SELECT collection, scope, reason_code, source_id, element, reason, document::text "
                        "FROM authmigrate.rejects WHERE run_id = %s ORDER BY 1, 2, 3, 4", (run_id,))


@pytest.fixture
def migration(dag, mongo, pg_database, monkeypatch, request):
    m = Migration(dag, mongo, pg_database, monkeypatch, request.node.name)
    yield m
    m.client.drop_database(m.db.name)
    m.client.close()
