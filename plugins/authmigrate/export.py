"""Export: stream a MongoDB collection, in batches, into run-scoped Parquet.

Documents are kept as raw BSON bytes (no decoding in the export, no type loss: Decimal128,
dates and nested documents reach the transform exactly as stored). Reads are sorted by
``_id``, so a retry writes the same file; the file is replaced atomically, never appended to.
"""
from __future__ import annotations

import datetime as dt
import logging
import queue
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from bson import ObjectId, json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from authmigrate.config import ConfigError, RunConfig, accept_while_exporting, server_projection
from authmigrate.progress import Progress
from authmigrate.registry import COLLECTIONS
from authmigrate.staging import PARQUET_OPTIONS, collection_dir, private_file

log = logging.getLogger("authmigrate")
SCHEMA = pa.schema([("bson", pa.binary())])
UNMAPPED_SAMPLE = 1000


def source_collection(cfg: RunConfig, collection: str):
    """The pymongo collection for a logical name (see :func:`resolve_source`), refusing a
    database or collection that is not there; None for an optional collection the source lacks."""
    from airflow.providers.mongo.hooks.mongo import MongoHook

    hook = MongoHook(mongo_conn_id=cfg.mongo_conn_id)
    database = hook.connection.schema
    if not database:
        raise ConfigError(
            f"Mongo connection {cfg.mongo_conn_id!r} names no database: set its path, e.g. mongo://host:27017/idp"
        )
    db = hook.get_conn()[database]
    name = resolve_source(cfg, collection, db.list_collection_names(), database)
    return None if name is None else db.get_collection(name, codec_options=CodecOptions(document_class=RawBSONDocument))


def resolve_source(cfg: RunConfig, collection: str, existing: list[str], database: str = "") -> str | None:
    """The source collection a logical name reads: its ``source_<collection>`` name when the
    source has it. An optional collection (the app may never have created it) asked for under its
    default name may instead be under its Mongoose name (``userappconsents``), or absent: None.
    Any other missing name fails, listing what the database has."""
    spec, name = COLLECTIONS[collection], cfg.source_collections[collection]
    if name in existing:
        return name
    if spec.optional and name == spec.name:
        return spec.mongoose_name if spec.mongoose_name in existing else None
    raise ConfigError(
        f"collection {name!r} not found in MongoDB database {database!r} (it has: {sorted(existing)}). "
        f"Apps using Mongoose store lower-cased plural names (e.g. 'oauthclientapps'): "
        f"set the source_{collection} param to the real name."
    )


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


def _write_columns(columns, out: Path, batch_size: int, progress: Progress, tap=None) -> int:
    """Arrow binary columns of raw BSON documents into a Parquet file (replaced atomically), in
    row groups of at most ``batch_size``; an export of nothing has one empty row group.
    ``tap``: called with each row group's column once it is written."""
    tmp = out.with_suffix(".parquet.partial")
    batches = 0
    with private_file(tmp) as fh, pq.ParquetWriter(fh, SCHEMA, **PARQUET_OPTIONS) as writer:
        for column in columns:
            for start in range(0, len(column), batch_size):
                part = column.slice(start, batch_size)
                writer.write_table(pa.table({"bson": part}, schema=SCHEMA))
                if tap is not None:
                    tap(part)
                progress.advance(len(part))
                batches += 1
        if batches == 0:
            writer.write_table(pa.table({"bson": pa.array([], pa.binary())}, schema=SCHEMA))
            batches = 1
    tmp.replace(out)
    progress.log(final=True)
    return batches


def _write_raw(cursor, out: Path, batch_size: int, progress: Progress, tap=None) -> int:
    """Stream raw BSON documents from a cursor into a Parquet file (row group per batch)."""
    def columns():
        batch: list[bytes] = []
        for doc in cursor:
            batch.append(doc.raw)
            if len(batch) >= batch_size:
                yield pa.array(batch, pa.binary())
                batch = []
        if batch:
            yield pa.array(batch, pa.binary())

    return _write_columns(columns(), out, batch_size, progress, tap)


ACCEPT_QUEUE_DOCUMENTS = 150_000  # read documents waiting for the accepting worker, at most (~60 MB of users)


