"""Real faults injected into the real server processes while the DAG runs (no mocks).

Each test ends by comparing the target's row sets with the expected state: a clean run of the same
source into a schema of its own (``reference``, or a reference run made by the test).
"""
from __future__ import annotations

import os
import shutil
import signal
import threading

import psycopg
import pytest

from tests.data import documents
from tests.integration.faults import (  # noqa: F401  (fixtures)
    COLLECTION_NAMES,
    CORE_TASKS,
    DAG_ID,
    Background,
    RowLock,
    assert_tasks,
    backend_alive,
    blocked_load,
    clone_reference,
    core,
    dag_subprocess,
    export_final,
    export_partial,
    kill_process_group,
    last_dag_run_id,
    make_migration,
    own_mongo_server,
    parquet_documents,
    parse_dag,
    reference,
    retry_gap_seconds,
    run_output,
    snapshot,
    tamper,
    task_instances,
    task_states_after,
    temp_staging_tables,
    terminate_backend,
    wait_for,
    xcoms,
)

pytestmark = pytest.mark.integration

# the export's first step, and each collection's first task that reads MongoDB: planning its chunks
EXPORTS = {f"{c}.plan" for c in COLLECTION_NAMES}


@pytest.fixture(scope="module")
def fault_mongo(pytestconfig):
    yield from own_mongo_server(pytestconfig.scratch)


@pytest.fixture
def retry_dag(airflow_db, monkeypatch):
    """retry_dag(base_delay): the DAG re-parsed (default_args are read at parse time) with 2 retries
    and the given base delay in seconds, so that a retry is observable and its backoff measurable."""
    return lambda base_delay: parse_dag(monkeypatch, AUTHMIGRATE_RETRIES=2,
                                        AUTHMIGRATE_RETRY_DELAY_SECONDS=base_delay,
                                        AUTHMIGRATE_MAX_RETRY_DELAY_SECONDS=60)


def test_mongo_unreachable_when_export_starts_retries_with_backoff(
        make_migration, fault_mongo, retry_dag, reference, monkeypatch, record_property):
    """nx-27017 is stopped before the run and started again once every export has failed: each
    export fails its first try, waits its backoff, and succeeds on try 2 with the expected rows."""
    # a base delay of 5 s: every export's first try has failed before the first retry is due
    m = make_migration(fault_mongo, retry_dag(5))
    m.seed(documents())
    # MongoHook passes the connection's extras (the URI query) to MongoClient: fail fast, not after 30 s
    monkeypatch.setenv("AIRFLOW_CONN_MONGO_DEFAULT", fault_mongo.conn_uri(m.db.name) + "?serverSelectionTimeoutMS=500")
    before = last_dag_run_id()
    fault_mongo.stop()
    assert not fault_mongo.ping()

    run_over = threading.Event()
    failed = {}  # export -> its try_number when first seen waiting for a retry

    def every_export_failed_once():
        for task_id, (state, try_number) in task_states_after(before).items():
            if task_id in EXPORTS and state == "up_for_retry":
                failed.setdefault(task_id, try_number)
        return set(failed) == EXPORTS

    def restart_once_every_export_has_failed():
        try:
            wait_for(every_export_failed_once, timeout=60, what="every export to fail and wait for its retry",
                     interval=0.05, abort=run_over)
        finally:
            # the retries (5 s later at the earliest) wait for a server still starting: no race with its start-up
            os.environ["AIRFLOW_CONN_MONGO_DEFAULT"] = fault_mongo.conn_uri(m.db.name) + "?serverSelectionTimeoutMS=30000"
            fault_mongo.start()

    with Background(restart_once_every_export_has_failed, run_over):
        dr = m.run()
    assert failed == {t: 1 for t in EXPORTS}, "every export failed its first try while MongoDB was down"

    assert_tasks(dr, core({t: 2 for t in EXPORTS}))
    gaps = {task_id: retry_gap_seconds(dr.run_id, task_id) for task_id in EXPORTS}
    record_property("retry_gaps_seconds", gaps)
    assert all(gap >= 5 for gap in gaps.values()), gaps  # backoff: try 2 no earlier than the 5 s base delay
    assert m.snapshot(with_synced_at=False) == reference


