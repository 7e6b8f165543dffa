"""Helpers for the fault-injection and security tests: real faults on the real server processes.

Nothing here mocks anything. The helpers stop, kill, freeze or block the real nx-27017 and
PostgreSQL processes, watch the run from the outside (the staging folder, ``pg_stat_activity``,
Airflow's metadata DB read-only) and compare row sets.

``dag_subprocess`` runs the DAG once the way `make migrate` does (``python -m tools.migrate``),
in a process group of its own, so a test can SIGKILL it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest

from tools.mongo_server import MongoServer, free_port

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "mongo_to_postgres"
from authmigrate.registry import COLLECTIONS  # noqa: E402

COLLECTION_NAMES = tuple(COLLECTIONS)
# the tasks every fault test checks; the DAG's other tasks (sessions, cache, cutover) must merely not fail
CORE_TASKS = {f"{c}.{s}" for c in COLLECTION_NAMES for s in ("plan", "export", "transform", "load", "verify")} | {"prepare", "validate"}


# --------------------------------------------------------------------------- waiting and threads
def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02,
             abort: threading.Event | None = None) -> Any:
    """Poll until predicate() is truthy; return its value. Fails with `what` on timeout, or as soon
    as ``abort`` is set (the run ended before the awaited moment came)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if abort is not None and abort.is_set():
            raise AssertionError(f"the run ended before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Background:
    """Run a fault-injecting function in a thread beside dag.test(); re-raise its error on exit.
    ``run_over`` is set when the with-block ends (pass it to wait_for(abort=...))."""

    def __init__(self, fn: Callable[[], Any], run_over: threading.Event | None = None, name: str = "fault"):
        self.fn, self.error, self.result, self.done = fn, None, None, threading.Event()
        self.run_over = run_over or threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            self.error = exc
        finally:
            self.done.set()

    def __enter__(self) -> "Background":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.run_over.set()
        self.thread.join(timeout=120)
        if exc[0] is None:
            assert not self.thread.is_alive(), "the fault thread did not finish"
            if self.error is not None:
                raise self.error


# --------------------------------------------------------------------------- Airflow metadata
def metadata_db_path() -> Path:
    from airflow.configuration import conf

    uri = conf.get("database", "sql_alchemy_conn")
    assert uri.startswith("sqlite:///"), f"these helpers read a SQLite metadata DB, got {uri}"
    return Path(uri[len("sqlite:///"):])


def _sqlite_rows(query: str, params: tuple = ()) -> list[tuple]:
    """Read-only query on Airflow's SQLite metadata DB from a watcher thread (never writes)."""
    for _ in range(50):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{metadata_db_path()}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                return db.execute(query, params).fetchall()
        except sqlite3.OperationalError as exc:  # "database is locked" while dag.test writes
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    raise RuntimeError("Airflow's metadata DB stayed locked")


def last_dag_run_id() -> int:
    return _sqlite_rows("SELECT coalesce(max(id), 0) FROM dag_run")[0][0]


def task_states_after(dag_run_pk: int) -> dict[str, tuple[str | None, int]]:
    """{task_id: (state, try_number)} of the first DAG run created after ``dag_run_pk``."""
    runs = _sqlite_rows("SELECT run_id FROM dag_run WHERE dag_id = ? AND id > ? ORDER BY id LIMIT 1",
                        (DAG_ID, dag_run_pk))
    if not runs:
        return {}
    rows = _sqlite_rows("SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
                        (DAG_ID, runs[0][0]))
    return {t: (s, n) for t, s, n in rows}


def task_instances(dr) -> dict[str, tuple[str, int]]:
    """{task_id: (state, try_number)} of a finished dag.test() run."""
    return {ti.task_id: (ti.state, ti.try_number) for ti in dr.get_task_instances()}


def assert_tasks(dr, expected: dict[str, tuple[str, int]], run_state: str = "success") -> None:
    """The run ended ``run_state``; the tasks named in ``expected`` ended in (state, try_number);
    every other task succeeded or was skipped, in at most one try."""
    got = task_instances(dr)
    assert dr.state == run_state, f"run ended {dr.state}: {got}"
    assert {t: got.get(t) for t in expected} == expected, got
    others = {t: v for t, v in got.items() if t not in expected}
    assert all(s in ("success", "skipped") and n <= 1 for s, n in others.values()), others


def core(tries: dict[str, int] | None = None, state: str = "success") -> dict[str, tuple[str, int]]:
    """Expected (state, try_number) of every core task: one try each unless ``tries`` says otherwise."""
    return {t: (state, (tries or {}).get(t, 1)) for t in CORE_TASKS}


def retry_gap_seconds(run_id: str, task_id: str) -> float:
    """Seconds between the end of try 1 and the start of try 2 of a task."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session

    with create_session() as session:
        first = session.query(TaskInstanceHistory).filter_by(
            dag_id=DAG_ID, run_id=run_id, task_id=task_id, try_number=1).one()
        last = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=run_id, task_id=task_id).one()
        return (last.start_date - first.end_date).total_seconds()


def xcoms(run_id: str) -> dict[tuple[str, str], Any]:
    """Every XCom of a run: {(task_id, key): value as stored}."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == DAG_ID, XComModel.run_id == run_id).all()
        return {(r.task_id, r.key): r.value for r in rows}


def parse_dag(monkeypatch, **env: str):
    """The DAG parsed afresh after setting AUTHMIGRATE_* env vars (default_args are read at parse time)."""
    from airflow.dag_processing.dagbag import DagBag

    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[DAG_ID]
    dag.authmigrate_defaults = {k: dag.params[k] for k in dag.params}
    return dag


# --------------------------------------------------------------------------- MongoDB process
def own_mongo_server(scratch: Path) -> Iterator[MongoServer]:
    """A nx-27017 process of the test module's own: the faults stop, kill and freeze it."""
    server = MongoServer(scratch / f"mongo-faults-{uuid.uuid4().hex[:8]}", free_port()).start()
    try:
        yield server
    finally:
        pid = server.pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.stop(signal.SIGKILL)  # its data is disposable


@contextlib.contextmanager
def frozen(server: MongoServer) -> Iterator[None]:
    """SIGSTOP the server process (every request hangs), SIGCONT on exit."""
    pid = server.pid()
    assert pid, "nx-27017 is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def export_partial(staging: Path, collection: str) -> Path | None:
    found = list(staging.glob(f"{DAG_ID}/*/{collection}/export/chunk-*.parquet.partial"))
    return found[0] if found else None


def export_final(staging: Path, collection: str) -> Path | None:
    found = list(staging.glob(f"{DAG_ID}/*/{collection}/export/chunk-*.parquet"))
    return found[0] if found else None


def parquet_documents(path: Path) -> list[bytes]:
    import pyarrow.parquet as pq

    return pq.read_table(path).column("bson").to_pylist()


# --------------------------------------------------------------------------- PostgreSQL
def snapshot(migration, schema: str | None = None, with_synced_at: bool = True) -> dict[str, list[tuple]]:
    """migration.snapshot() of another schema (e.g. a clean reference run's)."""
    saved = migration.schema
    migration.schema = schema or saved
    try:
        return migration.snapshot(with_synced_at=with_synced_at)
    finally:
        migration.schema = saved


def tamper(migration) -> dict[str, list[tuple]]:
    """Hand edits a re-run must undo, each a different merge path: alice changed (UPDATE), erin
    deleted (INSERT again, with her role), a user the source never had (DELETE). Returns the
    target's snapshot after the edits."""
    with psycopg.connect(migration.pg_uri, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{migration.schema}"')
        conn.execute("UPDATE users SET last_name = 'Tampered' WHERE id = '000000000001'")
        conn.execute("DELETE FROM users WHERE id = '000000000005'")
        conn.execute("INSERT INTO users (id, mongo_id, username, email) "
                     "VALUES ('999000000001', 'bogus', 'bogus', 'bogus@example.com')")
        conn.execute("INSERT INTO user_roles (user_id, role_id) VALUES ('999000000001', 'standardUser')")
    return migration.snapshot()


class RowLock:
    """Another session holding a row lock (SELECT ... FOR UPDATE) in an open transaction: a merge
    that must update that row waits for it, mid-transaction, until released."""

    def __init__(self, pg_uri: str, schema: str, table: str, key: str):
        self.conn = psycopg.connect(pg_uri)
        self.pid = self.conn.info.backend_pid
        rows = self.conn.execute(f'SELECT 1 FROM "{schema}"."{table}" WHERE id = %s FOR UPDATE', (key,)).fetchall()
        assert rows, f"no row {key} in {schema}.{table} to lock"

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()

    def __enter__(self) -> "RowLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def admin(pg_uri: str) -> psycopg.Connection:
    return psycopg.connect(pg_uri, autocommit=True)


def blocked_load(pg_uri: str, blocker_pid: int) -> tuple[int, str] | None:
    """(pid, query) of the load's backend once it waits on ``blocker_pid`` inside a statement that
    reads a staging table (i.e. the merge, after the COPYs), else None."""
    with admin(pg_uri) as conn:
        rows = conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))", (blocker_pid,)
        ).fetchall()
    for pid, query in rows:
        assert "stg_" in query, f"something other than the load waits on the test's row lock: {query!r}"
        return pid, query
    return None


