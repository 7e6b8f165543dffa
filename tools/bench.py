"""Benchmark: our DAG end to end against a floor, the naive way and a peer (dlt), on the same data.

    python -m tools.bench --users 200000 [--runs R] [--out bench-results] [--profile]
    make bench BENCH_USERS=200000

1. Starts a fresh nx-27017 (own data folder, free port) and seeds it with
   ``tools.seed_mongo.seed(uri, "idp", N)``: N users, N/20 apps, N/10 roles, N/10 consents, N/100
   invitations, the settings document, ~3 % dirty.
   (N = 1,000,000 works, but seeding nx-27017 alone then takes several minutes.)
2. Measures, each in a subprocess whose process tree is sampled from /proc every 0.2 s
   (summed RSS of the tree; memory over time), each against a fresh PostgreSQL database:

   ours   ``airflow dags test mongo_to_postgres --conf '{"sessions": false, "max_reject_ratio": 0.1}'``
          with its own AIRFLOW_HOME (``airflow db migrate`` first, not timed). Time per task is
          parsed from the run's ``report.md``.
   floor  ``python -m tools.bench _floor``: pymongo streams the three collections as
          ``RawBSONDocument`` (batches of 10,000) and psycopg 3 COPYs each raw BSON document,
          untouched, into a one-column ``bytea`` table (binary COPY; no index, no transform).
   naive  ``python -m tools.bench _naive``: ``PostgresHook.insert_rows`` (its defaults) of 5,000
          user documents' scalar fields, as text, into a bare table; rows/s.
   dlt    ``tools/bench_dlt.py`` inside ``.bench/dlt-venv`` (created here with
          ``dlt[postgres]==1.31.0`` and ``pymongo==4.20.1``; if it cannot be created the error is
          reported and the other systems still run): dlt's defaults, arrays → child tables.

   The file source (skip with ``--skip files``): the seeded collections are first dumped, as
   mongodump writes them, to ``<work>/dump/<collection>.bson`` (raw documents, not timed), then
   floor_files  ``python -m tools.bench _floor_files``: reads each ``.bson`` file, splits it into
                documents (``bson.decode_file_iter``, RawBSONDocument: the C extension walks and
                checks each length prefix) and COPYs each raw document into a bytea table (binary
                COPY; no index, no transform) — the same floor as above, with the file for server.
   ours_files   our DAG with ``source=files``, ``source_path=<work>/dump`` (``AUTHMIGRATE_SOURCE_ROOTS``
                set to it), everything else as ``ours``.
   ours_files_1w  the same on one worker's share: one task at a time and one users-transform
                process (``AUTHMIGRATE_PARALLELISM=1``, ``AUTHMIGRATE_TRANSFORM_WORKERS=1``); the
                scale-out target compares ours_files with it.
3. Writes ``<out>/bench.json``, ``<out>/bench.md`` and ``<out>/bench.png``. Each system's figure
   is the median (by wall time) of R runs; by default R = 3 when its first run took under a
   minute, else 1. ``--profile`` adds one unmeasured run of ours under py-spy (wall-clock
   sampling, idle included) and summarises where the time goes (``<out>/profile-ours.txt`` holds
   the collapsed stacks).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("AUTHMIGRATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_CONN = os.environ.get("AUTHMIGRATE_BENCH_REDIS", "redis://127.0.0.1:6379?db=14")
MONGO_DB = "idp"
# every collection the seeder writes (tools.seed_mongo.COLLECTIONS; tests/unit/test_bench_report.py)
COLLECTIONS = ("users", "oauthClientApps", "oauthRoles", "userAppConsents", "invitations", "appSettings")
DAG_ID = "mongo_to_postgres"
DAG_CONF = {"sessions": False, "max_reject_ratio": 0.1}
DLT_VENV = ROOT / ".bench" / "dlt-venv"
DLT_REQUIREMENTS = ("dlt[postgres]==1.31.0", "pymongo==4.20.1")
NAIVE_ROWS = 5000
SAMPLE_SECONDS = 0.2
ONE_MINUTE = 60.0
TARGETS_N = 1_000_000
GIB = 1024 ** 3
MIB = 1024 ** 2


# --------------------------------------------------------------------------------------------
# measuring a subprocess
# --------------------------------------------------------------------------------------------

def _tree_rss(root, peaks: dict | None = None) -> int:
    """The summed RSS of ``root`` and its descendants; with ``peaks``, each process's highest
    RSS so far goes into it (pid → {"command", "peak_rss_bytes"})."""
    import psutil

    total = 0
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        if peaks is not None:
            seen = peaks.get(p.pid)
            if seen is None:
                try:
                    seen = peaks[p.pid] = {"command": " ".join(p.cmdline())[:160], "peak_rss_bytes": 0}
                except psutil.Error:
                    continue
            seen["peak_rss_bytes"] = max(seen["peak_rss_bytes"], rss)
    return total


def run_measured(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float) -> dict:
    """Run ``cmd``; wall time, exit code, and the summed RSS of its process tree every 0.2 s."""
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, int]] = []
    peaks: dict[int, dict] = {}
    load_before = os.getloadavg()
    with open(log_path, "wb") as log:
        started_epoch = time.time()
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        root = psutil.Process(proc.pid)
        timed_out = False
        while True:
            rss = _tree_rss(root, peaks)
            now = time.monotonic() - started
            if rss:
                samples.append((round(now, 2), rss))
            try:
                proc.wait(timeout=SAMPLE_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if now > timeout:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)  # the session this call started
                    proc.wait()
                    break
        wall = time.monotonic() - started
    return {
        "started_epoch": started_epoch,
        "wall_seconds": round(wall, 3),
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "peak_rss_bytes": max((s[1] for s in samples), default=0),  # of the tree: every process summed
        "peak_process_rss_bytes": max((p["peak_rss_bytes"] for p in peaks.values()), default=0),
        "process_peaks": sorted(peaks.values(), key=lambda p: -p["peak_rss_bytes"])[:12],
        "memory_samples": samples,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "log": str(log_path),
    }


def _tail(path: str | Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# PostgreSQL databases
# --------------------------------------------------------------------------------------------

class Databases:
    """Fresh databases, one per measured run; all dropped by ``drop_all``."""

    def __init__(self, tag: str):
        self.tag = tag
        self.created: list[str] = []

    def _admin(self):
        import psycopg

        return psycopg.connect(PG_ADMIN, autocommit=True)

    def create(self, system: str, run: int) -> str:
        name = f"authmigrate_bench_{self.tag}_{system}_{run}"
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return name

    def uri(self, name: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"

    def size(self, name: str) -> int:
        with self._admin() as admin:
            return admin.execute("SELECT pg_database_size(%s)", (name,)).fetchone()[0]

    def drop_all(self) -> None:
        with self._admin() as admin:
            for name in self.created:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    def server_version(self) -> str:
        with self._admin() as admin:
            return admin.execute("SHOW server_version").fetchone()[0]


# --------------------------------------------------------------------------------------------
# the floor and the naive way (run as `python -m tools.bench _floor|_naive`, measured from outside)
# --------------------------------------------------------------------------------------------

def _copy_raw_collections(pg: str, out_path: str, documents) -> None:
    """For each collection, ``documents(name)`` (raw BSON documents, RawBSONDocument) COPYed
    untouched into a one-column bytea table (binary COPY); the counts go to ``out_path``."""
    import psycopg

    started = time.monotonic()
    per: dict[str, dict] = {}
    with psycopg.connect(pg) as conn:
        for name in COLLECTIONS:
            t0 = time.monotonic()
            table = f"floor_{name.lower()}"
            conn.execute(f"CREATE TABLE {table} (doc bytea)")
            docs = size = 0
            with conn.cursor() as cur, cur.copy(f"COPY {table} (doc) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["bytea"])
                for doc in documents(name):
                    raw = doc.raw
                    copy.write_row((raw,))
                    docs += 1
                    size += len(raw)
            conn.commit()
            per[name] = {"documents": docs, "bson_bytes": size, "seconds": round(time.monotonic() - t0, 3)}
    out = {"collections": per, "documents_total": sum(p["documents"] for p in per.values()),
           "bson_bytes_total": sum(p["bson_bytes"] for p in per.values()),
           "seconds_in_script": round(time.monotonic() - started, 3)}
    Path(out_path).write_text(json.dumps(out, indent=2))


def floor_main(argv: list[str]) -> int:
    """Stream raw BSON with pymongo and COPY it, untouched, into one-column bytea tables."""
    import pymongo
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    parser = argparse.ArgumentParser(prog="tools.bench _floor")
    parser.add_argument("--mongo", required=True)
    parser.add_argument("--db", default=MONGO_DB)
    parser.add_argument("--pg", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=10_000)
    args = parser.parse_args(argv)
    with pymongo.MongoClient(args.mongo) as client:
        db = client[args.db]
        options = CodecOptions(document_class=RawBSONDocument)
        _copy_raw_collections(args.pg, args.out, lambda name: db.get_collection(name, codec_options=options).find(
            {}, batch_size=args.batch_size))
    return 0


def floor_files_main(argv: list[str]) -> int:
    """Read each collection's mongodump .bson file, split it into raw documents (the bson C
    extension walks and checks each length prefix) and COPY them, untouched, into one-column
    bytea tables."""
    import bson
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    parser = argparse.ArgumentParser(prog="tools.bench _floor_files")
    parser.add_argument("--dump", required=True)
    parser.add_argument("--pg", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    options = CodecOptions(document_class=RawBSONDocument)

    def documents(name: str):
        with open(Path(args.dump) / f"{name}.bson", "rb", buffering=1 << 20) as fh:
            yield from bson.decode_file_iter(fh, options)

    _copy_raw_collections(args.pg, args.out, documents)
    return 0


NAIVE_FIELDS = ("_id", "userId", "username", "email", "passwordHash", "firstName", "lastName", "identityProvider",
                "identityProviderUserId", "passkeyId", "passkeyPublicKey", "mfaSecret", "mfaEnabled",
                "emailVerified", "signCount", "canManageApps", "banned", "bannedAt", "bannedReason", "bannedBy",
                "createdAt", "updatedAt")


def naive_main(argv: list[str]) -> int:
    """PostgresHook.insert_rows (defaults) of N user documents' scalar fields into a bare table."""
    import pymongo

    parser = argparse.ArgumentParser(prog="tools.bench _naive")
    parser.add_argument("--mongo", required=True)
    parser.add_argument("--db", default=MONGO_DB)
    parser.add_argument("--rows", type=int, default=NAIVE_ROWS)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with pymongo.MongoClient(args.mongo) as client:
        docs = list(client[args.db]["users"].find({}, limit=args.rows, sort=[("_id", 1)]))
    rows = [tuple(None if d.get(f) is None or isinstance(d.get(f), (list, dict)) else str(d[f])
                  for f in NAIVE_FIELDS) for d in docs]
    columns = [re.sub(r"(?<!^)(?=[A-Z])", "_", f.lstrip("_")).lower() for f in NAIVE_FIELDS]
    from airflow.providers.postgres.hooks import postgres as pg_module
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id="postgres_default")
    hook.run("CREATE TABLE naive_users (" + ", ".join(f"{c} text" for c in columns) + ")")
    t0 = time.monotonic()
    hook.insert_rows("naive_users", rows, target_fields=columns)
    seconds = time.monotonic() - t0
    (count,) = hook.get_first("SELECT count(*) FROM naive_users")
    # for reference (not the figure): the same call forced down its row-by-row branch
    # (one INSERT per row, a commit every 1,000), what insert_rows did before it used executemany
    hook.run("CREATE TABLE naive_users_rowwise (" + ", ".join(f"{c} text" for c in columns) + ")")
    hook.supports_executemany = False
    t0 = time.monotonic()
    hook.insert_rows("naive_users_rowwise", rows, target_fields=columns)
    rowwise = time.monotonic() - t0
    out = {"rows": len(rows), "rows_in_table": count, "columns": len(columns), "seconds": round(seconds, 3),
           "rows_per_second": round(len(rows) / seconds, 1),
           "rowwise_seconds": round(rowwise, 3), "rowwise_rows_per_second": round(len(rows) / rowwise, 1),
           "driver": "psycopg 3" if getattr(pg_module, "USE_PSYCOPG3", False) else "psycopg2",
           "call": "PostgresHook.insert_rows(table, rows, target_fields) with its defaults (commit_every=1000); "
                   "PostgresHook.supports_executemany is True, so each chunk of 1,000 rows is one "
                   "cursor.executemany (pipelined by psycopg 3) and a commit"}
    Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# the dlt venv