def test_mongo_killed_mid_export_retry_writes_the_same_export(
        make_migration, fault_mongo, retry_dag, monkeypatch, tmp_path, record_property):
    """nx-27017 is SIGKILLed while the users export is writing its Parquet file (and restarted):
    the retried export is byte-for-byte the document list of a clean run (no duplicate, no gap),
    and the target equals a clean run's, rejects included."""
    from tools.seed_mongo import generate

    staging = tmp_path / "staging"
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(staging))
    m = make_migration(fault_mongo, retry_dag(2))
    m.seed(generate(1500, seed=11))
    reference_schema = f"{m.schema}_ref"

    run_over = threading.Event()

    def keep_users_export(dest):
        shutil.copy(wait_for(lambda: export_final(staging, "users"), 120, "the users export file", abort=run_over),
                    dest)

    with Background(lambda: keep_users_export(tmp_path / "reference.parquet"), run_over):
        clean = m.run(target_schema=reference_schema, batch_size=10)
    assert_tasks(clean, core())

    def partial_size() -> int:
        path = export_partial(staging, "users")
        try:
            return path.stat().st_size if path else 0
        except FileNotFoundError:
            return 0

    def kill_mid_export() -> int:
        # ~650 KB of raw BSON in batches of 10 documents: kill once the first ~32 KB are on disk
        size = wait_for(lambda: (n := partial_size()) > 32 * 1024 and n, 120, "the users export to be under way",
                        interval=0.005, abort=run_over)
        try:
            fault_mongo.stop(signal.SIGKILL)
        finally:
            fault_mongo.start()
        keep_users_export(tmp_path / "retried.parquet")
        return size

    run_over.clear()
    with Background(kill_mid_export, run_over) as fault:
        dr = m.run(batch_size=10)
    assert_tasks(dr, core({"users.export": 2}))

    retried, expected = parquet_documents(tmp_path / "retried.parquet"), parquet_documents(
        tmp_path / "reference.parquet")
    record_property("export_bytes_at_kill_and_final", (fault.result, (tmp_path / "retried.parquet").stat().st_size))
    assert fault.result < (tmp_path / "retried.parquet").stat().st_size, "the kill came after the export"
    assert len(retried) == m.db.users.count_documents({}) == 1500
    assert retried == expected, "the retried export differs from a clean run's (duplicates, gaps or order)"
    assert m.snapshot(with_synced_at=False) == snapshot(m, reference_schema, with_synced_at=False)
    rejects = "SELECT collection, scope, reason_code, source_id, element FROM authmigrate.rejects WHERE run_id = %s" \
              " ORDER BY 1, 2, 3, 4, 5"
    assert m.sql(rejects, (dr.run_id,)) == m.sql(rejects, (clean.run_id,))


def test_postgres_session_terminated_mid_load_leaves_target_unchanged_until_retry(migration, reference):
    """The users load's PostgreSQL session is terminated (pg_terminate_backend) in the middle of its
    merge: its tables are exactly as before until the retry, which then converges."""
    migration.seed(documents())
    clone_reference(migration)  # the state a first run leaves
    tampered = tamper(migration)

    # the merge of users must rewrite alice: holding her row makes the load wait there, after its
    # COPYs and after it already deleted the bogus user and re-inserted erin in its transaction
    lock = RowLock(migration.pg_uri, migration.schema, "users", "000000000001")
    run_over = threading.Event()

    def terminate_the_waiting_load():
        try:
            pid, query = wait_for(lambda: blocked_load(migration.pg_uri, lock.pid), 90,
                                  "the users load to wait on the locked row", abort=run_over)
            terminate_backend(migration.pg_uri, pid)
            return query, migration.snapshot()  # before the retry: it would wait on the lock too
        finally:
            lock.release()

    with lock, Background(terminate_the_waiting_load, run_over) as fault:
        dr = migration.run()
    query, after_termination = fault.result
    assert "stg_users" in query
    assert after_termination == tampered, "the terminated load left changes behind"
    assert_tasks(dr, core({"users.load": 2}))
    assert migration.snapshot(with_synced_at=False) == reference
    assert temp_staging_tables(migration.pg_uri) == []


