"""Task bodies. The DAG file wires these; each reads its params from the running context.

Stage modules (pandas, pyarrow, pymongo, psycopg) are imported inside the functions so that
parsing the DAG stays cheap.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time

from authmigrate.config import RunConfig
from authmigrate.registry import COLLECTIONS, SOURCES

log = logging.getLogger("authmigrate")


FAILURE_MARK = "AUTHMIGRATE FAILED"  # tools/migrate.py repeats these lines at the end of `make migrate`


def _task(fn=None, *, timed: bool = True, renew: bool = True):
    """What every task body shares:
    - a failure no retry can fix (``config.Permanent``: bad params or settings, a validation
      finding, a refused cutover, a target locked by a live run) fails the task at once,
      without retries, its message ending with what to do (``mark_failed`` logs it);
    - while the body runs, the run's migration lock is renewed (``renew``), so only a dead run's
      lock ever expires;
    - with ``timed``, the task's own duration goes into its XCom (the report's time per task),
      and Arrow's memory is tuned before and handed back after."""
    if fn is None:
        return functools.partial(_task, timed=timed, renew=renew)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from authmigrate.config import Permanent

        die_with_parent()
        try:
            with _renewing() if renew else contextlib.nullcontext():
                return (_timed(fn) if timed else fn)(*args, **kwargs)
        except Permanent as exc:
            _fail(exc)

    return wrapper


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux). Under an executor the
    task runs in a process of its own, in a process group of its own, forked by Airflow's
    supervisor: killing `make migrate` (or a worker) kills the supervisor, and without this the
    task would go on, holding its transaction and renewing the migration lock that the next
    run waits for."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _timed(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from authmigrate.memory import release, tune

        tune()
        started = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        finally:
            release()
        if isinstance(result, dict):
            result["seconds"] = round(time.monotonic() - started, 3)
        return result

    return wrapper


@contextlib.contextmanager
def _renewing():
    _, cfg = _context()
    if cfg.dry_run:
        yield
        return
    from authmigrate.lock import heartbeat

    with heartbeat(cfg):
        yield


def _context():
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    return ctx, RunConfig.from_params(dict(ctx["params"]), ctx["run_id"])


def _require(cfg: RunConfig, collection: str) -> None:
    if collection not in cfg.collections:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"{collection} is not in this run's collections {list(cfg.collections)}")


def _results(ti, cfg: RunConfig) -> dict[str, dict]:
    sources = [c for c in COLLECTIONS if c in cfg.collections] + (["sessions"] if cfg.sessions else [])
    return {s: {stage: exported(ti, s) if stage == "export" and s != "sessions" else
                ti.xcom_pull(task_ids=f"{s}.{stage}") for stage in ("export", "transform", "load", "verify")}
            for s in sources}


def _fail(exc: Exception):
    """Fail the task without retrying (a retry cannot help), saying what to do."""
    from airflow.sdk.exceptions import AirflowFailException

    what_to_do = getattr(exc, "what_to_do", "")
    raise AirflowFailException(f"{exc}\nWhat to do: {what_to_do}" if what_to_do else str(exc)) from exc


@_task(renew=False)  # takes the lock
def prepare() -> dict:
    """Create or repair the target schema, seed permissions, register the run."""
    ctx, cfg = _context()
    if cfg.dry_run:
        log.info("dry run: the target is not touched")
        return {"dry_run": True}
    from authmigrate import load, lock
    from authmigrate.cutover import refuse_after_cutover

    client, key = lock.redis_client(cfg), lock.lock_key(cfg)
    refuse_after_cutover(client)
    acquired_at = time.time()  # no later than the lock was set: ages computed from it err on the safe side
    lock.acquire_waiting(client, key, cfg.run_id)
    epoch = lock.epoch_of(client, key)
    with lock.heartbeat(cfg):
        prepared = load.prepare(cfg, dict(ctx["params"]))
    return {**prepared, "lock_acquired_at": acquired_at, "lock_epoch": epoch}


def _lock(ti) -> tuple[float | None, int | None]:
    """When prepare took the migration lock, and as the target's how-manieth holder."""
    prepared = ti.xcom_pull(task_ids="prepare") or {}
    return prepared.get("lock_acquired_at"), prepared.get("lock_epoch")


@_task(timed=False)
def plan(collection: str) -> list[dict]:
    """The collection's export chunks, fixed up front (the export task is mapped over them)."""
    _, cfg = _context()
    _require(cfg, collection)
    from authmigrate.export import plan_chunks

    return plan_chunks(cfg, collection)


@_task
def export(chunk: dict) -> dict:
    """Stream one chunk of a collection from MongoDB into run-scoped Parquet."""
    _, cfg = _context()
    from authmigrate.export import export_chunk

    return export_chunk(cfg, chunk)