# --------------------------------------------------------------------------------------------

def ensure_dlt_venv() -> tuple[Path | None, str | None]:
    """``.bench/dlt-venv`` with the pinned dlt and pymongo; (python, None) or (None, error)."""
    python = DLT_VENV / "bin" / "python"
    check = [str(python), "-c", "import dlt, pymongo, psycopg2, sys; "
             "sys.exit(0 if (dlt.__version__, pymongo.version) == ('1.31.0', '4.20.1') else 1)"]
    try:
        if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
            return python, None
        uv = Path(sys.executable).with_name("uv")
        if uv.exists():
            steps = [[str(uv), "venv", "-q", "--allow-existing", str(DLT_VENV), "--python", sys.executable],
                     [str(uv), "pip", "install", "-q", "--python", str(python), *DLT_REQUIREMENTS]]
        else:
            steps = [[sys.executable, "-m", "venv", str(DLT_VENV)],
                     [str(python), "-m", "pip", "install", "-q", *DLT_REQUIREMENTS]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                return None, f"{' '.join(step)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        if subprocess.run(check, capture_output=True).returncode != 0:
            return None, "dlt venv created but `import dlt, pymongo, psycopg2` (pinned versions) fails"
        return python, None
    except Exception as exc:  # noqa: BLE001 - reported, never fatal for the whole bench
        return None, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# our DAG
# --------------------------------------------------------------------------------------------

def airflow_env(work: Path, mongo_port: int, pg_db: str | None, report_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "AUTHMIGRATE_")) and k != "PYTHONPATH"}
    env.update({
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}",
        "AIRFLOW_CONN_MONGO_DEFAULT": f"mongo://127.0.0.1:{mongo_port}/{MONGO_DB}",
        "AIRFLOW_CONN_REDIS_DEFAULT": REDIS_CONN,
        "AUTHMIGRATE_STAGING_DIR": str(work / "staging"),
        "AUTHMIGRATE_RETRIES": "0",  # a failure is a failure: no retry inside a measurement
        # the worker setting every deployment of this project ships (plugins/authmigrate/memory.py)
        "ARROW_DEFAULT_MEMORY_POOL": os.environ.get("BENCH_ARROW_POOL", "jemalloc"),
    })
    if pg_db:
        env["AIRFLOW_CONN_POSTGRES_DEFAULT"] = "postgres://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + f"/{pg_db}"
    if report_dir:
        env["AUTHMIGRATE_REPORT_DIR"] = str(report_dir)
    return env


