"""Property test into real PostgreSQL: random hostile user batches load, reconcile, verify,
and a retried load leaves the target identical."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from tests.unit.test_transform_properties import USER_DOC, batch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def target(pg_database, tmp_path_factory):
    os.environ["AIRFLOW_CONN_POSTGRES_DEFAULT"] = pg_database.replace("postgresql://", "postgres://", 1)
    from authmigrate.config import RunConfig
    from authmigrate.db import connect
    from authmigrate.load import apply_schema

    cfg = RunConfig.from_params({"target_schema": f"prop_{uuid.uuid4().hex[:8]}"}, "prop-setup")
    with connect(cfg) as conn:
        apply_schema(conn, cfg)
    return pg_database, cfg.target_schema, tmp_path_factory.mktemp("prop")


def rows(uri: str, schema: str) -> dict:
    with psycopg.connect(uri) as conn:
        return {t: conn.execute(f'SELECT * FROM "{schema}"."{t}" ORDER BY 1, 2').fetchall()
                for t in ("users", "roles", "user_roles")}


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(docs=batch(USER_DOC))
def test_random_user_batches_load_reconcile_verify_and_reload_identically(target, docs):
    from authmigrate.config import RunConfig
    from authmigrate.db import connect, use_schema
    from authmigrate.load import load_collection
    from authmigrate.registry import COLLECTIONS
    from authmigrate.staging import write_frame
    from authmigrate.transform import documents_frame, transform_users
    from authmigrate.verify import verify_table

    uri, schema, folder = target
    run_id = f"prop-{uuid.uuid4().hex[:10]}"
    cfg = RunConfig.from_params({"target_schema": schema}, run_id)
    result = transform_users(documents_frame(docs, COLLECTIONS["users"].projection))
    out = Path(folder) / run_id
    out.mkdir()
    transformed = {"tables": {n: str(write_frame(df, out / f"{n}.parquet")) for n, df in result.tables.items()},
                   "rejects": str(write_frame(result.rejects, out / "rejects.parquet"))}

    load_collection(cfg, "users", transformed)
    first = rows(uri, schema)
    load_collection(cfg, "users", transformed)  # a retry of the same task
    assert rows(uri, schema) == first, "a retried load must leave the target identical"

    assert len(first["users"]) == len(result.tables["users"])
    with psycopg.connect(uri) as conn:
        doc_rejects = conn.execute("SELECT count(*) FROM authmigrate.rejects WHERE run_id = %s AND scope = "
                                   "'document'", (run_id,)).fetchone()[0]
    assert len(docs) == len(first["users"]) + doc_rejects
    with connect(cfg) as conn, conn.transaction():
        use_schema(conn, cfg)
        for table in ("users", "user_roles"):
            ok, detail = verify_table(conn, table, result.tables[table])
            assert ok, detail
