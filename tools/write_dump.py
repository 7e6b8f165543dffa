"""Write documents as the MongoDB tools would: a mongodump folder (``<collection>.bson`` and
``<collection>.metadata.json``, optionally ``--gzip``), a ``mongodump --archive`` file (format of
mongo-tools' common/archive/spec.md, collections interleaved, CRC-64-ECMA in each EOF header),
or mongoexport JSON (lines or ``--jsonArray``; relaxed or canonical Extended JSON v2).

Used by the tests and by ``make run DEMO_SOURCE=files``; the readers (authmigrate.dumpfiles)
are tested against hand-assembled bytes, not against this writer.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import bson
from bson import ObjectId, json_util

FORMATS = ("bson", "bson.gz", "archive", "jsonl", "jsonarray")


def _open(path: Path, compress: bool):
    return gzip.open(path, "wb") if compress else open(path, "wb")


def with_ids(name: str, docs: list[dict]) -> list[dict]:
    """Every dumped document has an ``_id`` (the server assigned it): a generated document without
    one gets a deterministic ObjectId."""
    return [d if "_id" in d else {"_id": ObjectId(hashlib.md5(f"{name}:{i}".encode()).digest()[:12]), **d}
            for i, d in enumerate(docs)]


def write(data: dict[str, list[dict]], out: Path, fmt: str, db: str = "idp", canonical: bool = False) -> list[Path]:
    """``data``: {collection: documents}. ``out``: a folder (an archive goes to ``out/<db>.archive``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    data = {name: with_ids(name, docs) for name, docs in data.items()}
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "archive":
        path = out / f"{db}.archive"
        with open(path, "wb") as fh:
            fh.write(archive_bytes(data, db))
        return [path]
    written = []
    for name, docs in data.items():
        if fmt.startswith("bson"):
            gz = fmt == "bson.gz"
            path = out / f"{name}.bson{'.gz' if gz else ''}"
            with _open(path, gz) as fh:
                for doc in docs:
                    fh.write(bson.encode(doc))
            meta = out / f"{name}.metadata.json{'.gz' if gz else ''}"
            with _open(meta, gz) as fh:
                fh.write(json.dumps({"indexes": [{"v": 2, "key": {"_id": 1}, "name": "_id_"}],
                                     "collectionName": name}).encode())
            written += [path, meta]
        else:
            options = json_util.CANONICAL_JSON_OPTIONS if canonical else json_util.RELAXED_JSON_OPTIONS
            lines = [json_util.dumps(doc, json_options=options) for doc in docs]
            path = out / f"{name}.json"
            text = ("[" + ",\n".join(lines) + "]") if fmt == "jsonarray" else "".join(line + "\n" for line in lines)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def archive_bytes(data: dict[str, list[dict]], db: str, segment: int = 100) -> bytes:
    """A mongodump archive: magic, header, one metadata document per collection, terminator, then
    the collections' documents in interleaved segments of ``segment`` documents, then each
    namespace's EOF header with the CRC-64-ECMA of its documents."""
    from authmigrate.dumpfiles import ARCHIVE_MAGIC, TERMINATOR, crc64_ecma

    out = [ARCHIVE_MAGIC, bson.encode({"concurrent_collections": 4, "version": "0.1", "server_version": "7.0.0",
                                       "tool_version": "authmigrate-writer"})]
    for name in data:
        out.append(bson.encode({"db": db, "collection": name, "metadata": json.dumps({"indexes": []}), "size": 0}))
    out.append(TERMINATOR)
    raws = {name: [bson.encode(d) for d in docs] for name, docs in data.items()}
    crcs = {name: 0 for name in data}
    offset = 0
    while any(offset < len(r) for r in raws.values()):
        for name, docs in raws.items():
            part = docs[offset:offset + segment]
            if part:
                out.append(bson.encode({"db": db, "collection": name, "EOF": False, "CRC": bson.Int64(0)}))
                out += part
                out.append(TERMINATOR)
                for raw in part:
                    crcs[name] = crc64_ecma(raw, crcs[name])
        offset += segment
    for name in data:
        crc = crcs[name]
        out.append(bson.encode({"db": db, "collection": name, "EOF": True,
                                "CRC": bson.Int64(crc - (1 << 64) if crc >= 1 << 63 else crc)}))
        out.append(TERMINATOR)
    return b"".join(out)