def _md_table(text: str, header: str) -> list[list[str]]:
    """Rows of the Markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(header):
            rows = []
            for row in lines[i + 2:]:
                if not row.strip().startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    return []


def parse_report(report_dir: Path) -> dict:
    reports = sorted(report_dir.glob("*/report.md"))
    if not reports:
        raise RuntimeError(f"no report.md under {report_dir}")
    text = reports[-1].read_text()
    tasks = {t: float(s) for t, s in _md_table(text, "| task | seconds |")}
    tables = {t: int(n) for t, n in _md_table(text, "| table | rows |")}
    collections = {c: {"source": int(s), "loaded": int(lo), "rejected": int(r)}
                   for c, s, lo, r in _md_table(text, "| collection | source | loaded | rejected |")}
    return {"run_id": reports[-1].parent.name, "report": str(reports[-1]), "passed": "PASSED" in text.splitlines()[1],
            "tasks": tasks, "tables": tables, "collections": collections}


_FINISHED_RUN = re.compile(r"DagRun Finished: .*?run_id=([^,\s]+)")


def task_spans(airflow_db: str | Path, log_path: str | Path, started_epoch: float, wall: float) -> dict:
    """The run's timeline from the metadata DB (SQLite, the bench's AIRFLOW_HOME): each task
    instance's start and end as Airflow recorded them (a mapped task's instances add up under its
    task id; tasks side by side overlap, so the spans may add up to more than the wall). Also the
    start-up until the first task starts, the time no task ran while the run was on, and the
    shut-down after the last task. The run is the one the log says finished."""
    import datetime as dt
    import sqlite3

    found = _FINISHED_RUN.findall(Path(log_path).read_text(errors="replace"))
    if not found or not Path(airflow_db).exists():
        return {}
    with contextlib.closing(sqlite3.connect(airflow_db)) as conn:
        rows = conn.execute("SELECT task_id, start_date, end_date FROM task_instance WHERE run_id = ? "
                            "AND start_date IS NOT NULL AND end_date IS NOT NULL", (found[-1],)).fetchall()
    if not rows:
        return {}

    def at(stamp: str) -> float:
        when = dt.datetime.fromisoformat(stamp)
        return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp() - started_epoch

    spans: dict[str, float] = {}
    intervals: dict[str, list[list[float]]] = {}
    for task, start, end in sorted(rows, key=lambda r: r[1]):
        a, b = at(start), at(end)
        spans[task] = round(spans.get(task, 0.0) + b - a, 3)
        intervals.setdefault(task, []).append([round(a, 2), round(b, 2)])
    edges = sorted(span for spans_of in intervals.values() for span in spans_of)
    first, last = edges[0][0], max(b for _, b in edges)
    busy, reach = 0.0, first
    for a, b in edges:  # the union of the spans
        if b > reach:
            busy += b - max(a, reach)
            reach = b
    return {"startup": round(first, 3), "tasks": spans, "between_tasks": round(last - first - busy, 3),
            "shutdown": round(wall - last, 3), "intervals": intervals}


def task_peaks(timeline: dict, samples: list[tuple[float, int]]) -> dict[str, int]:
    """Peak RSS (bytes) sampled while each task ran (its span in ``timeline``): where the peak is."""
    peaks: dict[str, int] = {}
    for task, spans in (timeline.get("intervals") or {}).items():
        inside = [rss for t, rss in samples if any(a <= t <= b for a, b in spans)]
        if inside:
            peaks[task] = max(inside)
    return peaks


# --------------------------------------------------------------------------------------------
# py-spy profile of one run of ours
# --------------------------------------------------------------------------------------------

def _frame_parts(frame: str) -> tuple[str, str]:
    """'func (path/to/file.py:12)' → ('func', 'path/to/file.py')."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    return (m.group(1), m.group(2)) if m else (frame, "")


