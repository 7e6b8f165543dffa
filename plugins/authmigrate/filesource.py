"""The source as files (param ``source=files``): a mongodump folder (``<collection>.bson``,
``--gzip``), one ``mongodump --archive`` file, or mongoexport JSON (lines or ``--jsonArray``),
read through Airflow's ``ObjectStoragePath`` (``file://`` here; ``s3://``, ``gs://``, ``abfs://``
where the matching provider is installed; any fsspec scheme, e.g. ``memory://``).

Only locations under ``AUTHMIGRATE_SOURCE_ROOTS`` (comma-separated folders or URL prefixes;
default: the demo dump folder ``<project>/.run/dump``) are read: whoever can trigger the DAG can
type any ``source_path``, and anything else (``file:///etc``, ``..``, a symlink leading out,
another bucket) is refused before a byte is read.

The export writes the same run-scoped Parquet of raw BSON as the live export, so transform,
load and validation are unchanged; pieces of a file that are not documents become rejects
(``<chunk>.rejects.parquet``, counted as source documents) naming the file and where.
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import os
from pathlib import PurePosixPath

from authmigrate.config import ConfigError, RunConfig, project_root
from authmigrate.registry import COLLECTIONS

log = logging.getLogger("authmigrate")
SUFFIXES = (".bson", ".bson.gz", ".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")


def source_roots() -> list[str]:
    raw = os.environ.get("AUTHMIGRATE_SOURCE_ROOTS")
    roots = [r.strip() for r in raw.split(",") if r.strip()] if raw else [str(project_root() / ".run" / "dump")]
    return roots


def _local(value: str) -> str | None:
    """The local path of a plain path or a file:// URL; None for another scheme."""
    if value.startswith("file://"):
        return value[len("file://"):] or "/"
    return None if "://" in value else value


def check_allowed(value: str) -> str:
    """``value`` if it lies under one of the allowed roots, else a ConfigError naming them.
    Local paths are compared after resolving symlinks; URLs by prefix, with ``..`` refused."""
    roots = source_roots()
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError("source_path must name a folder or file under " + ", ".join(roots))
    if ".." in PurePosixPath(value.split("://", 1)[-1]).parts:
        raise ConfigError(f"source_path {value!r} has a '..' segment; give a path under {roots}")
    local = _local(value)
    for root in roots:
        root_local = _local(root)
        if local is not None and root_local is not None:
            real, real_root = os.path.realpath(local), os.path.realpath(root_local)
            if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
                return value
        elif local is None and root_local is None:
            prefix = root.rstrip("/")
            if value == prefix or value.startswith(prefix + "/"):
                return value
    raise ConfigError(f"source_path {value!r} is outside the allowed source roots {roots} "
                      f"(AUTHMIGRATE_SOURCE_ROOTS; symlinks are followed before comparing)")


def _path(value: str):
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(value if "://" in value else f"file://{os.path.abspath(value)}")


READ_BUFFER = 1 << 20  # bytes a reader of a dump file takes from the storage at a time


def open_read(path):
    """A dump file for reading, buffered here: the readers take a few bytes at a time (a length
    prefix, a line), and each call on ``ObjectStoragePath``'s file object costs ~5 µs of Python
    (a million documents: seconds)."""
    return io.BufferedReader(path.open("rb"), READ_BUFFER)


def _archive_file(cfg: RunConfig):
    path = _path(cfg.source_path)
    return path if path.is_file() else None


