"""The first full load of an empty table, into real PostgreSQL: its primary key, indexes and
constraints (and the foreign keys that reference it) are dropped, the rows copied straight into
it (frozen), and everything built again in the load's transaction; a key the load could not
build again keeps it in place; a failure leaves the target as it was, constraints included."""
from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from bson import ObjectId

pytestmark = pytest.mark.integration

DOCS = [
    {"_id": ObjectId(f"{i:024x}"), "userId": f"u{i}", "username": f"user{i}", "email": f"user{i}@example.com", "providerRoles": ["admin"]}
    for i in range(1, 41)
]


def _frozen_pages(uri: str, schema: str, table: str) -> tuple[int, int]:
    """(pages all frozen in the visibility map, pages of the table)."""
    with psycopg.connect(uri, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
        except psycopg.Error as exc:
            pytest.skip(f"pg_visibility is not available on this server: {exc}")
        return conn.execute(
            "SELECT (pg_visibility_map_summary(%(t)s::regclass)).all_frozen, "
            "pg_relation_size(%(t)s::regclass) / current_setting('block_size')::int",
            {"t": f'"{schema}".{table}'}).fetchone()


def _constraints(uri: str, schema: str) -> dict[str, tuple[str, bool]]:
    with psycopg.connect(uri) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT con.conname, rel.relname, con.convalidated FROM pg_constraint con "
            "JOIN pg_class rel ON rel.oid = con.conrelid JOIN pg_namespace n ON n.oid = rel.relnamespace "
            "WHERE n.nspname = %s", (schema,))}


@pytest.fixture
def empty_target(pg_database, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", pg_database.replace("postgresql://", "postgres://", 1))
    from authmigrate.config import RunConfig
    from authmigrate.db import connect
    from authmigrate.load import apply_schema
    from authmigrate.registry import COLLECTIONS
    from authmigrate.staging import write_frame
    from authmigrate.transform import documents_frame, transform_users

    schema = f"bulk_{uuid.uuid4().hex[:8]}"
    cfg = RunConfig.from_params({"target_schema": schema}, f"bulk-{uuid.uuid4().hex[:8]}")
    with connect(cfg) as conn:
        apply_schema(conn, cfg)
    result = transform_users(documents_frame(DOCS, COLLECTIONS["users"].projection))
    assert len(result.tables["users"]) == len(DOCS) and result.rejects.empty

    def files(tables: dict[str, pd.DataFrame], name: str) -> dict:
        out = Path(tmp_path) / name
        out.mkdir()
        return {"tables": {n: str(write_frame(df, out / f"{n}.parquet")) for n, df in tables.items()},
                "rejects": str(write_frame(result.rejects, out / "rejects.parquet"))}

    yield pg_database, schema, cfg, result, files
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_an_empty_table_is_bulk_loaded_with_its_key_and_the_keys_referencing_it_built_again(empty_target, caplog):
    from authmigrate.load import load_collection

    uri, schema, cfg, result, files = empty_target
    before = _constraints(uri, schema)
    with caplog.at_level("INFO", logger="authmigrate"):
        load_collection(cfg, "users", files(result.tables, "ok"))
    assert ("load users: the table was empty: 40 rows copied straight into it (frozen), then its primary key"
            in caplog.text)
    assert "referencing foreign keys added again" in caplog.text
    # every constraint is back, validated, on the same table: the other tables' foreign keys on users too
    assert _constraints(uri, schema) == before
    assert before["oauth_client_apps_owner_user_id_fkey"] == ("oauth_client_apps", True)
    with psycopg.connect(uri) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".users').fetchone()[0] == 40
        assert conn.execute(f'SELECT count(*) FROM "{schema}".user_roles').fetchone()[0] == 40
    # COPY ... FREEZE into the truncated table: every page frozen at commit, none left for a scan to rewrite
    for table in ("users", "user_roles"):
        frozen, pages = _frozen_pages(uri, schema, table)
        assert pages > 0 and frozen == pages, (table, frozen, pages)
    with psycopg.connect(uri) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):  # the key works again
            conn.execute(f'INSERT INTO "{schema}".users (id, mongo_id, username) '
                         f'SELECT id, mongo_id || \'x\', username || \'x\' FROM "{schema}".users LIMIT 1')


def test_a_duplicate_key_in_a_bulk_load_rolls_back_with_every_constraint_in_place(empty_target):
    from authmigrate.load import load_collection

    uri, schema, cfg, result, files = empty_target
    before = _constraints(uri, schema)
    users = result.tables["users"]
    twice = {**result.tables, "users": pd.concat([users, users.iloc[:1]], ignore_index=True)}
    with pytest.raises(psycopg.errors.UniqueViolation, match="users_pkey"):
        load_collection(cfg, "users", files(twice, "dup"))
    assert _constraints(uri, schema) == before
    with psycopg.connect(uri) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".users').fetchone()[0] == 0


def test_a_key_an_undeclared_foreign_key_references_stays_and_the_load_still_succeeds(empty_target, caplog):
    from authmigrate.load import load_collection

    uri, schema, cfg, result, files = empty_target
    with psycopg.connect(uri) as conn:  # one of the app's own tables, which schema.sql does not know
        conn.execute(f'CREATE TABLE "{schema}".app_audit (user_id text REFERENCES "{schema}".users (id))')
    before = _constraints(uri, schema)
    with caplog.at_level("INFO", logger="authmigrate"):
        load_collection(cfg, "users", files(result.tables, "kept"))
    assert "load users: the table was empty: 40 rows copied straight into it, then 0 indexes" in caplog.text
    assert _constraints(uri, schema) == before
    assert "app_audit_user_id_fkey" in before
    with psycopg.connect(uri) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".users').fetchone()[0] == 40
    # a table the load cannot TRUNCATE (a foreign key it does not know references it) is not frozen
    assert _frozen_pages(uri, schema, "users")[0] == 0
    assert _frozen_pages(uri, schema, "user_roles")[0] > 0