def _short(path: str) -> str:
    for marker in ("site-packages/", "plugins/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name


_CATEGORIES = (
    (("/pymongo/",), "pymongo: reading from nx-27017 (network wait included)"),
    (("/bson/",), "bson decoding"),
    (("/psycopg/", "/psycopg_binary/", "/psycopg2/"), "psycopg: PostgreSQL COPY, merge, checks (server wait included)"),
    (("/pyarrow/",), "pyarrow: Parquet staging"),
    (("/pandas/", "/numpy/"), "pandas / numpy"),
    (("/matplotlib/", "/markdown/", "/PIL/"), "report files (matplotlib chart, markdown)"),
    (("/authmigrate/",), "authmigrate's own Python (transform rules, hashing, COPY rows)"),
    (("/airflow/", "/sqlalchemy/", "/httpx/", "/fastapi/", "/starlette/", "/structlog/", "/pydantic",
      "/anyio/", "/sqlite3/", "/alembic/", "/msgspec/", "/svcs/"),
     "Airflow: task SDK, in-process execution API, metadata DB, logging"),
)


def _category(frames: list[str]) -> str:
    """What a sample is doing: module loading wherever it happens, else the innermost frame
    that belongs to a known package (so a `Condition.wait` called by Airflow counts as Airflow)."""
    parsed = [_frame_parts(f) for f in frames]
    if any("importlib._bootstrap" in path for _, path in parsed):
        return "imports (module loading)"
    for func, path in reversed(parsed):
        p = "/" + path.replace("\\", "/")
        for markers, name in _CATEGORIES:
            if any(m in p for m in markers):
                return name
    if len(parsed) <= 2:
        return "interpreter with no Python frame (start-up, shut-down, GC)"
    return "other (stdlib)"


OUTSIDE = "outside the task bodies (Airflow start-up, DAG parse, task set-up, XCom, scheduling)"


def summarize_profile(raw_path: Path, top: int = 15) -> dict:
    """Wall-clock attribution from py-spy's collapsed stacks (``--idle --threads``): only the
    threads that run task code count, so idle helper threads (heartbeats, lock renewal) do not."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw_path.read_text(errors="replace").splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        stacks.append((body.split(";"), int(count)))

    def thread_key(frames: list[str]) -> str:
        ids = [re.match(r"(process|thread) \(?(\d+)", f) for f in frames[:3]]
        return ";".join(f"{m.group(1)} {m.group(2)}" for m in ids if m)

    def task_of(frames: list[str]) -> str | None:
        for f in frames:
            func, path = _frame_parts(f)
            if path.endswith("/authmigrate/tasks.py") and func in ("prepare", "export", "transform", "load",
                                                                    "validate", "invalidate_cache", "cutover"):
                return func
        return None

    task_threads = {thread_key(fr) for fr, _ in stacks if task_of(fr)}
    by_phase: Counter = Counter()
    by_category: Counter = Counter()
    by_phase_category: dict[str, Counter] = defaultdict(Counter)
    leaves: Counter = Counter()
    own_inclusive: Counter = Counter()
    outside_inclusive: Counter = Counter()
    total = 0
    for frames, n in stacks:
        if thread_key(frames) not in task_threads:
            continue
        total += n
        phase = task_of(frames) or OUTSIDE
        by_phase[phase] += n
        func, path = _frame_parts(frames[-1])
        cat = _category(frames)
        by_category[cat] += n
        by_phase_category[phase][cat] += n
        leaves[f"{func} ({_short(path)})"] += n
        if not task_of(frames):
            for name in {f"{fn} ({_short(pa)})" for fn, pa in map(_frame_parts, frames)
                         if pa and not pa.startswith("<")}:
                outside_inclusive[name] += n
        seen = set()
        for f in frames:
            func, path = _frame_parts(f)
            if "/authmigrate/" in path and (func, path) not in seen:
                seen.add((func, path))
                own_inclusive[f"{func} ({_short(path)})"] += n

    def pct(counter: Counter, k: int | None = None) -> list[dict]:
        return [{"name": name, "samples": n, "percent": round(100 * n / total, 1)}
                for name, n in counter.most_common(k)] if total else []

    return {
        "samples": total,
        "by_phase": pct(by_phase),
        "by_category": pct(by_category),
        "by_phase_category": {ph: pct(c, 5) for ph, c in by_phase_category.items()},
        "top_leaf_functions": pct(leaves, top),
        "top_own_functions_inclusive": pct(own_inclusive, top),
        # what the time outside the task bodies is spent in (frames that are not on every stack)
        "outside_tasks_inclusive": pct(Counter({k: v for k, v in outside_inclusive.items()
                                                if v < 0.9 * by_phase[OUTSIDE]}), 25),
    }


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        (ROOT / ".bench").mkdir(exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="work-", dir=ROOT / ".bench"))
        self.dbs = Databases(uuid.uuid4().hex[:6])
        self.mongo = None
        self.results: dict = {}

    # -- helpers ---------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def repeat(self, name: str, once) -> dict:
        """Run ``once(i)`` R times (R = --runs, else 3 if the first run took under a minute, else 1);
        keep every run and the median run by wall time."""
        runs = [once(0)]
        wanted = self.args.runs or (3 if runs[0].get("wall_seconds", ONE_MINUTE) < ONE_MINUTE else 1)
        if runs[0].get("error"):
            wanted = 1
        for i in range(1, wanted):
            runs.append(once(i))
        ok = [r for r in runs if not r.get("error")]
        median = None
        if ok:
            walls = sorted(ok, key=lambda r: r["wall_seconds"])
            median = walls[(len(walls) - 1) // 2]  # the middle run (the faster middle one of an even count)
        self.log(f"{name}: " + ", ".join(f"{r['wall_seconds']:.1f}s" if not r.get("error") else "error" for r in runs))
        return {"runs": runs, "median": median, "repeats": len(runs)}

    # -- setup -----------------------------------------------------------------------------
    def start_mongo(self) -> None:
        from tools.mongo_server import MongoServer, free_port
        from tools.seed_mongo import seed

        folder = Path(self.args.source).resolve() if self.args.source else self.work / "mongo"
        marker = folder / "seeded.json"
        self.mongo = MongoServer(folder, free_port()).start()
        seeded = json.loads(marker.read_text()) if marker.exists() else {}
        if seeded.get("users") == self.args.users:
            self.results.update(seed_seconds=seeded["seconds"], documents=seeded["counts"],
                                documents_total=sum(seeded["counts"].values()), source_reused=str(folder))
            self.log(f"nx-27017 on port {self.mongo.port}: reusing {folder}, seeded with {self.args.users:,} users")
            return
        marker.unlink(missing_ok=True)
        self.log(f"nx-27017 on port {self.mongo.port}; seeding {self.args.users:,} users ...")
        t0 = time.monotonic()
        counts = seed(self.mongo.uri, MONGO_DB, self.args.users)
        self.results["seed_seconds"] = round(time.monotonic() - t0, 1)
        self.results["documents"] = counts
        self.results["documents_total"] = sum(counts.values())
        self.log(f"seeded {counts} in {self.results['seed_seconds']}s")
        if self.args.source:
            marker.write_text(json.dumps({"users": self.args.users, "seconds": self.results["seed_seconds"],
                                          "counts": counts}))

    def probe_source(self) -> None:
        """How fast nx-27017 serves the users collection: raw BSON, plain scan vs the export's query
        (projection on the mapped fields, sorted by _id, batches of the DAG's default 5,000). Not a
        system of its own: it shows what bounds the export."""
        import pymongo
        from bson.codec_options import CodecOptions
        from bson.raw_bson import RawBSONDocument

        sys.path.insert(0, str(ROOT / "plugins"))
        from authmigrate.registry import COLLECTIONS as SPECS

        projection = {f: 1 for f in SPECS["users"].projection}
        probes = {"plain scan (batch 10,000)": {"batch_size": 10_000},
                  "sorted by _id (batch 5,000)": {"sort": [("_id", 1)], "batch_size": 5000},
                  "projection (batch 5,000)": {"projection": projection, "batch_size": 5000},
                  "the export's query: projection + sorted by _id (batch 5,000)":
                      {"projection": projection, "sort": [("_id", 1)], "batch_size": 5000}}
        out = {}
        with pymongo.MongoClient(self.mongo.uri) as client:
            coll = client[MONGO_DB].get_collection("users", codec_options=CodecOptions(document_class=RawBSONDocument))
            for label, kwargs in probes.items():
                t0 = time.monotonic()
                n = size = 0
                for doc in coll.find({}, **kwargs):
                    n += 1
                    size += len(doc.raw)
                sec = time.monotonic() - t0
                out[label] = {"documents": n, "seconds": round(sec, 2), "docs_per_second": round(n / sec),
                              "mib": round(size / MIB, 1)}
                self.log(f"source probe, users, {label}: {n / sec:,.0f} docs/s")
        self.results["source_probe"] = out

    def dump_source(self) -> Path:
        """The seeded collections as mongodump writes them: raw documents, concatenated, in
        ``<work>/dump/<collection>.bson``, with a ``.metadata.json`` beside each (not timed)."""
        import pymongo
        from bson.codec_options import CodecOptions
        from bson.raw_bson import RawBSONDocument

        dump = self.work / "dump"
        dump.mkdir(exist_ok=True)
        t0 = time.monotonic()
        with pymongo.MongoClient(self.mongo.uri) as client:
            db = client[MONGO_DB]
            for name in COLLECTIONS:
                coll = db.get_collection(name, codec_options=CodecOptions(document_class=RawBSONDocument))
                with open(dump / f"{name}.bson", "wb", buffering=1 << 20) as fh:
                    for doc in coll.find({}, batch_size=10_000):
                        fh.write(doc.raw)
                (dump / f"{name}.metadata.json").write_text(json.dumps(
                    {"indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}], "collectionName": name}))
        size = sum(p.stat().st_size for p in dump.glob("*.bson"))
        self.results["dump"] = {"seconds": round(time.monotonic() - t0, 1), "bson_bytes": size}
        self.log(f"dumped the source to {dump}: {size / MIB:,.0f} MiB of .bson in {time.monotonic() - t0:.1f}s")
        return dump

    def airflow_db(self) -> None:
        airflow = Path(sys.executable).with_name("airflow")
        env = airflow_env(self.work, self.mongo.port, None, None)
        t0 = time.monotonic()
        subprocess.run([str(airflow), "db", "migrate"], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log(f"airflow db migrate: {time.monotonic() - t0:.1f}s (not timed)")

    # -- systems ---------------------------------------------------------------------------
    def run_floor(self, i: int, dump: Path | None = None) -> dict:
        """The floor from the live source, or (``dump``) from its .bson files."""
        label = "floor" if dump is None else "floor-files"
        db = self.dbs.create(label.replace("-", ""), i)
        out = self.work / f"{label}-{i}.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        source = ["_floor", "--mongo", self.mongo.uri] if dump is None else ["_floor_files", "--dump", str(dump)]
        m = run_measured([sys.executable, "-m", "tools.bench", *source, "--pg", self.dbs.uri(db), "--out", str(out)],
                         env, self.work / f"{label}-{i}.log", self.args.timeout)
        if m["returncode"] != 0:
            return {**m, "error": f"{label} failed ({m['returncode']}):\n{_tail(m['log'])}"}
        detail = json.loads(out.read_text())
        return {**m, **detail, "database_bytes": self.dbs.size(db),
                "docs_per_second": round(detail["documents_total"] / m["wall_seconds"], 1)}

    def run_ours(self, i: int, profile: bool = False, dump: Path | None = None, workers: int | None = None) -> dict:
        """Our DAG as `make migrate` runs it (``tools.migrate``: LocalExecutor, ``workers`` tasks at
        once, default the machine's cores), from the live source or (``dump``) from its dump files."""
        label = ("ours" if dump is None else "ours_files") + (f"_{workers}w" if workers else "")
        db = self.dbs.create(label if not profile else f"{label}_profile", i)
        reports = self.work / ("reports-profile" if profile else f"reports-{label}-{i}")
        env = airflow_env(self.work, self.mongo.port, db, reports)
        env["AUTHMIGRATE_PARALLELISM"] = str(workers or max(1, len(os.sched_getaffinity(0))))
        if workers:  # one worker's share of the machine: the users transform's own processes too
            env["AUTHMIGRATE_TRANSFORM_WORKERS"] = str(workers)
        conf = dict(DAG_CONF)
        if dump is not None:
            env["AUTHMIGRATE_SOURCE_ROOTS"] = str(dump)
            conf.update(source="files", source_path=str(dump))
        cmd = [sys.executable, "-m", "tools.migrate", "--executor", "local", "--conf", json.dumps(conf)]
        if profile:
            pyspy = Path(sys.executable).with_name("py-spy")
            raw = self.out / "profile-ours.txt"
            cmd = [str(pyspy), "record", "--idle", "--threads", "--subprocesses", "--rate", "25", "--full-filenames",
                   "--format", "raw",
                   "-o", str(raw), "--", *cmd]
        m = run_measured(cmd, env, self.work / (f"{label}-{i}.log" if not profile else f"{label}-profile.log"),
                         self.args.timeout)
        if m["returncode"] != 0:
            return {**m, "error": f"tools.migrate failed ({m['returncode']}):\n{_tail(m['log'])}"}
        try:
            report = parse_report(reports)
        except Exception as exc:  # noqa: BLE001
            return {**m, "error": f"{exc}\n{_tail(m['log'])}"}
        if not report["passed"]:
            return {**m, "error": f"the DAG's validation did not pass: {report['report']}"}
        documents = sum(c["source"] for c in report["collections"].values())
        rows = sum(report["tables"].values())
        tasks = report["tasks"]
        task_sum = sum(tasks.values())
        loads = sum(v for k, v in tasks.items() if k.endswith(".load"))
        timeline = task_spans(Path(env["AIRFLOW_HOME"]) / "airflow.db", m["log"], m["started_epoch"],
                              m["wall_seconds"])
        validate_span = timeline.get("tasks", {}).get("validate", tasks.get("validate", 0.0))
        # the content checks of each collection's verify task (the report's <source>.verify):
        # validation too, counted in full though they overlap other tasks
        verify = round(sum(v for k, v in tasks.items() if k.endswith(".verify")), 2)
        return {**m, **report, "documents_total": documents, "rows_total": rows,
                "database_bytes": self.dbs.size(db),
                "docs_per_second": round(documents / m["wall_seconds"], 1),
                "rows_per_second": round(rows / m["wall_seconds"], 1),
                "rows_per_second_load_tasks": round(rows / loads, 1) if loads else None,
                "task_seconds_total": round(task_sum, 2),
                "outside_tasks_seconds": round(m["wall_seconds"] - task_sum, 2),
                "timeline": timeline,
                "task_peak_rss_bytes": task_peaks(timeline, m["memory_samples"]),
                "validate_span_seconds": validate_span,
                "verify_seconds": verify,
                # the whole validate task as Airflow ran it (checks + report files), not only its
                # checks, plus the verify tasks' content checks
                "validate_share_of_wall": round((validate_span + verify) / m["wall_seconds"], 4)}

    def run_naive(self, i: int) -> dict:
        db = self.dbs.create("naive", i)
        out = self.work / f"naive-{i}.json"
        env = airflow_env(self.work, self.mongo.port, db, None)
        env["PYTHONPATH"] = str(ROOT)
        m = run_measured([sys.executable, "-m", "tools.bench", "_naive", "--mongo", self.mongo.uri,
                          "--rows", str(NAIVE_ROWS), "--out", str(out)], env, self.work / f"naive-{i}.log",
                         self.args.timeout)
        if m["returncode"] != 0:
            return {**m, "error": f"naive failed ({m['returncode']}):\n{_tail(m['log'])}"}
        detail = json.loads(out.read_text())
        # the figure is the insert itself, not the process (imports, reading the sample)
        return {**m, **detail, "process_wall_seconds": m["wall_seconds"], "wall_seconds": detail["seconds"]}

    def run_dlt(self, i: int, python: Path) -> dict:
        db = self.dbs.create("dlt", i)
        out = self.work / f"dlt-{i}.json"
        work = self.work / f"dlt-{i}"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        m = run_measured([str(python), str(ROOT / "tools" / "bench_dlt.py"), "--mongo", self.mongo.uri,
                          "--db", MONGO_DB, "--pg", self.dbs.uri(db), "--work", str(work), "--out", str(out)],
                         env, self.work / f"dlt-{i}.log", self.args.timeout)
        shutil.rmtree(work, ignore_errors=True)
        if m["returncode"] != 0:
            return {**m, "error": f"dlt failed ({m['returncode']}):\n{_tail(m['log'])}"}
        detail = json.loads(out.read_text())
        return {**m, **detail, "database_bytes": self.dbs.size(db),
                "docs_per_second": round(detail["documents_total"] / m["wall_seconds"], 1),
                "rows_per_second": round(detail["rows_total"] / m["wall_seconds"], 1)}

    def run_parallel(self, parallelism: int) -> dict:
        """Our DAG under a real Airflow (LocalExecutor, metadata DB on the local PostgreSQL, the
        stack of `make airflow`), the users collection in ``--parallel-chunks`` export chunks, at
        most ``parallelism`` of them at once (AUTHMIGRATE_EXPORT_PARALLELISM). Returns the run's
        wall time and the users export phase: first chunk start to last chunk end."""
        from tools.airflow_stack import AirflowStack
        from tools.mongo_server import free_port

        db = self.dbs.create("parallel", parallelism)
        meta = f"authmigrate_bench_{self.dbs.tag}_meta_{parallelism}"
        chunk = -(-self.args.users // self.args.parallel_chunks)
        env = airflow_env(self.work, self.mongo.port, db, self.work / f"reports-parallel-{parallelism}")
        keep = ("AIRFLOW_CONN_", "AUTHMIGRATE_")
        stack = AirflowStack(self.work / f"airflow-stack-{parallelism}", port=free_port(), db_name=meta,
                             pg_admin=PG_ADMIN, extra_env={
                                 **{k: v for k, v in env.items() if k.startswith(keep)},
                                 "AUTHMIGRATE_EXPORT_PARALLELISM": str(parallelism)})
        try:
            stack.start(timeout=240)
            stack.wait_for_dag()
            token = stack.token()
            status, body = stack.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False}, token=token)
            assert status == 200, (status, body)
            conf = {**DAG_CONF, "chunk_size": chunk}
            status, run = stack.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                                        {"logical_date": None, "conf": conf}, token=token)
            assert status in (200, 201), (status, run)
            run_id = run["dag_run_id"]
            deadline = time.monotonic() + self.args.timeout
            while run.get("state") not in ("success", "failed") and time.monotonic() < deadline:
                time.sleep(2)
                status, body = stack.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", token=token)
                if status == 401:  # tokens expire; a long run outlives one
                    token = stack.token()
                elif status == 200:
                    run = body
            status, tis = stack.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=500",
                                        token=token)
        except Exception as exc:  # noqa: BLE001 - the other parts of the bench still count
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            stack.stop()
            stack.drop_database()

        def ts(value: str) -> float:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

        exports = [t for t in tis["task_instances"] if t["task_id"] == "users.export" and t.get("end_date")]
        if run["state"] != "success" or not exports:
            return {"error": f"run {run_id} ended {run['state']}", "task_instances": tis}
        phase = max(ts(t["end_date"]) for t in exports) - min(ts(t["start_date"]) for t in exports)
        return {"parallelism": parallelism, "chunk_size": chunk, "chunks": len(exports),
                "wall_seconds": round(ts(run["end_date"]) - ts(run["start_date"]), 2),
                "users_export_phase_seconds": round(phase, 2),
                "users_export_chunk_seconds": [round(t["duration"], 2) for t in exports],
                "tasks": {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""):
                          t["duration"] for t in tis["task_instances"] if t.get("duration") is not None}}

    # -- the whole thing -------------------------------------------------------------------
    def run(self) -> dict:
        args = self.args
        self.results.update({"n_users": args.users, "command": " ".join(["python -m tools.bench", *sys.argv[1:]]),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(self.dbs),
                             "uptime_before": uptime()})
        systems: dict[str, dict] = {}
        self.results["systems"] = systems
        try:
            self.start_mongo()
            self.airflow_db()
            if "probe" not in args.skip:
                self.probe_source()
            if "floor" not in args.skip:
                systems["floor"] = self.repeat("floor", self.run_floor)
            if "ours" not in args.skip:
                systems["ours"] = self.repeat("ours", self.run_ours)
            if "files" not in args.skip:
                dump = self.dump_source()
                systems["floor_files"] = self.repeat("floor_files", lambda i: self.run_floor(i, dump=dump))
                systems["ours_files"] = self.repeat("ours_files", lambda i: self.run_ours(i, dump=dump))
                # scale-out: the same run with one task at a time and one users-transform process (the dump
                # does not serialize reads)
                systems["ours_files_1w"] = self.repeat("ours_files_1w", lambda i: self.run_ours(i, dump=dump, workers=1))
            if "naive" not in args.skip:
                systems["naive"] = self.repeat("naive", self.run_naive)
            if "dlt" not in args.skip:
                t0 = time.monotonic()
                python, error = ensure_dlt_venv()
                self.log(f"dlt venv: {python or error} ({time.monotonic() - t0:.1f}s)")
                if python is None:
                    systems["dlt"] = {"runs": [], "median": None, "repeats": 0, "error": error}
                else:
                    systems["dlt"] = self.repeat("dlt", lambda i: self.run_dlt(i, python))
            if "parallel" not in args.skip:
                runs = {}
                for parallelism in (1, 2):
                    self.log(f"parallel: our DAG under LocalExecutor, {args.parallel_chunks} users export chunks, "
                             f"{parallelism} at a time ...")
                    runs[parallelism] = self.run_parallel(parallelism)
                    self.log(f"parallel {parallelism}: {runs[parallelism].get('error') or runs[parallelism]}")
                ok = all(not r.get("error") for r in runs.values())
                self.results["parallel"] = {
                    "runs": runs,
                    "export_speedup_1_to_2": round(runs[1]["users_export_phase_seconds"]
                                                   / runs[2]["users_export_phase_seconds"], 2) if ok else None,
                    "wall_speedup_1_to_2": round(runs[1]["wall_seconds"] / runs[2]["wall_seconds"], 2) if ok else None}
            if args.profile:
                self.log("profile: one more run of ours under py-spy (not measured) ...")
                prof = self.run_ours(0, profile=True)
                raw = self.out / "profile-ours.txt"
                if prof.get("error") or not raw.exists():
                    self.results["profile"] = {"error": prof.get("error") or "py-spy wrote no profile"}
                else:
                    self.results["profile"] = {"wall_seconds_under_pyspy": prof["wall_seconds"],
                                               "tasks": prof["tasks"], **summarize_profile(raw)}
        finally:
            self.results["uptime_after"] = uptime()
            if self.mongo:
                self.mongo.stop()
            try:
                self.dbs.drop_all()
            except Exception as exc:  # noqa: BLE001
                self.log(f"could not drop every bench database: {exc}")
            if not args.keep:
                shutil.rmtree(self.work, ignore_errors=True)
        with_targets(self.results, args.peak_reference)
        self.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return self.results