def locate(cfg: RunConfig, collection: str):
    """(path, format) of a collection's file: ``archive`` (``source_path`` is the archive),
    ``bson`` or ``json``; None for an optional collection the dump does not have. Anything else
    missing fails with the list of files that are there."""
    from authmigrate.dumpfiles import open_maybe_gzip, sniff

    archive = _archive_file(cfg)
    if archive is not None:
        with archive.open("rb") as fh:
            kind = sniff(open_maybe_gzip(fh).peek(600)[:600])
        if kind != "archive":
            raise ConfigError(f"source_path {cfg.source_path!r} is a single file but not a mongodump --archive "
                              f"(it looks like {kind}): point source_path at the dump folder")
        spaces = archive_namespaces(archive)
        databases = sorted({db for db, _ in spaces})
        if not cfg.source_database and len(databases) > 1:
            raise ConfigError(f"the archive holds several databases {databases}: set source_database")
        spec, name = COLLECTIONS[collection], cfg.source_collections[collection]
        held = {c for db, c in spaces if not cfg.source_database or db == cfg.source_database}
        if name in held:
            return archive, "archive", name
        if spec.optional and name == spec.name and spec.mongoose_name in held:
            return archive, "archive", spec.mongoose_name
        if spec.optional and name == spec.name:
            return None
        raise ConfigError(f"the archive has no collection {name!r} (it has: {sorted(held)}); set source_{collection}")
    folder = _path(cfg.source_path)
    if cfg.source_database:
        folder = folder / cfg.source_database
    if not folder.is_dir():
        raise ConfigError(f"source_path {cfg.source_path!r}{' / ' + cfg.source_database if cfg.source_database else ''}"
                          f" is not a folder or file that exists")
    spec, name = COLLECTIONS[collection], cfg.source_collections[collection]
    names = [name] + ([spec.mongoose_name] if spec.optional and name == spec.name and spec.mongoose_name else [])
    present = sorted(p.name for p in folder.iterdir() if p.is_file())
    for candidate in names:
        for suffix in SUFFIXES:
            if candidate + suffix in present:
                found = folder / (candidate + suffix)
                check_allowed(str(found))  # a symlinked folder or file must not lead out of the roots
                return found, "bson" if suffix.startswith(".bson") else "json", candidate
    if any(p.startswith(name + ".csv") for p in present):
        raise ConfigError(f"{name}.csv: CSV loses types and arrays; export the collection with mongoexport --type=json "
                          f"(or dump it with mongodump)")
    if spec.optional and name == spec.name:
        return None
    raise ConfigError(f"no file for collection {name!r} in {folder} (expected {name}.bson, {name}.bson.gz, "
                      f"{name}.json or {name}.jsonl; it has: {present})")


def archive_namespaces(path) -> list[tuple[str, str]]:
    """The (db, collection) pairs an archive's prelude declares (only the prelude is read)."""
    from authmigrate.dumpfiles import Archive, iter_archive, open_maybe_gzip

    meta = Archive()
    with path.open("rb") as fh:
        next(iter_archive(open_maybe_gzip(fh), meta), None)
    return list(meta.namespaces)


def dump_collections(cfg: RunConfig, skip: set[str] = frozenset()) -> dict[str, int]:
    """The collections the dump holds (name → documents), for the census; those in ``skip``
    are left out (a folder's files of them are not opened)."""
    from authmigrate.dumpfiles import Archive, iter_archive, iter_bson, iter_json, open_maybe_gzip

    archive = _archive_file(cfg)
    if archive is not None:
        meta, counts = Archive(), {}
        with open_read(archive) as fh:
            for (db, coll), item in iter_archive(open_maybe_gzip(fh), meta):
                if (not cfg.source_database or db == cfg.source_database) and coll not in skip:
                    counts[coll] = counts.get(coll, 0) + 1
        return counts
    folder = _path(cfg.source_path) / cfg.source_database if cfg.source_database else _path(cfg.source_path)
    out = {}
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        suffix = next((s for s in SUFFIXES if p.name.endswith(s)), None)
        if suffix and not p.name.endswith((".metadata.json", ".metadata.json.gz")) and \
                p.name[: -len(suffix)] not in skip:
            with open_read(p) as fh:
                reader = iter_bson if suffix.startswith(".bson") else iter_json
                out[p.name[: -len(suffix)]] = sum(1 for _ in reader(open_maybe_gzip(fh)))
    return out


def _damaged(exc: Exception) -> tuple:
    return ("bad", None, "truncated_file", f"the compressed file ends early or is damaged ({type(exc).__name__}); "
                                           "documents after that point cannot be read: take a new dump")


