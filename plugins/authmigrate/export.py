"""Export: stream a MongoDB collection, in batches, into run-scoped Parquet.

Documents are kept as raw BSON bytes (no decoding in the export, no type loss: Decimal128,
dates and nested documents reach the transform exactly as stored). Reads are sorted by
``_id``, so a retry writes the same file; the file is replaced atomically, never appended to.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from authmigrate.config import ConfigError, RunConfig, server_projection
from authmigrate.progress import Progress
from authmigrate.registry import COLLECTIONS
from authmigrate.staging import collection_dir, private_file

log = logging.getLogger("authmigrate")
SCHEMA = pa.schema([("bson", pa.binary())])
UNMAPPED_SAMPLE = 1000


def source_collection(cfg: RunConfig, collection: str):
    """The pymongo collection for a logical name, refusing a database or collection that is not there."""
    from airflow.providers.mongo.hooks.mongo import MongoHook

    hook = MongoHook(mongo_conn_id=cfg.mongo_conn_id)
    database = hook.connection.schema
    if not database:
        raise ConfigError(
            f"Mongo connection {cfg.mongo_conn_id!r} names no database: set its path, e.g. mongo://host:27017/idp"
        )
    db = hook.get_conn()[database]
    name = cfg.source_collections[collection]
    existing = db.list_collection_names()
    if name not in existing:
        raise ConfigError(
            f"collection {name!r} not found in MongoDB database {database!r} (it has: {sorted(existing)}). "
            f"Apps using Mongoose store lower-cased plural names (e.g. 'oauthclientapps'): "
            f"set the source_{collection} param to the real name."
        )
    return db.get_collection(name, codec_options=CodecOptions(document_class=RawBSONDocument))


def unmapped_fields(coll, projection) -> dict[str, int]:
    """Field names (never values) outside the mapping, counted over a sample of documents."""
    import bson

    seen: Counter = Counter()
    for raw in coll.find({}, limit=UNMAPPED_SAMPLE, sort=[("_id", 1)]):
        seen.update(k for k in bson.decode(raw.raw).keys() if k != "_id" and k not in projection)
    return dict(sorted(seen.items()))


def changed_since(since: dt.datetime) -> dict:
    """Documents updated after ``since``, and every document whose updatedAt is missing, null
    or not a date (those are always treated as changed). Written as an $or of simple clauses
    so that MongoDB-compatible servers without $not/$nor support answer it the same way."""
    return {"$or": [{"updatedAt": {"$gt": since}}, {"updatedAt": {"$in": [None]}}]
            + [{"updatedAt": {"$type": t}} for t in ("string", "number", "object", "bool")]}


def watermark(cfg: RunConfig, collection: str) -> dt.datetime | None:
    from authmigrate.db import connect, q

    with connect(cfg) as conn:
        try:
            row = conn.execute(q("watermark_get"), {"schema": cfg.target_schema, "collection": collection}).fetchone()
        except Exception:  # noqa: BLE001 - no bookkeeping yet (first run): read everything
            return None
    return row[0] if row else None


def _write_raw(cursor, out: Path, batch_size: int, progress: Progress) -> int:
    """Stream raw BSON documents from a cursor into a Parquet file (row group per batch)."""
    tmp = out.with_suffix(".parquet.partial")
    batches = 0
    with private_file(tmp) as fh, pq.ParquetWriter(fh, SCHEMA) as writer:
        batch: list[bytes] = []
        for doc in cursor:
            batch.append(doc.raw)
            if len(batch) >= batch_size:
                writer.write_table(pa.table({"bson": pa.array(batch, pa.binary())}, schema=SCHEMA))
                progress.advance(len(batch))
                batches += 1
                batch = []
        if batch or batches == 0:
            writer.write_table(pa.table({"bson": pa.array(batch, pa.binary())}, schema=SCHEMA))
            progress.advance(len(batch))
            batches += 1
    tmp.replace(out)
    progress.log(final=True)
    return batches


def export_collection(cfg: RunConfig, collection: str) -> dict:
    spec = COLLECTIONS[collection]
    coll = source_collection(cfg, collection)
    total = coll.estimated_document_count()
    folder = collection_dir(cfg, collection, "export")
    query, since, keys = {}, None, None
    if cfg.mode == "incremental":
        mark = watermark(cfg, collection)
        if mark is None:
            log.info("export %s: no watermark yet for schema %s, reading everything", collection, cfg.target_schema)
        else:
            since = mark - dt.timedelta(seconds=cfg.overlap_seconds)
            query = changed_since(since)
            log.info("export %s: incremental, documents updated after %s (watermark %s minus %ss overlap)",
                     collection, since.isoformat(), mark.isoformat(), cfg.overlap_seconds)
            # the key-only pass: every document's app id, to propagate deletions
            kp = Progress(f"export {collection} keys", total)
            key_cursor = coll.find({}, {spec.key_field: 1}, sort=[("_id", 1)], batch_size=max(cfg.batch_size, 10_000))
            _write_raw(key_cursor, folder / "keys.parquet", max(cfg.batch_size, 10_000), kp)
            keys = {"path": str(folder / "keys.parquet"), "documents": kp.done}
    out = folder / "documents.parquet"
    progress = Progress(f"export {collection}", total if not query else None)
    projection = {f: 1 for f in spec.projection} if server_projection() else None
    cursor = coll.find(query, projection, sort=[("_id", 1)], batch_size=cfg.batch_size)
    batches = _write_raw(cursor, out, cfg.batch_size, progress)
    unmapped = unmapped_fields(coll, set(spec.projection))
    if unmapped:
        log.info("export %s: fields outside the mapping, ignored (counts in a sample of %d): %s",
                 collection, UNMAPPED_SAMPLE, unmapped)
    return {"path": str(out), "documents": progress.done, "batches": batches, "unmapped_fields": unmapped,
            "mode": "incremental" if query else "full", "since": since.isoformat() if since else None, "keys": keys}