def machine(dbs: Databases) -> dict:
    import importlib.metadata as md

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        pass

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    try:
        pg = dbs.server_version()
    except Exception:  # noqa: BLE001
        pg = None
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(mem / GIB, 1),
            "kernel": platform.release(), "python": platform.python_version(), "postgresql": pg,
            "airflow": version("apache-airflow"), "nx_27017": version("nx-27017"), "pymongo": version("pymongo"),
            "psycopg": version("psycopg"), "pandas": version("pandas"), "pyarrow": version("pyarrow")}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_reference(path: str | None) -> dict | None:
    """Ours' median peak RSS of any one process from an earlier bench.json (``--peak-reference``),
    e.g. at N = 100,000 (a bench.json of before per-process peaks gives the tree's sum)."""
    if not path:
        return None
    earlier = json.loads(Path(path).read_text())
    median = ((earlier.get("systems") or {}).get("ours") or {}).get("median")
    if not median:
        raise SystemExit(f"{path}: no measured run of ours to compare peaks with")
    return {"path": str(path), "n_users": earlier["n_users"],
            "peak_process_rss_bytes": median.get("peak_process_rss_bytes", median["peak_rss_bytes"])}


def with_targets(results: dict, reference_path: str | None) -> None:
    """Set ``results``' ratios and targets (and its peak reference, when given)."""
    reference = peak_reference(reference_path)
    if reference:
        results["peak_reference"] = reference
    results["ratios"], results["targets"] = ratios_and_targets(results["systems"], reference)


