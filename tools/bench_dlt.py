"""The dlt peer of the benchmark: MongoDB → PostgreSQL with dlt's defaults.

Runs inside its own virtualenv (``.bench/dlt-venv``: ``dlt[postgres]==1.31.0`` and
``pymongo==4.20.1``), never in the project's venv; ``tools/bench.py`` creates that venv and
calls this script. Standard library, dlt and pymongo only (no project import).

    .bench/dlt-venv/bin/python tools/bench_dlt.py --mongo mongodb://127.0.0.1:27017 --db idp \\
        --pg postgresql://postgres@127.0.0.1:5432/bench_dlt --work .bench/dlt-work --out dlt.json

One dlt resource per collection yields the documents as pymongo returns them (``ObjectId``
turned into ``str``, everywhere in the document); the destination is ``postgres`` with
dlt's defaults: nested documents are flattened into columns, arrays become child tables
(``users__provider_roles``, ...), values of a second type become variant columns, the
loader file format is ``insert_values``. extract, normalize and load are called one after
the other (what ``pipeline.run`` does) so that each phase is timed. Writes a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# every collection the seeder writes (tools.seed_mongo.COLLECTIONS; tests/unit/test_bench_report.py)
COLLECTIONS = ("users", "oauthClientApps", "oauthRoles", "userAppConsents", "invitations", "appSettings")


def _plain(value):
    """ObjectId → str, recursively (dlt has no ObjectId type)."""
    from bson import ObjectId

    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mongo", required=True, help="mongodb:// URI of the server")
    parser.add_argument("--db", default="idp", help="MongoDB database")
    parser.add_argument("--pg", required=True, help="postgresql:// URI of the (fresh) target database")
    parser.add_argument("--work", required=True, help="folder for dlt's pipeline state and load packages")
    parser.add_argument("--out", required=True, help="JSON summary written here")
    parser.add_argument("--batch-size", type=int, default=10_000, help="MongoDB cursor batch size")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # keep dlt's global state, telemetry and config lookups inside the work folder
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("DLT_DATA_DIR", str(work / "data"))
    os.environ.setdefault("DLT_PROJECT_DIR", str(work))
    started = time.monotonic()

    import dlt
    import pymongo
    from dlt.destinations import postgres

    imported = time.monotonic()
    client = pymongo.MongoClient(args.mongo)
    db = client[args.db]
    counts = {name: 0 for name in COLLECTIONS}

    def make_resource(name: str):
        @dlt.resource(name=name)
        def documents():
            for doc in db[name].find({}, batch_size=args.batch_size):
                counts[name] += 1
                yield _plain(doc)

        return documents

    # dlt's PostgresCredentials require a password field; with `trust` authentication the
    # server never asks for it, so a placeholder is harmless when the URI carries none.
    uri = args.pg
    if "@" in uri and ":" not in uri.split("://", 1)[1].split("@", 1)[0]:
        scheme, rest = uri.split("://", 1)
        user, host = rest.split("@", 1)
        uri = f"{scheme}://{user}:unused@{host}"
    pipeline = dlt.pipeline(
        pipeline_name="bench_mongo_to_postgres",
        pipelines_dir=str(work / "pipelines"),
        destination=postgres(credentials=uri),
        dataset_name="idp",
    )
    phases = {}
    t0 = time.monotonic()
    pipeline.extract([make_resource(name) for name in COLLECTIONS])
    phases["extract"] = time.monotonic() - t0
    t0 = time.monotonic()
    pipeline.normalize()
    phases["normalize"] = time.monotonic() - t0
    t0 = time.monotonic()
    info = pipeline.load()
    phases["load"] = time.monotonic() - t0
    client.close()
    info.raise_on_failed_jobs()

    import psycopg2  # installed by dlt[postgres]

    with psycopg2.connect(args.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'idp' AND c.relkind = 'r' ORDER BY 1"
        )
        tables = [name for name, _ in cur.fetchall()]
        rows = {}
        for name in tables:
            cur.execute(f'SELECT count(*) FROM idp."{name}"')
            rows[name] = cur.fetchone()[0]
    data_tables = {k: v for k, v in rows.items() if not k.startswith("_dlt_")}
    summary = {
        "dlt_version": dlt.__version__,
        "pymongo_version": pymongo.version,
        "documents": counts,
        "documents_total": sum(counts.values()),
        "seconds_import": round(imported - started, 3),
        "seconds_pipeline": round(sum(phases.values()), 3),
        "phases": {k: round(v, 3) for k, v in phases.items()},
        "tables": data_tables,
        "rows_total": sum(data_tables.values()),
        "loader_file_format": "insert_values (postgres default)",
    }
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
