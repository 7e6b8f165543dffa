"""Security properties of a real run: no secret in any log, XCom or report; hostile params cannot
reach SQL; staging files are owner-only and removed; the DAG works under a least-privilege role."""
from __future__ import annotations

import json
import os
import secrets
import stat
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.data import SECRETS, documents
from tests.integration.faults import (  # noqa: F401  (fixtures)
    DAG_ID,
    Background,
    admin,
    assert_tasks,
    catalog_fingerprint,
    clone_reference,
    core,
    export_partial,
    frozen,
    make_migration,
    metadata_db_path,
    own_mongo_server,
    parse_dag,
    reference,
    run_output,
    task_instances,
    wait_for,
    xcoms,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sec_mongo(pytestconfig):
    yield from own_mongo_server(pytestconfig.scratch)


# --------------------------------------------------------------------------- secrets
def test_no_secret_in_task_output_log_files_xcom_report_or_rejects(migration, monkeypatch, run_output):
    """After a run on the hand-made source, none of its secrets (tests/data.py SECRETS) nor the
    PostgreSQL password is in the task output, log records, log files, report files, XComs,
    authmigrate.runs, authmigrate.rejects.document, or anywhere in Airflow's metadata DB file."""
    # trust authentication ignores the password, but it is part of the connection: it must not leak either
    pg_password = f"pg-pw-{secrets.token_hex(8)}"
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", migration.pg_uri.replace(
        "postgresql://postgres@", f"postgres://postgres:{pg_password}@", 1))
    assert pg_password in os.environ["AIRFLOW_CONN_POSTGRES_DEFAULT"]
    migration.seed(documents())
    run_output()
    dr = migration.run()
    out = run_output()
    assert "[DAG TEST] end task task_id=validate" in out and "validation report" in out, "the output was not captured"
    # the secrets did go through the run: it is their absence elsewhere that is tested
    assert migration.sql("SELECT count(*) FROM users WHERE password_hash = %s", (SECRETS[0],)) == [(1,)]
    assert migration.sql("SELECT count(*) FROM oauth_client_apps WHERE client_secret = %s", (SECRETS[5],)) == [(1,)]

    places = {"task output and log records": out}
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    for path in sorted(p for p in logs.rglob("*") if p.is_file()) if logs.is_dir() else ():
        places[f"log file {path}"] = path.read_text(errors="replace")
    values = xcoms(dr.run_id)
    assert ("validate", "return_value") in values
    for kind, path in (values[("validate", "return_value")].get("files") or {}).items():  # report files
        places[f"report file {path}"] = Path(path).read_bytes().decode("latin-1")
    places["XCom of the run"] = json.dumps({f"{t}/{k}": v for (t, k), v in values.items()}, default=str)
    (report, counts, params), = migration.sql(
        "SELECT report, counts::text, params::text FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))
    places["authmigrate.runs"] = "\n".join([report, counts, params])
    documents_json = migration.sql("SELECT string_agg(document::text, E'\\n') FROM authmigrate.rejects "
                                   "WHERE run_id = %s", (dr.run_id,))[0][0]
    assert "[REDACTED]" in documents_json
    places["authmigrate.rejects.document"] = documents_json
    places["Airflow metadata DB file"] = metadata_db_path().read_bytes().decode("latin-1")

    leaks = [(secret, where) for secret in [*SECRETS, pg_password] for where, text in places.items()
             if secret in text]
    assert not leaks, f"secrets found: {leaks}"


# --------------------------------------------------------------------------- SQL injection
@pytest.fixture
def no_retry_dag(airflow_db, monkeypatch):
    """The DAG parsed with no retries: a hostile value fails its tasks at once."""
    return parse_dag(monkeypatch, AUTHMIGRATE_RETRIES=0)


# Each must be refused by the DAG's param schema (ParamValidationError from dag.test, nothing runs)
# or make the run fail cleanly; either way the database is left exactly as it was.
HOSTILE = {
    "quote in target_schema": {"target_schema": 'public"; DROP TABLE users; --'},
    "statement in target_schema": {"target_schema": "x; DROP SCHEMA public CASCADE"},
    "upper case target_schema": {"target_schema": "Users"},
    "64-character target_schema": {"target_schema": "a" * 64},
    "target_schema pg_catalog": {"target_schema": "pg_catalog"},
    "target_schema authmigrate": {"target_schema": "authmigrate"},
    "target_schema information_schema": {"target_schema": "information_schema"},
    "MongoDB operator as collection": {"source_users": "$where"},
    "NUL in a collection name": {"source_oauthRoles": "oauthRoles\x00'; DROP TABLE client_roles; --"},
    "hostile MongoDB collection names": {
        "source_users": 'users"; DROP TABLE users; --',
        "source_oauthClientApps": "apps'); DELETE FROM oauth_client_apps; --",
        "source_oauthRoles": "roles`; TRUNCATE client_roles CASCADE; \\",
    },
    "hostile collections entry": {"collections": ["users'; DROP TABLE users; --"]},
    "empty connection id": {"postgres_conn_id": ""},
    "undefined hostile connection ids": {
        "mongo_conn_id": "../connections/postgres_default",
        "postgres_conn_id": 'x"; DROP SCHEMA public CASCADE; --',
        "redis_conn_id": "redis_default' OR '1'='1",
    },
}
# defined (through AIRFLOW_CONN_<ID>) under hostile ids: the run uses them, and must only ever treat them as names
DEFINED_HOSTILE_CONN_IDS = {
    "mongo_conn_id": "mongo'; DROP TABLE users; --",
    "postgres_conn_id": 'pg"; DROP SCHEMA public CASCADE; --',
    "redis_conn_id": "redis`; FLUSHALL",
}


def test_hostile_params_are_refused_or_fail_cleanly_and_touch_nothing(
        migration, reference, no_retry_dag, monkeypatch):
    """Every string param with hostile values: refused by the param schema, or the run fails cleanly
    (every task finished, the run closed as failed); connection ids that are defined under hostile
    names just work. Afterwards every relation, schema, constraint, role and database, the target's
    rows, a canary table in public and the earlier runs' bookkeeping are exactly as before."""
    from airflow.sdk.exceptions import ParamValidationError

    migration.seed(documents())
    target_before = clone_reference(migration)
    canary = f"canary_{uuid.uuid4().hex[:8]}"
    with admin(migration.pg_uri) as conn:
        conn.execute(f"CREATE TABLE public.{canary} (v text)")
        conn.execute(f"INSERT INTO public.{canary} VALUES ('alive')")
    runs_before = migration.sql("SELECT run_id, status, finished_at FROM authmigrate.runs ORDER BY 1")
    db_before = catalog_fingerprint(migration.pg_uri)
    base = {**no_retry_dag.authmigrate_defaults, "target_schema": migration.schema, "max_reject_ratio": 0.5,
            "sessions": False}

    outcomes, problems = {}, []
    for case, overrides in HOSTILE.items():
        try:
            dr = no_retry_dag.test(run_conf={**base, **overrides})
        except ParamValidationError:
            outcomes[case] = "refused"
            continue
        tis = task_instances(dr)
        outcomes[case] = dr
        if dr.state != "failed" or tis.get("validate", ("",))[0] != "upstream_failed":
            problems.append(f"{case}: neither refused nor failed: the run ended {dr.state}, validate {tis.get('validate')}")
        if any(s not in ("success", "skipped", "failed", "upstream_failed") for s, _ in tis.values()):
            problems.append(f"{case}: tasks left unfinished: {tis}")
    for key, conn_id in DEFINED_HOSTILE_CONN_IDS.items():
        source = {"mongo_conn_id": "AIRFLOW_CONN_MONGO_DEFAULT", "postgres_conn_id": "AIRFLOW_CONN_POSTGRES_DEFAULT",
                  "redis_conn_id": "AIRFLOW_CONN_REDIS_DEFAULT"}[key]
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", os.environ[source])
    dr = no_retry_dag.test(run_conf={**base, **DEFINED_HOSTILE_CONN_IDS})
    assert_tasks(dr, core())  # the hostile ids were only ever names: the run works, and changes nothing

    db_after = catalog_fingerprint(migration.pg_uri)
    for part, rows in db_before.items():
        if db_after[part] != rows:
            problems.append(f"{part} changed: added {sorted(set(db_after[part]) - set(rows))[:12]}, "
                            f"removed {sorted(set(rows) - set(db_after[part]))[:12]}")
    if migration.snapshot() != target_before:
        problems.append("the target's rows changed")
    if migration.sql(f"SELECT v FROM public.{canary}") != [("alive",)]:
        problems.append("the canary table in public changed")
    runs_after = {r[0]: r[1:] for r in migration.sql("SELECT run_id, status, finished_at FROM authmigrate.runs")}
    if {r[0]: r[1:] for r in runs_before} != {k: v for k, v in runs_after.items() if k in {r[0] for r in runs_before}}:
        problems.append("earlier runs' bookkeeping changed")
    for case, failed in outcomes.items():  # a registered run is closed as failed, never left 'running'
        if failed != "refused" and runs_after.get(failed.run_id, ("failed",))[0] != "failed":
            problems.append(f"{case}: authmigrate.runs says {runs_after[failed.run_id][0]}")
    named = outcomes["hostile MongoDB collection names"]
    if named != "refused":  # the run got as far as prepare: the names were stored verbatim, as data
        params = migration.sql("SELECT params FROM authmigrate.runs WHERE run_id = %s", (named.run_id,))[0][0]
        assert params["source_users"] == HOSTILE["hostile MongoDB collection names"]["source_users"]
    with admin(migration.pg_uri) as conn:
        conn.execute(f"DROP TABLE public.{canary}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- staging files
def _modes(root: Path) -> dict[Path, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            path = Path(dirpath, name) if name else Path(dirpath)
            try:
                out[path] = stat.S_IMODE(path.lstat().st_mode)
            except FileNotFoundError:
                pass
    return out


def test_staging_files_are_owner_only_during_the_run_and_removed_after_success(
        make_migration, sec_mongo, monkeypatch, tmp_path):
    """Every staging file and folder the pipeline creates is owner-only (no group/other bits) while
    the run writes it — nx-27017 is frozen (SIGSTOP) mid-export to look at the half-written export —
    and after a failed validation keeps them; a successful run removes them."""
    from tools.seed_mongo import generate

    staging = tmp_path / "staging"  # made by the pipeline itself
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(staging))
    m = make_migration(sec_mongo)
    m.seed(generate(1500, seed=5))
    seen: dict[Path, int] = {}
    stop = threading.Event()

    def watch():
        def users_partial_size():
            path = export_partial(staging, "users")
            try:
                return path.stat().st_size if path else 0
            except FileNotFoundError:
                return 0

        # freeze the source mid-export: the half-written export is on disk while we look
        wait_for(lambda: users_partial_size() > 16 * 1024, 120, "the users export to be under way", interval=0.005,
                 abort=stop)
        with frozen(sec_mongo):
            seen.update(_modes(staging))
            frozen_view = dict(seen)
        while not stop.is_set():  # and every file the later stages write
            seen.update(_modes(staging))
            stop.wait(0.01)
        return frozen_view

    with Background(watch, stop) as watcher:
        dr = m.run(batch_size=10)
    assert_tasks(dr, core())
    assert any(p.name.endswith(".parquet.partial") for p in watcher.result), "the export was not caught mid-write"
    assert any(p.parent.name == "transform" and p.suffix == ".parquet" for p in seen), "transform output not seen"
    problems = [f"during the run, readable or writable by others: {_loose(seen, tmp_path)}"] if _loose(seen, tmp_path) \
        else []
    run_dirs = list((staging / DAG_ID).iterdir())
    assert run_dirs == [], f"a successful run leaves staging files behind: {run_dirs}"

    # a failing validation keeps the run's files (to investigate): still owner-only
    failed = m.run(expect="failed", batch_size=500, max_reject_ratio=0.0)
    assert task_instances(failed)["validate"][0] == "failed"
    kept = _modes(staging)
    assert any(p.name.startswith("chunk-") for p in kept), kept
    if _loose(kept, tmp_path):
        problems.append(f"kept after a failed run, readable or writable by others: {_loose(kept, tmp_path)}")
    assert not problems, "\n".join(problems)


def _loose(modes: dict[Path, int], base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): oct(mode) for p, mode in sorted(modes.items()) if mode & 0o077}


# --------------------------------------------------------------------------- least privilege
def least_privilege_sql(role: str, password: str, database: str) -> list[str]:
    """The SQL that gives authmigrate a least-privilege PostgreSQL role, run by a superuser.

    The role logs in, is not a superuser and cannot create databases or roles; on its database it
    may connect, create schemas and create temporary tables (the load's staging tables), nothing
    else: PUBLIC's default rights on that database are revoked, and since PostgreSQL 15 PUBLIC
    cannot create in the ``public`` schema. The pipeline creates (and so owns) the target schema
    and the bookkeeping schema ``authmigrate`` itself: use a ``target_schema`` other than
    ``public``. If the app's tables already exist, the role must own them (``prepare`` re-adds
    constraints and indexes, which only a table's owner may do):
    ``ALTER SCHEMA <target> OWNER TO <role>`` and ``ALTER TABLE <target>.<table> OWNER TO <role>``.

    Exactly::

        CREATE ROLE authmigrate LOGIN PASSWORD '…' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
        CREATE DATABASE identity;                                   -- or use the app's existing database
        REVOKE ALL ON DATABASE identity FROM PUBLIC;
        GRANT CONNECT, CREATE, TEMPORARY ON DATABASE identity TO authmigrate;
    """
    return [
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        f"NOBYPASSRLS",
        f"CREATE DATABASE {database}",
        f"REVOKE ALL ON DATABASE {database} FROM PUBLIC",
        f"GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {database} TO {role}",
    ]


def test_the_dag_works_under_a_least_privilege_role(migration, reference, monkeypatch):
    """A role made by least_privilege_sql() (see its docstring for the exact SQL) runs the whole DAG
    into a fresh database, owning only the target and bookkeeping schemas, and can do nothing else."""
    suffix = uuid.uuid4().hex[:10]
    role = database = f"authmigrate_lp_{suffix}"
    password = secrets.token_hex(12)
    admin_uri = migration.pg_uri.rsplit("/", 1)[0] + "/postgres"
    with admin(admin_uri) as conn:
        for statement in least_privilege_sql(role, password, database):
            conn.execute(statement)
    try:
        lp_db_admin = admin_uri.rsplit("/", 1)[0] + f"/{database}"
        host = migration.pg_uri.split("@", 1)[1].rsplit("/", 1)[0]
        monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", f"postgres://{role}:{password}@{host}/{database}")
        migration.seed(documents())
        migration.pg_uri = lp_db_admin  # snapshots read the least-privilege database
        dr = migration.run()
        assert_tasks(dr, core())
        assert migration.snapshot(with_synced_at=False) == reference

        with admin(lp_db_admin) as conn:
            owners = dict(conn.execute(
                "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname IN (%s, 'authmigrate')",
                (migration.schema,)).fetchall())
            assert owners == {migration.schema: role, "authmigrate": role}
            attrs = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
                                 (role,)).fetchone()
            assert attrs == (False, False, False)
        # and nothing more: the role cannot write outside what it owns
        with psycopg.connect(f"postgresql://{role}:{password}@{host}/{database}", autocommit=True) as conn:
            for forbidden in ("CREATE TABLE public.x (v int)", f"CREATE DATABASE {database}_2",
                              "CREATE ROLE authmigrate_lp_escalate"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(forbidden)
    finally:
        with admin(admin_uri) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {role}")