def write_report(out: Path, results: dict, payload: dict) -> None:
    """bench.json (``payload``), bench.md and bench.png into ``out``; print the Markdown."""
    (out / "bench.json").write_text(json.dumps(payload, indent=2))
    (out / "bench.md").write_text(to_markdown(results) + "\n")
    to_png(results, out / "bench.png")
    print((out / "bench.md").read_text())


def ratios_and_targets(systems: dict, reference: dict | None = None) -> tuple[dict, list[dict]]:
    med = {name: (s or {}).get("median") for name, s in systems.items()}
    ours, floor, dlt, naive = (med.get(k) for k in ("ours", "floor", "dlt", "naive"))
    ratios: dict = {}
    targets: list[dict] = []

    def target(name: str, wanted: str, value, ok) -> None:
        targets.append({"target": name, "wanted": wanted, "measured": value,
                        "met": None if ok is None else bool(ok)})

    if ours and floor:
        ratios["ours_over_floor_wall"] = round(ours["wall_seconds"] / floor["wall_seconds"], 2)
        ratios["ours_tasks_over_floor_wall"] = round(ours["task_seconds_total"] / floor["wall_seconds"], 2)
    if ours and dlt:
        ratios["dlt_over_ours_wall"] = round(dlt["wall_seconds"] / ours["wall_seconds"], 2)
        ratios["ours_over_dlt_wall"] = round(ours["wall_seconds"] / dlt["wall_seconds"], 2)
    if ours and naive:
        ratios["ours_rows_per_s_over_naive"] = round(ours["rows_per_second"] / naive["rows_per_second"], 1)
        if ours.get("rows_per_second_load_tasks"):
            ratios["ours_load_rows_per_s_over_naive"] = round(ours["rows_per_second_load_tasks"]
                                                              / naive["rows_per_second"], 1)
    r = ratios.get("ours_over_floor_wall")
    target("ours ≤ 1.5× the floor (wall)", "≤ 1.5", r, None if r is None else r <= 1.5)
    r = ratios.get("dlt_over_ours_wall")
    target("ours ≥ 3× faster than dlt (wall)", "dlt/ours ≥ 3", r, None if r is None else r >= 3)
    ours_files, floor_files = med.get("ours_files"), med.get("floor_files")
    if ours_files and floor_files:
        ratios["ours_files_over_floor_files_wall"] = round(ours_files["wall_seconds"] / floor_files["wall_seconds"], 2)
    r = ratios.get("ours_files_over_floor_files_wall")
    target("ours from a .bson dump ≤ 2× the file floor (wall)", "≤ 2", r, None if r is None else r <= 2)
    r = ratios.get("ours_rows_per_s_over_naive")
    target("ours ≥ 20× naive rows/s (end to end)", "≥ 20", r, None if r is None else r >= 20)
    for name, what in (("ours", "ours"), ("ours_files", "ours from a .bson dump")):
        run = med.get(name)
        if not run and name == "ours_files":
            continue
        # a run's processes: tools.migrate, airflow, the API server, a process per task side by side
        one = run.get("peak_process_rss_bytes", run["peak_rss_bytes"]) / GIB if run else None
        target(f"peak RSS of any one process of {what} ≤ 1 GiB", "≤ 1.0 GiB", None if one is None else round(one, 3),
               None if one is None else one <= 1.0)
        total = run["peak_rss_bytes"] / GIB if run else None
        target(f"peak RSS summed over every process of {what} ≤ 2 GiB", "≤ 2.0 GiB",
               None if total is None else round(total, 3), None if total is None else total <= 2.0)
    one_worker = med.get("ours_files_1w")
    if ours_files and one_worker:
        ratios["ours_files_2w_over_1w_wall"] = round(ours_files["wall_seconds"] / one_worker["wall_seconds"], 2)
    r = ratios.get("ours_files_2w_over_1w_wall")
    target("scale-out: from the dump, all cores' wall ≤ 0.65× one worker's", "≤ 0.65", r,
           None if r is None else r <= 0.65)
    if reference and ours:
        one = ours.get("peak_process_rss_bytes", ours["peak_rss_bytes"])
        grow = round(one / reference["peak_process_rss_bytes"], 2)
        ratios["peak_over_reference_peak"] = grow
        target(f"peak RSS of any one process ≤ 1.3× its peak at N = {reference['n_users']:,} "
               f"({reference['peak_process_rss_bytes'] / MIB:,.0f} MiB)", "≤ 1.3", grow, grow <= 1.3)
    share = ours["validate_share_of_wall"] if ours else None
    target("validation ≤ 10 % of total", "≤ 10 %", None if share is None else f"{100 * share:.1f} %",
           None if share is None else share <= 0.10)
    return ratios, targets