def exported(ti, collection: str) -> dict | None:
    """The collection's export: every mapped chunk's result, combined."""
    from authmigrate.export import combine

    chunks = ti.xcom_pull(task_ids=f"{collection}.export")
    if chunks is None:
        return None
    chunks = [chunks] if isinstance(chunks, dict) else list(chunks)
    result = combine(chunks)
    result["seconds"] = round(sum(c.get("seconds", 0) for c in chunks if c), 3)
    return result


@_task
def transform(collection: str) -> dict:
    """Coerce, de-duplicate, explode arrays, collect rejects."""
    ctx, cfg = _context()
    _require(cfg, collection)
    from authmigrate.transform_task import transform_collection

    ti = ctx["ti"]
    return transform_collection(cfg, collection, exported(ti, collection), _upstream(ti, cfg, collection))


def _upstream(ti, cfg: RunConfig, source: str) -> dict[str, dict | None]:
    """The transforms of the collections a source's declaration depends on (None for one this
    run does not migrate)."""
    return {dep: ti.xcom_pull(task_ids=f"{dep}.transform") if dep in cfg.collections else None
            for dep in SOURCES[source].depends_on}


@_task(renew=False)  # held() renews
def load(collection: str) -> dict:
    """COPY into staging and merge, in one transaction."""
    ctx, cfg = _context()
    _require(cfg, collection)
    transformed = ctx["ti"].xcom_pull(task_ids=f"{collection}.transform")
    if transformed.get("absent"):
        log.info("load %s: the source has no collection %r: its tables are left as they are", collection,
                 transformed["source"])
        return {"absent": True, "changes": {}}
    if cfg.dry_run:
        log.info("dry run: would load %s", transformed["counts"]["rows"])
        return {"dry_run": True, "changes": {}}
    from authmigrate.load import load_collection

    with _held(cfg, ctx["ti"]) as guard:
        result = load_collection(cfg, collection, transformed, guard)
    _emit_assets(ctx, cfg, result["changes"])
    return result


@_task
def verify(collection: str) -> dict:
    """The content checks of one loaded collection's tables (param verify), in a task of its own
    after its load: they run beside the other collections' loads, not in the final validate,
    and a failed try retries the checks alone. A mismatch does not fail this task: validate
    reports it and fails the run."""
    ctx, cfg = _context()
    if collection == "sessions":
        _require_sessions(cfg)
    else:
        _require(cfg, collection)
    ti = ctx["ti"]
    loaded = ti.xcom_pull(task_ids=f"{collection}.load") or {}
    if not cfg.verify or cfg.dry_run or loaded.get("absent"):
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("nothing to verify: " + ("param verify is off" if not cfg.verify else
                                                            "a dry run" if cfg.dry_run else "no such collection"))
    from authmigrate.validate import verify_loaded

    return verify_loaded(cfg, collection, ti.xcom_pull(task_ids=f"{collection}.transform"))


def _emit_assets(ctx, cfg: RunConfig, changes: dict[str, dict[str, int]]) -> None:
    """After the commit: one asset event per target table, through the task's asset aliases,
    named as the Postgres provider names tables (postgres://host:port/database/schema/table; its
    OpenLineage dataset: namespace postgres://host:port, name database.schema.table), with the
    run and the table's changes as extra. Downstream DAGs can be scheduled on the data."""
    from airflow.providers.postgres.assets.postgres import create_asset
    from airflow.sdk import AssetAlias, BaseHook

    from authmigrate.registry import asset_alias

    conn = BaseHook.get_connection(cfg.postgres_conn_id)
    for table, change in changes.items():
        asset = create_asset(host=conn.host, port=conn.port or 5432, database=conn.schema or "postgres",
                             schema=cfg.target_schema, table=table)
        ctx["outlet_events"][AssetAlias(asset_alias(table))].add(
            asset, extra={"run_id": cfg.run_id, "mode": cfg.mode, **{k: int(v) for k, v in change.items()}})


def _held(cfg: RunConfig, ti):
    """The run's lock, checked on entry and renewed meanwhile: the tasks that write the target
    (the loads; validate, which writes the run's record and advances the watermarks) do so only
    while this run still holds it. Those tasks need no heartbeat of their own (``renew=False``)."""
    from authmigrate.lock import held

    return held(cfg, *_lock(ti))


def _require_sessions(cfg: RunConfig) -> None:
    if not cfg.sessions:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("session sync is off for this run (param sessions)")


@_task
def sessions_export() -> dict:
    """SCAN the app's session keys; HGETALL + PTTL in pipelined batches. Read-only."""
    _, cfg = _context()
    _require_sessions(cfg)
    from authmigrate.collections.sessions import export_sessions

    return export_sessions(cfg)


@_task
def sessions_transform() -> dict:
    ctx, cfg = _context()
    _require_sessions(cfg)
    from authmigrate.collections.sessions import transform_task

    ti = ctx["ti"]
    return transform_task(cfg, ti.xcom_pull(task_ids="sessions.export"), _upstream(ti, cfg, "sessions"))