class AcceptWhileReading:
    """The users transform's first step (decode, coerce, explode: ``transform_task.accept_batches``)
    done while the export reads, by a worker process of its own fed each batch as it is written.

    The read waits for the source (nx-27017 serves one request at a time, on one core), so the
    other core would be idle: the transform task then accepts only the documents after those the
    worker took (``transform_task.accepted_prefix``), with all its workers. The read never waits
    for the worker, which runs at a lower priority (``nice``): when ``ACCEPT_QUEUE_DOCUMENTS``
    read documents wait for it, it gets no more; when the read ends, it finishes what it has in
    hand and the rest is left to the transform. What it took is always a run of whole batches from
    the export's first document; its result says how many (``rows``). If it fails, the export
    goes on and the transform accepts everything (a line says so)."""

    def __init__(self, folder: Path, batch_size: int):
        from authmigrate.transform_task import start_worker

        self.folder = folder / "accepted"
        if self.folder.exists():  # a retried export's: never paired with this export
            shutil.rmtree(self.folder)
        self.folder.mkdir(mode=0o700, parents=True)
        self.result = self.folder / "result.pickle"
        spec = {"out": str(self.folder), "batch_size": batch_size, "result": str(self.result),
                "what": "transform users, accepted while exporting"}
        self.proc = start_worker(spec, "--stream", stdin=subprocess.PIPE)
        self.queue: queue.Queue = queue.Queue(maxsize=max(2, ACCEPT_QUEUE_DOCUMENTS // max(batch_size, 1)))
        self.closing, self.error = False, None
        self.fed = 0  # documents queued for the worker, from the export's first on
        self.behind = False
        self.thread = threading.Thread(target=self._feed, name="accept-while-reading", daemon=True)
        self.thread.start()

    def __call__(self, column: pa.Array) -> None:
        if self.behind or self.error is not None:
            return
        try:
            self.queue.put_nowait(column)
        except queue.Full:
            self.behind = True
            log.info("export users: the worker accepting while reading is %d documents behind after %d: the "
                     "transform task accepts the documents after the ones it takes", ACCEPT_QUEUE_DOCUMENTS,
                     self.fed)
            return
        self.fed += len(column)

    def _feed(self) -> None:
        """Write the queued batches to the worker, until the end (None); once the read has ended
        (``closing``), take what is still queued without writing it."""
        try:
            with pa.ipc.new_stream(self.proc.stdin, SCHEMA) as writer:
                while True:
                    column = self.queue.get()
                    try:
                        if column is None:
                            break
                        if not self.closing:
                            writer.write_batch(pa.record_batch([column], schema=SCHEMA))
                    finally:
                        self.queue.task_done()
        except Exception as exc:  # noqa: BLE001 - e.g. a broken pipe: the worker is gone (finish says so)
            self.error = exc
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _end(self) -> None:
        self.closing = True
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=1)
                break
            except queue.Full:
                continue

    def finish(self) -> dict | None:
        """The read has ended: end the stream (the worker finishes what it has in hand) and wait
        for the worker. Returns what the transform needs to take its result, or None."""
        import pickle
        import time

        began = time.monotonic()
        self._end()
        self.thread.join()
        code = self.proc.wait()
        if code != 0 or self.error is not None:
            log.warning("export users: the worker accepting while reading failed (exit code %s, %s; its error is "
                        "in the log above): the transform task accepts every document", code,
                        type(self.error).__name__ if self.error is not None else "no error feeding it")
            return None
        try:
            with open(self.result, "rb") as fh:
                rows = pickle.load(fh)["rows"]
        except (OSError, pickle.UnpicklingError, KeyError, EOFError) as exc:
            log.warning("export users: the result of the worker accepting while reading is not readable (%s): the "
                        "transform task accepts every document", type(exc).__name__)
            return None
        log.info("export users: the worker accepted %d of the %d documents read while reading (%.1f s after the "
                 "read ended); the transform task accepts the rest", rows, self.fed, time.monotonic() - began)
        return {"result": str(self.result), "rows": rows}

    def abort(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._end()
        self.thread.join(timeout=10)


ACCEPT_WHILE_READING_MIN_DOCUMENTS = 100_000  # below, the worker's start (~1 s) costs more than it saves


def accept_while_reading(cfg: RunConfig, collection: str, chunk: dict, since, documents: int | None) -> bool:
    """Whether this export accepts its users while it reads (:class:`AcceptWhileReading`): a full
    read of the whole users collection from the server, of ``ACCEPT_WHILE_READING_MIN_DOCUMENTS``
    (estimated) or more, and AUTHMIGRATE_ACCEPT_WHILE_EXPORTING not false. A dump file is read
    far faster than one core accepts it, so the transform task's workers do that."""
    return (accept_while_exporting() and collection == "users" and chunk["kind"] == "all" and since is None
            and cfg.source != "files" and (documents or 0) >= ACCEPT_WHILE_READING_MIN_DOCUMENTS)


# --------------------------------------------------------------------------- chunks
MAX_OTHER_IDS = 10_000  # documents whose _id is not an ObjectId, listed by value in their chunk


def plan_chunks(cfg: RunConfig, collection: str) -> list[dict]:
    """The export's key ranges, fixed up front. With ``chunk_size`` set and a larger collection,
    a key-only walk over ``_id`` in index order (a covered index scan on MongoDB) takes every
    ``chunk_size``-th ObjectId as a boundary: ranges of exactly ``chunk_size`` documents, the
    last one open-ended so that documents inserted meanwhile are not lost between ranges.
    Documents whose ``_id`` is not an ObjectId (no ObjectId range can match them) get a
    chunk of their own, listed by value. In incremental runs the key-only pass that
    propagates deletions is one more job. Otherwise one chunk: the whole collection."""
    if cfg.source == "files":
        from authmigrate import filesource

        return filesource.plan(cfg, collection, cfg.mode == "incremental" and watermark(cfg, collection) is not None)
    coll = source_collection(cfg, collection)
    if coll is None:
        log.warning("export %s: the source has no collection %r; it is optional: nothing is migrated and its "
                    "tables are left as they are (the report says so)", collection, cfg.source_collections[collection])
        return [{"collection": collection, "kind": "absent", "index": 0}]
    if coll.name != cfg.source_collections[collection]:
        log.info("export %s: the source has no %r; reading its Mongoose name %r", collection,
                 cfg.source_collections[collection], coll.name)
    total = coll.estimated_document_count()
    jobs: list[dict] = []
    if cfg.mode == "incremental" and watermark(cfg, collection) is not None:
        jobs.append({"collection": collection, "kind": "keys", "index": 0})
    if not cfg.chunk_size or total <= cfg.chunk_size:
        return jobs + [{"collection": collection, "kind": "all", "index": len(jobs)}]
    progress = Progress(f"plan {collection} chunks (key-only walk)", total)
    bounds, others, seen = [], [], 0
    for doc in coll.find({}, {"_id": 1}, sort=[("_id", 1)], batch_size=10_000):
        key = doc["_id"]
        progress.advance(1)
        if not isinstance(key, ObjectId):
            others.append(key)
            if len(others) > MAX_OTHER_IDS:
                raise ConfigError(f"{collection}: more than {MAX_OTHER_IDS} documents have an _id that is not an "
                                  f"ObjectId; export this collection without chunks (chunk_size 0)")
            continue
        seen += 1
        if seen % cfg.chunk_size == 0:
            bounds.append(str(key))
    progress.log(final=True)
    if bounds and seen % cfg.chunk_size == 0:
        bounds.pop()  # the last range would be empty (it stays open-ended for late inserts)
    edges = [None, *bounds, None]
    for lo, hi in zip(edges, edges[1:]):
        jobs.append({"collection": collection, "kind": "range", "index": len(jobs), "after": lo, "upto": hi})
    if others:
        jobs.append({"collection": collection, "kind": "other_ids", "index": len(jobs),  # XCom is JSON:
                     "ids": json_util.dumps(others, json_options=json_util.CANONICAL_JSON_OPTIONS)})
    rest = f" and one chunk of {len(others)} documents whose _id is not an ObjectId" if others else ""
    log.info("export %s: %d documents in %d ranges of %d (by ObjectId _id)%s", collection, seen, len(edges) - 1,
             cfg.chunk_size, rest)
    return jobs


def chunk_filter(chunk: dict) -> dict:
    """The MongoDB filter of a chunk: keyset bounds on _id (``$gt`` / ``$lte``, never ``skip``)."""
    if chunk["kind"] == "all":
        return {}
    if chunk["kind"] == "other_ids":
        return {"_id": {"$in": json_util.loads(chunk["ids"])}}
    bounds = {"$gte": ObjectId(b"\x00" * 12)} if chunk["after"] is None else {"$gt": ObjectId(chunk["after"])}
    if chunk["upto"] is not None:
        bounds["$lte"] = ObjectId(chunk["upto"])
    return {"_id": bounds}


def export_chunk(cfg: RunConfig, chunk: dict) -> dict:
    """Export one chunk of a collection into its own Parquet file (replaced atomically, so a
    retried chunk rewrites only its own file)."""
    collection = chunk["collection"]
    spec = COLLECTIONS[collection]
    if chunk["kind"] == "absent":
        return {**chunk, "path": None, "documents": 0, "batches": 0, "mode": "full", "since": None, "absent": True,
                "source": cfg.source_collections[collection]}
    if cfg.source == "files":
        return _export_file_chunk(cfg, chunk)
    coll = source_collection(cfg, collection)
    if coll is None:
        raise ConfigError(f"collection {cfg.source_collections[collection]!r} left the source after the run planned "
                          f"its export: trigger the run again")
    folder = collection_dir(cfg, collection, "export")
    name = f"chunk-{chunk['index']:04d}"
    if chunk["kind"] == "keys":  # every document's app id, to propagate deletions
        progress = Progress(f"export {collection} keys", coll.estimated_document_count())
        batch = max(cfg.batch_size, 10_000)
        cursor = coll.find({}, {spec.key_field: 1}, sort=[("_id", 1)], batch_size=batch)
        out = folder / "keys.parquet"
        _write_raw(cursor, out, batch, progress)
        return {**chunk, "path": str(out), "documents": progress.done}
    query, since = chunk_filter(chunk), None
    if cfg.mode == "incremental":
        mark = watermark(cfg, collection)
        if mark is not None:
            since = mark - dt.timedelta(seconds=cfg.overlap_seconds)
            query = {"$and": [query, changed_since(since)]} if query else changed_since(since)
            log.info("export %s %s: incremental, documents updated after %s (watermark %s minus %ss overlap)",
                     collection, name, since.isoformat(), mark.isoformat(), cfg.overlap_seconds)
        else:
            log.info("export %s: no watermark yet for schema %s, reading everything", collection, cfg.target_schema)
    out = folder / f"{name}.parquet"
    progress = Progress(f"export {collection} {name}", coll.estimated_document_count() if chunk["kind"] == "all"
                        and since is None else None)
    projection = {f: 1 for f in spec.projection} if server_projection() else None
    cursor = coll.find(query, projection, sort=[("_id", 1)], batch_size=cfg.batch_size)
    accept = AcceptWhileReading(folder, cfg.batch_size) \
        if accept_while_reading(cfg, collection, chunk, since, progress.total) else None
    try:
        batches = _write_raw(cursor, out, cfg.batch_size, progress, accept)
    except BaseException:
        if accept is not None:
            accept.abort()
        raise
    result = {**chunk, "path": str(out), "documents": progress.done, "batches": batches,
              "mode": "incremental" if since else "full", "since": since.isoformat() if since else None,
              "accepted": accept.finish() if accept is not None else None}
    if chunk["index"] == 0 or chunk["kind"] == "all":
        result["unmapped_fields"] = unmapped_fields(coll, set(spec.projection))
        if result["unmapped_fields"]:
            log.info("export %s: fields outside the mapping, ignored (counts in a sample of %d): %s",
                     collection, UNMAPPED_SAMPLE, result["unmapped_fields"])
    return result


def _export_file_chunk(cfg: RunConfig, chunk: dict) -> dict:
    """Export one chunk of a dump file: the same Parquet of raw BSON as the live export, plus the
    file's bad pieces as rejects (each counted as a source document)."""
    import bson

    from authmigrate import filesource
    from authmigrate import transform as tf
    from authmigrate.staging import write_frame

    collection, spec = chunk["collection"], COLLECTIONS[chunk["collection"]]
    path = filesource._path(chunk["file"])
    folder = collection_dir(cfg, collection, "export")
    since = None
    if chunk["kind"] == "file" and cfg.mode == "incremental":
        mark = watermark(cfg, collection)
        since = mark - dt.timedelta(seconds=cfg.overlap_seconds) if mark is not None else None
    name = "keys" if chunk["kind"] == "keys" else f"chunk-{chunk['index']:04d}"
    out, bad, crc = folder / f"{name}.parquet", [], None
    progress = Progress(f"export {collection} {name} from {path.name}", None)

    def raws():
        nonlocal crc
        for item in filesource.items(cfg, collection, path, chunk["format"], chunk.get("start", 0), chunk.get("end"),
                                     chunk.get("name")):
            if item[0] == "crc":
                crc = {"namespace": item[1], "ok": item[2]}
            elif item[0] == "bad":
                bad.append(filesource.reject(chunk["file"], item[2], item[3]))
            elif chunk["kind"] == "keys":
                try:
                    doc = bson.decode(item[2], codec_options=tf.CODEC)
                    yield _Raw(bson.encode({"_id": doc.get("_id"), spec.key_field: doc.get(spec.key_field)}))
                except Exception:  # noqa: BLE001 - not decodable: no key (the data pass rejects the document)
                    pass
            elif since is None or filesource.changed(item[2], since):
                yield _Raw(item[2])

    if chunk["format"] == "bson" and chunk["kind"] != "keys" and since is None:  # every document, as it is
        batches = _write_bson_blocks(filesource.bson_blocks(path, chunk.get("start", 0), chunk.get("end")), bad,
                                     chunk["file"], out, cfg.batch_size, progress)
    else:
        batches = _write_raw(raws(), out, max(cfg.batch_size, 10_000) if chunk["kind"] == "keys" else cfg.batch_size,
                             progress)
    rejects = str(write_frame(tf.rejects_frame(bad), folder / f"{name}.rejects.parquet")) if bad else None
    if bad:
        log.warning("export %s %s: %d pieces of %s are not documents (rejects, with the offset or line)", collection,
                    name, len(bad), path.name)
    if crc is not None and crc["ok"] is False:
        log.error("export %s: the archive's CRC-64 of %s does not match its documents", collection, crc["namespace"])
    result = {**chunk, "path": str(out), "documents": progress.done + len(bad), "batches": batches,
              "mode": "incremental" if since else "full", "since": since.isoformat() if since else None,
              "file_rejects": rejects, "archive_crc": crc}
    return result


def _write_bson_blocks(blocks, bad: list, file: str, out: Path, batch_size: int, progress: Progress) -> int:
    """A ``.bson`` file's documents into the export's Parquet file, a block of the file at a time:
    each block's documents become one Arrow binary column over the block's bytes (no Python
    object per document); the bad pieces go to ``bad`` as rejects."""
    from array import array

    from authmigrate import filesource

    def columns():
        for item in blocks:
            if item[0] == "bad":
                bad.append(filesource.reject(file, item[2], item[3]))
                continue
            _, _, data, cuts = item
            yield pa.Array.from_buffers(pa.binary(), len(cuts) - 1,
                                        [None, pa.py_buffer(array("i", cuts)), pa.py_buffer(data)])

    return _write_columns(columns(), out, batch_size, progress)


class _Raw:
    """A raw document as a cursor hands it out (``.raw``)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes):
        self.raw = raw


def combine(chunks: list[dict]) -> dict:
    """One collection's export as the later tasks see it: its chunk files in key order, the
    key-only pass (incremental), and the totals."""
    chunks = sorted((c for c in chunks if c), key=lambda c: c["index"])
    data = [c for c in chunks if c["kind"] != "keys"]
    keys = next((c for c in chunks if c["kind"] == "keys"), None)
    unmapped: dict[str, int] = {}
    for c in data:
        for k, v in (c.get("unmapped_fields") or {}).items():
            unmapped[k] = unmapped.get(k, 0) + v
    absent = next((c for c in data if c.get("absent")), None)
    if absent:
        return {"paths": [], "documents": 0, "chunks": 0, "chunk_documents": [], "batches": 0, "unmapped_fields": {},
                "mode": "full", "since": None, "keys": None, "absent": True, "source": absent["source"]}
    return {"paths": [c["path"] for c in data], "documents": sum(c["documents"] for c in data),
            "chunks": len(data), "chunk_documents": [c["documents"] for c in data],
            "batches": sum(c["batches"] for c in data), "unmapped_fields": unmapped,
            "mode": "incremental" if any(c["mode"] == "incremental" for c in data) else "full",
            "since": next((c["since"] for c in data if c["since"]), None),
            "keys": {"path": keys["path"], "documents": keys["documents"]} if keys else None,
            "accepted": data[0].get("accepted") if len(data) == 1 else None,
            "file_rejects": [c["file_rejects"] for c in data if c.get("file_rejects")],
            "archive_crc": next((c["archive_crc"] for c in data if c.get("archive_crc")), None)}