# --------------------------------------------------------------------------------------------
# output: JSON, Markdown, PNG
# --------------------------------------------------------------------------------------------

def _downsample(samples: list, limit: int = 1500) -> list:
    samples = [tuple(s) for s in samples]  # JSON made them lists, which a set cannot hold
    if len(samples) <= limit:
        return samples
    step = len(samples) / limit
    picked = [samples[int(i * step)] for i in range(limit)]
    peak = max(samples, key=lambda s: s[1])
    return sorted(set(picked + [peak, samples[-1]]))


def to_json(results: dict) -> dict:
    out = json.loads(json.dumps(results, default=str))
    for s in out.get("systems", {}).values():
        for run in s.get("runs", []):
            run["memory_samples"] = _downsample(run.get("memory_samples", []))
    return out


def fmt_int(x) -> str:
    return "—" if x is None else f"{x:,.0f}"


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Benchmark: {r['n_users']:,} users ({r.get('documents_total', 0):,} documents)", "",
             f"`{r['command']}` — {r['started']} → {r.get('finished', '')}", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}, "
             f"Python {m['python']}, PostgreSQL {m['postgresql']}, Airflow {m['airflow']}, "
             f"source nx-27017 {m['nx_27017']} (SQLite-backed MongoDB wire-protocol server).", "",
             f"Load before: `{r.get('uptime_before', '')}`  ", f"Load after: `{r.get('uptime_after', '')}`", "",
             f"Seeding took {r.get('seed_seconds', '—')} s: {r.get('documents', {})}.", "",
             "| system | what | wall s | docs/s | rows written | rows/s | peak RSS MiB (sum) | "
             "peak RSS MiB (one process) | runs (wall s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    what = {"ours": "`python -m tools.migrate` as `make migrate` runs it: LocalExecutor, one task per core "
                    "(export → transform → load → validate, verify on)",
            "floor": "pymongo RawBSON → psycopg 3 binary COPY, raw BSON in one bytea column",
            "naive": f"`PostgresHook.insert_rows` of {NAIVE_ROWS:,} user rows (scalar fields as text)",
            "dlt": "dlt 1.31.0 defaults (arrays → child tables, insert_values)",
            "ours_files": "the same DAG with `source=files` from the mongodump .bson folder",
            "ours_files_1w": "the same as ours_files, one task at a time and one users-transform process "
                             "(AUTHMIGRATE_PARALLELISM=1, AUTHMIGRATE_TRANSFORM_WORKERS=1)",
            "floor_files": "the .bson files split into raw documents (bson C extension) → binary COPY into bytea"}
    for name in ("ours", "floor", "ours_files", "ours_files_1w", "floor_files", "dlt", "naive"):
        s = r["systems"].get(name)
        if not s:
            continue
        med = s.get("median")
        runs = ", ".join(f"{x['wall_seconds']:.1f}" if not x.get("error") else "failed" for x in s.get("runs", []))
        if not med:
            err = (s.get("error") or next((x.get("error") for x in s.get("runs", []) if x.get("error")), "")) or ""
            lines.append(f"| {name} | {what[name]} | — | — | — | — | — | — | "
                         f"error: {err.splitlines()[0][:200] if err else '?'} |")
            continue
        docs = med.get("documents_total")
        rows = med.get("rows_total", med.get("rows", docs if name.startswith("floor") else None))
        rps = med.get("rows_per_second") or (round(rows / med["wall_seconds"], 1) if rows else None)
        peak = med.get("peak_rss_bytes", 0) / MIB
        one = med.get("peak_process_rss_bytes", med.get("peak_rss_bytes", 0)) / MIB
        lines.append(f"| {name} | {what[name]} | {med['wall_seconds']:.2f} | "
                     f"{fmt_int(med.get('docs_per_second'))} | {fmt_int(rows)} | {fmt_int(rps)} | "
                     f"{peak:,.0f} | {one:,.0f} | {runs} |")
    lines += ["", "Wall time is the measured subprocess from start to exit (for ours: Airflow start-up, DAG parse "
              "and the run; for dlt: interpreter and `import dlt` included). Naive: the `insert_rows` call only. "
              "Peak RSS: summed RSS of the process tree (sum) and the highest of any one process in it, sampled every 0.2 s (the MongoDB and PostgreSQL servers "
              "are not included).", ""]
    if r.get("ratios"):
        lines += ["| ratio | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in r["ratios"].items()] + [""]
    if r.get("targets"):
        lines += [f"Issue targets (stated for N = {TARGETS_N:,}; measured here at N = {r['n_users']:,}):", "",
                  "| target | wanted | measured | met |", "|---|---|---:|---|"]
        for t in r["targets"]:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {t['wanted']} | {t['measured'] if t['measured'] is not None else '—'} | {met} |")
        lines.append("")
    ours = (r["systems"].get("ours") or {}).get("median")
    if ours:
        wall = ours["wall_seconds"]
        spans = (ours.get("timeline") or {}).get("tasks", {})
        lines += ["Where the wall time of ours goes (median run). *body*: the task function's own time, from the "
                  "run's report.md (validate's excludes writing the report files); *span*: the task instance's start "
                  "to end in the metadata DB (body + its process start-up, XCom, state updates; a mapped task's "
                  "instances added up; tasks side by side overlap, so spans add up to more than the wall):", "",
                  "| phase | body s | span s | span share of wall | peak RSS MiB during the span |",
                  "|---|---:|---:|---:|---:|"]
        peaks = ours.get("task_peak_rss_bytes") or {}
        tl = ours.get("timeline") or {}
        if tl:
            lines.append(f"| start-up: interpreter, imports, DAG parse + serialisation, dag run | — | "
                         f"{tl['startup']:.2f} | {100 * tl['startup'] / wall:.1f} % | — |")
        names = sorted(set(spans) | set(ours["tasks"]), key=lambda t: -(spans.get(t, ours["tasks"].get(t, 0))))
        for t in names:
            body, span = ours["tasks"].get(t), spans.get(t)
            lines.append(f"| {t} | {'—' if body is None else f'{body:.2f}'} | {'—' if span is None else f'{span:.2f}'} | "
                         f"{'—' if span is None else f'{100 * span / wall:.1f} %'} | "
                         f"{f'{peaks[t] / MIB:,.0f}' if t in peaks else '—'} |")
        if tl:
            lines.append(f"| no task running (scheduling) | — | {tl['between_tasks']:.2f} | {100 * tl['between_tasks'] / wall:.1f} % | — |")
            lines.append(f"| shut-down after the last task | — | {tl['shutdown']:.2f} | {100 * tl['shutdown'] / wall:.1f} % | — |")
        lines.append(f"| **total** | {ours['task_seconds_total']:.2f} | {wall:.2f} | 100 % | "
                     f"{ours['peak_rss_bytes'] / MIB:,.0f} |")
        lines += ["", "Rows per table (ours): " + ", ".join(f"{k} {v:,}" for k, v in ours["tables"].items()), ""]
    if r.get("source_probe"):
        lines += ["Source probe — nx-27017 serving the users collection as raw BSON, no PostgreSQL involved:", "",
                  "| query | docs/s | seconds | MiB |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['docs_per_second']:,} | {v['seconds']} | {v['mib']} |" for k, v in r["source_probe"].items()]
        lines.append("")
    naive = (r["systems"].get("naive") or {}).get("median")
    if naive:
        lines += [f"Naive: {naive['call']}; driver {naive['driver']}. For reference, the same call forced down "
                  f"its row-by-row branch: {naive['rowwise_rows_per_second']:,.0f} rows/s.", ""]
    dlt = (r["systems"].get("dlt") or {}).get("median")
    if dlt:
        lines += [f"dlt phases: {dlt['phases']} (import {dlt['seconds_import']} s); tables: {dlt['tables']}", ""]
    par = r.get("parallel")
    if par:
        lines += ["Chunked export under a real Airflow (LocalExecutor, metadata DB on the local PostgreSQL): the "
                  "users collection in export chunks, 1 or 2 at a time (`AUTHMIGRATE_EXPORT_PARALLELISM`):", "",
                  "| chunks at a time | chunk size | chunks | users export phase s | chunk s | run wall s |",
                  "|---:|---:|---:|---:|---|---:|"]
        for p_, run in par["runs"].items():
            if run.get("error"):
                lines.append(f"| {p_} | — | — | error: {str(run['error'])[:200]} | | |")
            else:
                lines.append(f"| {p_} | {run['chunk_size']:,} | {run['chunks']} | {run['users_export_phase_seconds']} "
                             f"| {', '.join(map(str, run['users_export_chunk_seconds']))} | {run['wall_seconds']} |")
        lines += ["", f"Speed-up from 1 to 2 chunks at a time: users export phase {par['export_speedup_1_to_2']}×, "
                      f"whole run {par['wall_speedup_1_to_2']}×.", ""]
    prof = r.get("profile")
    if prof and not prof.get("error"):
        lines += [f"Profile of ours (py-spy, wall clock incl. waits, {prof['samples']} samples; run took "
                  f"{prof['wall_seconds_under_pyspy']:.1f} s under the profiler):", "",
                  "| phase | % |", "|---|---:|"]
        lines += [f"| {x['name']} | {x['percent']} |" for x in prof["by_phase"]]
        lines += ["", "| what the samples are doing | % |", "|---|---:|"]
        lines += [f"| {x['name']} | {x['percent']} |" for x in prof["by_category"]]
        lines += ["", "| hottest leaf functions | % |", "|---|---:|"]
        lines += [f"| `{x['name']}` | {x['percent']} |" for x in prof["top_leaf_functions"][:12]]
        lines += ["", "| own functions (inclusive) | % |", "|---|---:|"]
        lines += [f"| `{x['name']}` | {x['percent']} |" for x in prof["top_own_functions_inclusive"][:12]]
        lines += ["", "| outside the task bodies: frames (inclusive) | % |", "|---|---:|"]
        lines += [f"| `{x['name']}` | {x['percent']} |" for x in prof["outside_tasks_inclusive"][:15]]
        lines.append("")
    elif prof:
        lines += [f"Profile: failed — {prof['error'].splitlines()[0]}", ""]
    return "\n".join(lines)


def to_png(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.2, 1.3, 0.8]})
    ours = (r["systems"].get("ours") or {}).get("median")
    if ours:
        tl = ours.get("timeline") or {}
        spans = tl.get("tasks") or dict(ours["tasks"])
        rows = [("start-up (imports, DAG parse)", 0.0, tl.get("startup", 0.0))]
        rows += [(t, min(ours["tasks"].get(t, span), span), span) for t, span in spans.items()]
        rows += [("shut-down", 0.0, tl.get("shutdown", 0.0))]
        labels = [x[0] for x in rows]
        bodies = [x[1] for x in rows]
        overhead = [max(x[2] - x[1], 0.0) for x in rows]
        a.barh(labels, bodies, color="#4C78A8", label="task body (report.md)")
        a.barh(labels, overhead, left=bodies, color="#BAB0AC",
               label="rest of the span: Airflow (validate: + report files)")
        a.invert_yaxis()
        a.tick_params(axis="y", labelsize=8)
        a.set_xlabel("seconds")
        a.legend(loc="lower right", fontsize=8)
        a.set_title(f"ours: time per phase, in run order (wall {ours['wall_seconds']:.1f} s)")
    colors = {"ours": "#4C78A8", "floor": "#54A24B", "dlt": "#E45756", "naive": "#B279A2",
              "ours_files": "#72B7B2", "floor_files": "#EECA3B"}
    for name in ("ours", "floor", "ours_files", "floor_files", "dlt"):
        med = (r["systems"].get(name) or {}).get("median")
        if med and med.get("memory_samples"):
            xs = [s[0] for s in med["memory_samples"]]
            ys = [s[1] / MIB for s in med["memory_samples"]]
            b.plot(xs, ys, label=f"{name} (peak {max(ys):,.0f} MiB)", color=colors[name])
    b.axhline(1024, color="#999", linestyle="--", linewidth=0.8)
    b.text(0, 1024, " 1 GiB target", va="bottom", fontsize=8, color="#666")
    b.set_xlabel("seconds since start")
    b.set_ylabel("RSS of the process tree, MiB")
    b.set_title("memory over time")
    b.legend(loc="upper right", fontsize=8)
    names, walls = [], []
    for name in ("floor", "ours", "floor_files", "ours_files", "dlt"):
        med = (r["systems"].get(name) or {}).get("median")
        if med:
            names.append(name)
            walls.append(med["wall_seconds"])
    c.bar(names, walls, color=[colors[n] for n in names])
    for x, w in enumerate(walls):
        c.text(x, w, f"{w:.1f}s", ha="center", va="bottom", fontsize=9)
    c.set_ylabel("wall seconds")
    c.set_title(f"{r.get('documents_total', 0):,} documents")
    fig.suptitle(f"authmigrate benchmark, N = {r['n_users']:,} users")
    fig.tight_layout()
    fig.savefig(path, dpi=96)
    plt.close(fig)