@_task(renew=False)  # held() renews
def sessions_load() -> dict:
    ctx, cfg = _context()
    _require_sessions(cfg)
    transformed = ctx["ti"].xcom_pull(task_ids="sessions.transform")
    if cfg.dry_run:
        return {"dry_run": True, "changes": {}}
    from authmigrate.load import load_collection

    with _held(cfg, ctx["ti"]) as guard:
        result = load_collection(cfg, "sessions", transformed, guard)
    _emit_assets(ctx, cfg, result["changes"])
    return result


@_task(timed=False, renew=False)  # held() renews
def validate() -> dict:
    """Orphans, catalog, reconciliation, reject ratio; writes the report."""
    ctx, cfg = _context()
    from authmigrate.staging import remove_run, remove_stale
    from authmigrate.validate import ValidationFailed, validate_run

    prepared = ctx["ti"].xcom_pull(task_ids="prepare") or {}
    with contextlib.nullcontext() if cfg.dry_run else _held(cfg, ctx["ti"]):
        result = validate_run(cfg, _results(ctx["ti"], cfg), {"prepare": prepared.get("seconds", 0.0)})
    if not result["passed"]:
        raise ValidationFailed("dry run: validation failed:\n" + "\n".join(result["failed"]))
    remove_run(cfg)
    if not cfg.dry_run:
        result["stale_staging_removed"] = remove_stale(cfg, prepared.get("lock_acquired_at"))
    return {k: v for k, v in result.items() if k != "report"}


@_task(timed=False, renew=False)
def release_lock() -> dict:
    """A teardown task: runs however the run's other tasks ended, so a failed run never keeps
    the target locked until the lock expires (release is compare-and-delete on this run's token),
    and never stays 'running' in authmigrate.runs (validate closes the runs it reaches; the
    failure callbacks are best effort, this is the guarantee)."""
    _, cfg = _context()
    if cfg.dry_run:
        return {"released": False, "closed_as_failed": False}
    from authmigrate.lock import release_for_run

    return {"closed_as_failed": _close_unfinished_run(cfg), "released": release_for_run(cfg)}


def _close_unfinished_run(cfg: RunConfig) -> bool:
    """Mark the run failed if it is still 'running' once validate is over (it never ran)."""
    try:
        from authmigrate.db import connect, q

        with connect(cfg) as conn:
            closed = conn.execute(q("run_failed"), {"run_id": cfg.run_id}).rowcount > 0
        if closed:
            log.warning("run %s ended before validate: recorded as failed in authmigrate.runs", cfg.run_id)
        return closed
    except Exception:  # noqa: BLE001 - the lock must still be released
        log.exception("could not close run %s in authmigrate.runs", cfg.run_id)
        return False


@_task(timed=False)
def invalidate_cache() -> dict:
    """UNLINK the app's cached copies of rows this run changed or deleted."""
    from airflow.sdk.exceptions import AirflowSkipException

    _, cfg = _context()
    if cfg.dry_run or not cfg.cache_keys:
        raise AirflowSkipException("no cache key patterns configured" if not cfg.dry_run else "dry run")
    from authmigrate.cache import invalidate

    return invalidate(cfg)


@_task(timed=False)
def cutover() -> dict:
    """Flip the app's datastore switch to postgres — only after a passing validation."""
    from airflow.sdk.exceptions import AirflowSkipException

    ctx, cfg = _context()
    if not cfg.cutover or cfg.dry_run:
        raise AirflowSkipException("cutover is off for this run (param cutover)" if not cfg.dry_run else "dry run")
    from authmigrate.cutover import switch

    return switch(cfg, ctx["ti"].xcom_pull(task_ids="validate"))


def mark_failed(context) -> None:
    """on_failure_callback (a task failed for good): say which task and why in lines marked
    FAILURE_MARK (`make migrate` repeats them at the end of its output), and record the failure
    in authmigrate.runs (best effort)."""
    ti, exc = context.get("ti"), context.get("exception")
    task = getattr(ti, "task_id", "?") + (f"[{ti.map_index}]" if getattr(ti, "map_index", -1) not in (-1, None) else "")
    first, *rest = str(exc).splitlines() or [type(exc).__name__]
    log.error("%s %s failed (try %s): %s", FAILURE_MARK, task, getattr(ti, "try_number", "?"), first)
    for line in rest:
        log.error("%s %s   %s", FAILURE_MARK, task, line)
    try:
        cfg = RunConfig.from_params(dict(context["params"]), context["run_id"])
        if cfg.dry_run:
            return
        from authmigrate.db import connect, q

        with connect(cfg) as conn:
            conn.execute(q("run_failed"), {"run_id": cfg.run_id})
    except Exception:  # noqa: BLE001 - a callback must never mask the task's own error
        log.exception("could not mark run %s failed in authmigrate.runs", context.get("run_id"))