def items(cfg: RunConfig, collection: str, path, kind: str, start: int = 0, end: int | None = None,
          name: str | None = None):
    """The collection's documents and bad pieces, as the readers give them; from an archive (its
    namespace ``name``), last, ``("crc", namespace, ok)``: whether its EOF header's CRC-64-ECMA
    matched the documents (None: the archive never closed it)."""
    from authmigrate.dumpfiles import Archive, iter_archive, iter_json, open_maybe_gzip

    import gzip
    import zlib

    if kind == "bson":
        for item in bson_blocks(path, start, end):
            if item[0] == "docs":
                _, offset, data, cuts = item
                yield from (("doc", offset + a, data[a:b]) for a, b in zip(cuts, cuts[1:]))
            else:
                yield item
        return
    fh = open_read(path)
    try:
        if kind == "archive":
            meta = Archive()
            for (db, coll), item in iter_archive(open_maybe_gzip(fh), meta):
                ours = coll == name and (not cfg.source_database or db == cfg.source_database)
                if ours:
                    yield item
                elif item[0] == "bad":  # the archive stops there: ours may lose documents after it
                    yield ("bad", item[1], item[2], f"in {db}.{coll}, {item[3]}; documents of {name} after it are "
                                                    "not in the archive")
            ns = meta.namespaces.get((cfg.source_database or next(iter({d for d, _ in meta.namespaces}), ""), name))
            yield ("crc", f"{ns.db}.{ns.collection}" if ns else name, ns.crc_ok if ns else None)
        else:
            yield from iter_json(open_maybe_gzip(fh))
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        yield _damaged(exc)
    finally:
        fh.close()


def bson_blocks(path, start: int = 0, end: int | None = None):
    """A ``.bson`` (or ``.bson.gz``) file's documents and bad pieces, a block of documents at a
    time (:func:`dumpfiles.iter_bson_blocks`; the same pieces as :func:`items`)."""
    from authmigrate.dumpfiles import iter_bson_blocks, open_maybe_gzip

    import gzip
    import zlib

    fh = path.open("rb")
    try:
        if start:
            fh.seek(start)
        yield from iter_bson_blocks(open_maybe_gzip(fh) if not start else fh, start, end)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        yield _damaged(exc)
    finally:
        fh.close()


def plan(cfg: RunConfig, collection: str, incremental_keys: bool) -> list[dict]:
    """The collection's export jobs on a dump: one per file, or with ``chunk_size`` and an
    uncompressed ``.bson`` file, document-aligned byte ranges (the length prefixes walked, not
    decoded). Gzip cannot seek and JSON lines are not split: one chunk each."""
    from authmigrate.dumpfiles import bson_boundaries

    found = locate(cfg, collection)
    if found is None:
        log.warning("export %s: the dump has no file for it; it is optional: nothing is migrated and its tables "
                    "are left as they are", collection)
        return [{"collection": collection, "kind": "absent", "index": 0}]
    path, kind, name = found
    jobs = [{"collection": collection, "kind": "keys", "index": 0, "file": str(path), "format": kind, "name": name}] \
        if incremental_keys else []
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"  # by content, as the reader decides: not by the name
    if kind == "bson" and cfg.chunk_size and not gzipped:
        with open_read(path) as fh:
            bounds = bson_boundaries(fh, cfg.chunk_size)
        edges = [0, *bounds, None]
        for lo, hi in zip(edges, edges[1:]):
            if hi is not None and lo == hi:
                continue
            jobs.append({"collection": collection, "kind": "file", "index": len(jobs), "file": str(path),
                         "format": kind, "name": name, "start": lo, "end": hi})
        log.info("export %s: %s in %d byte ranges of %d documents", collection, path.name, len(edges) - 1,
                 cfg.chunk_size)
        return jobs
    return jobs + [{"collection": collection, "kind": "file", "index": len(jobs), "file": str(path), "format": kind,
                    "name": name, "start": 0, "end": None}]


def changed(raw: bytes, since: dt.datetime) -> bool:
    """The live export's incremental filter (export.changed_since) on one dumped document."""
    import bson

    from authmigrate.transform import CODEC

    try:
        value = bson.decode(raw, codec_options=CODEC).get("updatedAt")
    except Exception:  # noqa: BLE001 - not decodable: the transform rejects it, with its reason
        return True
    return not isinstance(value, dt.datetime) or value > since


def reject(file: str, reason_code: str, reason: str) -> dict:
    return {"source_id": None, "scope": "document", "element": None, "reason_code": reason_code,
            "reason": f"{PurePosixPath(file).name}: {reason}", "document": None}