def report_main(argv: list[str]) -> int:
    """``python -m tools.bench report DIR --peak-reference FILE``: recompute the targets of an
    earlier bench (DIR/bench.json), e.g. once the N = 100,000 reference exists, and rewrite
    DIR/bench.{json,md,png}. Nothing is measured again."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench report")
    parser.add_argument("folder")
    parser.add_argument("--peak-reference", default=None)
    args = parser.parse_args(argv)
    out = Path(args.folder)
    results = json.loads((out / "bench.json").read_text())
    with_targets(results, args.peak_reference)
    write_report(out, results, results)  # its memory samples are downsampled already
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_floor":
        return floor_main(argv[1:])
    if argv and argv[0] == "_floor_files":
        return floor_files_main(argv[1:])
    if argv and argv[0] == "_naive":
        return naive_main(argv[1:])
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000, help="users to seed (apps N/20, roles N/10)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per system (default: 3 when its first run took under a minute, else 1)")
    parser.add_argument("--out", default="bench-results", help="folder for bench.json / bench.md / bench.png")
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: floor,ours,files,naive,dlt,probe,parallel")
    parser.add_argument("--parallel-chunks", type=int, default=4,
                        help="users export chunks in the LocalExecutor runs (parallel part)")
    parser.add_argument("--profile", action="store_true", help="one extra run of ours under py-spy")
    parser.add_argument("--timeout", type=float, default=3600, help="kill a measured run after this many seconds")
    parser.add_argument("--source", default=None,
                        help="nx-27017 data folder kept between benches: seeded once per --users, then reused "
                             "(the seeding takes ~3 min at 1,000,000 users)")
    parser.add_argument("--peak-reference", default=None,
                        help="a bench.json measured at a smaller N (e.g. 100,000): adds the target "
                             "'peak RSS of any one process ≤ 1.3× its peak there'")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (.bench/work-*): logs, data")
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.users < 20:
        parser.error("--users must be at least 20")
    bench = Bench(args)
    results = bench.run()
    out = bench.out
    write_report(out, results, to_json(results))
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    failed = [n for n, s in results["systems"].items() if n != "dlt" and not s.get("median")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