def backend_alive(pg_uri: str, pid: int) -> bool:
    with admin(pg_uri) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchall())


def terminate_backend(pg_uri: str, pid: int) -> None:
    with admin(pg_uri) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0], f"backend {pid} not terminated"
    wait_for(lambda: not backend_alive(pg_uri, pid), 10, f"backend {pid} to exit")


def temp_staging_tables(pg_uri: str) -> list[str]:
    with admin(pg_uri) as conn:
        return [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relpersistence = 't' AND relname LIKE 'stg%'").fetchall()]


def catalog_fingerprint(pg_uri: str) -> dict[str, Any]:
    """Every relation of the database (all schemas but temp/toast), the roles and the databases:
    anything an injected statement could create, drop or rename shows up here."""
    with admin(pg_uri) as conn:
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2").fetchall()
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_temp%' "
                               "AND nspname NOT LIKE 'pg_toast_temp%' ORDER BY 1").fetchall()
        constraints = conn.execute(
            "SELECT n.nspname, c.conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        roles = conn.execute("SELECT rolname, rolsuper, rolcanlogin FROM pg_roles ORDER BY 1").fetchall()
        databases = conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()
    return {"relations": relations, "schemas": schemas, "constraints": constraints, "roles": roles,
            "databases": databases}


# --------------------------------------------------------------------------- the DAG in its own process
def dag_subprocess(conf: dict, log_path: Path, executor: str | None = None):
    """Start `python -m tools.migrate --conf CONF` (what `make migrate` runs) in a new session
    (its own process group, so a SIGKILL reaches every process it started). Same environment
    as the tests. ``executor``: its ``--executor`` (default: the command's own default)."""
    import subprocess

    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "plugins"), str(ROOT), env.get("PYTHONPATH", "")])
    log = open(log_path, "wb")  # noqa: SIM115 - closed by the caller through proc.log
    proc = subprocess.Popen([sys.executable, "-m", "tools.migrate", "--conf", json.dumps(conf),
                             *(["--executor", executor] if executor else [])],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def kill_process_group(proc, timeout: float = 30) -> None:
    """SIGKILL the process started by dag_subprocess and everything in its process group, and
    return only once every process it had started is gone: under LocalExecutor the task processes
    are in process groups of their own and die through PR_SET_PDEATHSIG when their supervisor
    does, a few milliseconds later. A caller that released a lock before then would let a task
    that is still alive finish its transaction (a kill that comes just before a commit)."""
    import psutil

    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.log.close()

    def alive(p) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    wait_for(lambda: not any(alive(p) for p in started), timeout,
             f"the killed run's processes {[p.pid for p in started]} to be gone", interval=0.05)


# --------------------------------------------------------------------------- fixtures
_REFERENCE: dict[str, tuple[str, dict[str, list[tuple]]]] = {}


@pytest.fixture(scope="session")
def reference(dag, mongo, pg_database):
    """Snapshot (synced_at left out) of a clean run of the hand-made source (tests/data.py) into a
    schema of its own: the state every fault test on that source must end in. Computed once."""
    from tests.data import documents
    from tests.integration.conftest import Migration

    if pg_database not in _REFERENCE:
        with pytest.MonkeyPatch.context() as mp:
            m = Migration(dag, mongo, pg_database, mp, "reference")
            try:
                m.seed(documents())
                m.run()
                _REFERENCE[pg_database] = (m.schema, m.snapshot(with_synced_at=False))
            finally:
                m.client.drop_database(m.db.name)
                m.client.close()
    return _REFERENCE[pg_database][1]


def clone_reference(migration) -> dict[str, list[tuple]]:
    """Give ``migration``'s target schema the state a run of tests/data.py leaves (what a first
    run would write, without paying for one): the schema made by the pipeline's own
    ``apply_schema``, the rows copied from the reference run's schema. Returns its snapshot.
    Needs the ``reference`` fixture."""
    from authmigrate.config import RunConfig
    from authmigrate.load import apply_schema
    from tests.integration.conftest import TABLES

    source = _REFERENCE[migration.pg_uri][0]
    with admin(migration.pg_uri) as conn:
        apply_schema(conn, RunConfig.from_params({"target_schema": migration.schema}, "clone"))
        with conn.transaction():
            for table in TABLES:  # in foreign-key order
                conn.execute(f'INSERT INTO "{migration.schema}"."{table}" SELECT * FROM "{source}"."{table}"')
    return migration.snapshot()


@pytest.fixture
def run_output(request, capfd, caplog):
    """read() -> everything the runs printed or logged since the last read: capfd's capture, pytest's
    global capture (Airflow's task logger writes to the sys.stdout of its configuration time) and
    the log records (the pipeline's stdlib logger)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if not capman.is_globally_capturing():
        pytest.skip("needs pytest's output capture (do not run with -s)")

    def read() -> str:
        text = "".join(capfd.readouterr()) + "".join(capman.read_global_capture()) + caplog.text
        caplog.clear()
        return text

    read()
    return read


@pytest.fixture
def make_migration(dag, pg_database, monkeypatch, request):
    """make_migration(mongo_server, dag=None): a Migration (own MongoDB database, own target schema)
    on the given nx-27017 process, optionally with a DAG parsed under other retry settings."""
    from tests.integration.conftest import Migration

    made = []

    def make(server: MongoServer, custom_dag=None):
        m = Migration(custom_dag or dag, server, pg_database, monkeypatch, request.node.name)
        made.append(m)
        return m

    yield make
    for m in made:
        with contextlib.suppress(Exception):
            m.client.drop_database(m.db.name)
        m.client.close()