def test_migrate_sigkilled_mid_load_then_an_immediate_rerun_converges(migration, reference, monkeypatch, tmp_path):
    """`make migrate`'s process group (tools.migrate, its `airflow dags test`, the LocalExecutor
    workers and the execution API server; the task processes, in groups of their own, die with
    their supervisors) is SIGKILLed while the users load is in the middle of its merge: once every
    process of the run is gone and the locked row released, nothing of the load is visible, no
    staging table is left. A new run started at once, while the dead run's lock is still there,
    needs no manual step: its prepare waits out the lock nobody renews any more and takes it; the
    target then equals a clean run's, and the dead run's staging files are removed."""
    import time

    # the mechanism does not depend on the TTL; a short one keeps the test short (60 s by default)
    monkeypatch.setenv("AUTHMIGRATE_LOCK_TTL_SECONDS", "6")
    staging = tmp_path / "staging"
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(staging))
    migration.seed(documents())
    clone_reference(migration)  # the state a first run leaves
    tampered = tamper(migration)
    conf = {**migration.dag.authmigrate_defaults, "target_schema": migration.schema, "max_reject_ratio": 0.5,
            "sessions": False}

    with RowLock(migration.pg_uri, migration.schema, "users", "000000000001") as lock:
        proc = dag_subprocess(conf, tmp_path / "killed-run.log")
        try:
            def waiting_load():
                assert proc.poll() is None, f"the DAG process ended early:\n{(tmp_path / 'killed-run.log').read_text()}"
                return blocked_load(migration.pg_uri, lock.pid)

            pid, query = wait_for(waiting_load, 180, "the users load (in the DAG process) to wait on the locked row",
                                  interval=0.1)
            dead_lock = migration.redis.keys(f"authmigrate:lock:*/{migration.schema}")
        finally:
            kill_process_group(proc)
            killed_at = time.monotonic()
        assert proc.returncode == -signal.SIGKILL
    assert "authmigrate: LocalExecutor" in (tmp_path / "killed-run.log").read_text(), "not make migrate's default"
    assert dead_lock, "the killed run held the migration lock"
    # lock released: the orphaned backend finishes its statement, finds its client gone, rolls back
    wait_for(lambda: not backend_alive(migration.pg_uri, pid), 30, "the killed process's backend to end")
    assert "stg_users" in query
    assert migration.snapshot() == tampered, "the killed load left changes behind"
    assert temp_staging_tables(migration.pg_uri) == []
    leftovers = list(staging.glob(f"{DAG_ID}/*"))
    assert leftovers, "the killed run's staging files are expected to be left behind"

    dr = migration.run()  # at once: no waiting for the lock, no manual step
    assert time.monotonic() - killed_at < 180
    assert_tasks(dr, core())
    assert migration.snapshot(with_synced_at=False) == reference
    assert temp_staging_tables(migration.pg_uri) == []
    assert not [p for p in leftovers if p.exists()], "the dead run's staging was not removed"
    removed = xcoms(dr.run_id)[("validate", "return_value")]["stale_staging_removed"]
    assert len(removed) == len(leftovers) == 1 and removed[0] != dr.run_id


def test_dropped_index_and_constraint_fail_validation_by_name_and_next_run_repairs(migration, reference, run_output):
    """An index and a unique constraint dropped by hand: the catalog check (the validate task's own
    function) fails naming both; a run whose prepare does not run fails validation naming both; the
    next normal run re-creates both in prepare and passes, rows unchanged."""
    from authmigrate.validate import catalog_checks

    migration.seed(documents())
    before = clone_reference(migration)  # the state a first run leaves
    schema = migration.schema
    with psycopg.connect(migration.pg_uri, autocommit=True) as conn:
        conn.execute(f'DROP INDEX "{schema}".user_roles_user_id_idx')
        conn.execute(f'ALTER TABLE "{schema}".users DROP CONSTRAINT users_email_key')
        # the very function the validate task runs
        failed = [c for c in catalog_checks(conn, schema) if not c.ok]
    assert len(failed) == 1 and "users_email_key" in failed[0].detail and "user_roles_user_id_idx" in failed[0].detail

    # a run whose prepare does not repair (marked success without running): validate fails, naming both
    run_output()
    conf = {**migration.dag.authmigrate_defaults, "target_schema": schema, "max_reject_ratio": 0.5, "sessions": False}
    dr = migration.dag.test(run_conf=conf, mark_success_pattern="prepare")
    states = {t: s for t, (s, _) in task_instances(dr).items()}
    assert dr.state == "failed" and states["validate"] == "failed", states
    assert {states[t] for t in CORE_TASKS - {"validate"}} == {"success"}, states
    out = run_output()
    failed_lines = [line for line in out.splitlines() if "[FAILED] catalog" in line]
    assert failed_lines and all("users_email_key" in line and "user_roles_user_id_idx" in line
                                for line in failed_lines), failed_lines

    # the next run repairs both in prepare, and passes
    dr = migration.run()
    assert_tasks(dr, core())
    assert "users_email_key" in xcoms(dr.run_id)[("prepare", "return_value")]["constraints_added"]
    present = migration.sql(
        "SELECT conname FROM pg_constraint WHERE conname = 'users_email_key' AND connamespace = %s::regnamespace "
        "UNION ALL SELECT indexname FROM pg_indexes WHERE schemaname = %s AND indexname = 'user_roles_user_id_idx'",
        (schema, schema))
    assert sorted(r[0] for r in present) == ["user_roles_user_id_idx", "users_email_key"]
    with psycopg.connect(migration.pg_uri) as conn:
        assert all(c.ok for c in catalog_checks(conn, schema))
    assert migration.snapshot() == before
