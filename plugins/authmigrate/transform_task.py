"""The transform task's file side: read the export, call the pure transform, write row sets."""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from authmigrate import transform as tf
from authmigrate.census import FieldCensus, collection_census
from authmigrate.config import RunConfig
from authmigrate.db import connect, fetch_keys
from authmigrate.memory import release
from authmigrate.progress import Progress
from authmigrate.registry import COLLECTIONS
from authmigrate.staging import FrameWriter, collection_dir, read_frame, write_frame

log = logging.getLogger("authmigrate")


def _paths(paths: str | list[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


def raw_batches(paths: str | list[str], batch_size: int):
    """The raw BSON of an export (one file, or its chunk files in key order), in batches."""
    for path in _paths(paths):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["bson"])


def export_rows(paths: str | list[str]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in _paths(paths))


def read_documents_frame(paths: str | list[str], collection: str, what: str | None = None,
                         census: FieldCensus | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """The export as the transform's documents frame, decoded a batch at a time: only the
    mapped fields stay decoded, ``_doc`` holds the raw BSON. Plus the undecodable documents'
    rejects. ``what`` names the export in the progress lines (default: the collection); every
    decoded document is counted into ``census``."""
    projection = COLLECTIONS[collection].projection
    progress = Progress(f"decode {what or collection}", export_rows(paths))
    parts, rejects = [], []
    for batch in raw_batches(paths, 10_000):
        raws, positions = batch.column(0).to_pylist(), []
        docs, bad = tf.decode_documents(raws, positions)
        if census is not None:
            census.add(docs)
        parts.append(tf.documents_frame(docs, projection, [raws[i] for i in positions]))
        rejects += bad
        progress.advance(batch.num_rows)
    progress.log(final=True)
    frame = pd.concat(parts, ignore_index=True) if parts else tf.documents_frame([], projection)
    return frame, rejects


MIN_TRANSFORM_BATCH = 10_000  # documents per transform batch, at least (pandas has a per-call cost);
# 20,000 raised the 1M-user transform's peak by ~50 MiB and left ~70 MiB more behind, for no speed


def _casefold(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Python's str.casefold (what the one-frame transform compares emails with), in Arrow:
    lower-casing equals case-folding for ASCII; only the other values go through Python."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lowered = pc.utf8_lower(column)
    other = pc.invert(pc.fill_null(pc.string_is_ascii(column), True))
    if not pc.any(other).as_py():
        return lowered
    picked = column.filter(other).to_pylist()
    return pc.replace_with_mask(lowered, other, pa.array([v.casefold() for v in picked], column.type))


KEY_FRAME = [*tf.USER_KEY_COLUMNS, "mongo_id", "_row"]
FOLDED = {c for subset, *_, fold in tf.USER_DUPLICATES if fold for c in subset}


def _distinct(path, name: str) -> tuple[pa.ChunkedArray, pa.Array]:
    """A key column (case-folded if its pass folds) and its distinct values in code-point order
    (the order pandas sorts Python strings in)."""
    column = pq.read_table(path, columns=[name]).column(name)
    if name in FOLDED:
        column = _casefold(column)
    distinct = pc.unique(column).drop_null()
    return column, distinct.take(pc.sort_indices(distinct))


def _coded_keys(path) -> pd.DataFrame:
    """The key columns of the accepted users as integer codes: a million rows rank in tens of
    MiB, with no Python string per value. A code is the value's position among the column's
    distinct values, so codes sort like the values (see :func:`_decoded`)."""
    frame = {}
    for name in KEY_FRAME:  # a column at a time: Parquet decoding is greedy
        if name in ("created_at", "updated_at", "_row"):
            frame[name] = pq.read_table(path, columns=[name]).column(name).to_pandas()
            continue
        column, distinct = _distinct(path, name)
        frame[name] = pc.index_in(column, value_set=distinct).to_pandas(types_mapper={pa.int32(): pd.Int64Dtype()}.get)
    release()
    return pd.DataFrame(frame)


def _decoded(path, losers: list[tuple]) -> list[tuple[int, str, str]]:
    """Word the reasons of a coded :func:`transform.duplicate_plan`: the codes it names, decoded
    one column at a time once the ranking frame is gone."""
    wanted: dict[str, set[int]] = {}
    for _, _, (_, subset, key, winner) in losers:
        for column, code in zip(subset, key):
            wanted.setdefault(column, set()).add(int(code))
        wanted.setdefault("mongo_id", set()).add(int(winner))
    values: dict[str, dict[int, Any]] = {}
    for column, codes in wanted.items():
        _, distinct = _distinct(path, column)
        values[column] = {code: distinct[code].as_py() for code in codes}
    return [(row, code, tf.duplicate_reason(what, tuple(values[c][int(v)] for c, v in zip(subset, key)),
                                            values["mongo_id"][int(winner)]))
            for row, code, (what, subset, key, winner) in losers]


def transform_users_batched(paths: str | list[str], out, batch_size: int, census: FieldCensus | None = None
                            ) -> tuple[tf.Result, dict[str, str], dt.datetime | None, list[dict]]:
    """The users transform on an export of any size, holding one batch of documents at a time
    (plus the key columns of the whole collection), with exactly the result of
    :func:`transform.transform_users` on the whole export (tests/unit/test_transform_batched.py).

    1. Per batch: decode, coerce (``users_accept``) and explode; write the accepted rows with
       their key columns, and their join rows, each tagged with the document's position.
    2. Rank the whole collection's key columns (``duplicate_plan``): the documents that lose a
       uniqueness contest; only those are decoded again, to explain their rejects.
    3. Stream the accepted rows once more, leaving out the losers.
    Returns the result (tables hold only the small ones; users and user_roles are files),
    the paths of those files, the newest ``updatedAt`` seen and the undecodable documents' rejects."""
    import bson

    progress = Progress("transform users", export_rows(paths))
    rejects: list[dict] = []
    undecodable: list[dict] = []
    element_rejects: list[dict] = []
    wildcard_rows: list[int] = []
    legacy_parts: list[pd.DataFrame] = []
    decoded = position = 0
    newest = None
    user_cols = list(tf.TABLES["users"].columns)
    accepted = FrameWriter(out / "users.accepted.parquet")
    joined = FrameWriter(out / "user_roles.accepted.parquet")
    with accepted, joined:
        for batch in raw_batches(paths, max(batch_size, MIN_TRANSFORM_BATCH)):
            positions: list[int] = []
            docs, bad = tf.decode_documents(batch.column(0).to_pylist(), positions)
            if census is not None:
                census.add(docs)
            undecodable += bad
            decoded += len(docs)
            stamps = [t for t in (d.get("updatedAt") for d in docs) if isinstance(t, dt.datetime)]
            if stamps:
                newest = max(stamps) if newest is None else max(newest, *stamps)
            frame = tf.documents_frame(docs, COLLECTIONS["users"].projection)
            docs = None  # the frame keeps what the rules need
            users, batch_rejects = tf.users_accept(frame)
            rejects += batch_rejects
            user_roles, el_rejects, el_counts, legacy = tf.users_explode(users, frame)
            where = [position + i for i in positions]  # frame row → position in the export
            typed = tf._typed(users, "users")
            typed["_row"] = pd.array([where[r] for r in users["_row"]], dtype="int64")
            typed["_elements"] = pd.array([len(v) for v in users["_roles"]], dtype="int64")
            accepted.write(typed)
            roles = tf._typed(user_roles, "user_roles")
            roles["_row"] = pd.array([where[r] for r in user_roles["_row"]], dtype="int64")
            joined.write(roles)
            element_rejects += [{**r, "_row": where[r["_row"]]} for r in el_rejects]
            wildcard_rows += [where[r] for r in el_counts["_wildcard_rows"]]
            legacy_parts.append(legacy.assign(_row=[where[r] for r in legacy["_row"]]))
            position += batch.num_rows
            progress.advance(batch.num_rows)
        accepted.close()
        joined.close()
    progress.log(final=True)
    release()

    # the coded frame goes in as a temporary: each pass's copy then replaces it, never two held
    losers = tf.duplicate_plan(_coded_keys(accepted.path), tf.USER_DUPLICATES, coded=True)
    release()
    losers = _decoded(accepted.path, losers)
    lost = {row for row, _, _ in losers}
    explained = {row: (code, reason) for row, code, reason in losers}
    position = 0
    for batch in raw_batches(paths, max(batch_size, MIN_TRANSFORM_BATCH)):
        for i in sorted(r - position for r in lost if position <= r < position + batch.num_rows):
            code, reason = explained[position + i]
            doc = bson.decode(batch.column(0)[i].as_py(), codec_options=tf.CODEC)
            rejects.append(tf._reject_row(doc, "document", None, code, reason))
        position += batch.num_rows
    log.info("transform users: %d documents lose a uniqueness contest (duplicate key, username, email "
             "or identity)", len(lost))

    lost_array = pa.array(sorted(lost), pa.int64())
    survivors = {}
    elements = 0
    for name, source in (("users", accepted.path), ("user_roles", joined.path)):
        with FrameWriter(out / f"{name}.parquet") as writer:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=max(batch_size, MIN_TRANSFORM_BATCH)):
                keep = pc.invert(pc.is_in(batch.column("_row"), value_set=lost_array))
                batch = batch.filter(keep)
                if name == "users":
                    elements += pc.sum(batch.column("_elements")).as_py() or 0
                columns = user_cols if name == "users" else list(tf.TABLES["user_roles"].columns)
                writer.write(tf._typed(batch.select(columns).to_pandas(), name))  # exact dtypes, e.g. Int64
            survivors[name] = writer.close(tf._typed(pd.DataFrame(), name))
        source.unlink()
    role_ids = pq.read_table(survivors["user_roles"], columns=["role_id"]).column("role_id")
    legacy = pd.concat(legacy_parts, ignore_index=True) if legacy_parts else \
        pd.DataFrame({"app_id": [], "user_id": [], "_row": []})
    legacy = legacy[~legacy["_row"].isin(lost)]
    element_rejects = [r for r in element_rejects if r["_row"] not in lost]
    counts = {"array_elements": elements, "rejected_elements": len(element_rejects),
              "wildcard_elements": sum(1 for r in wildcard_rows if r not in lost)}
    tables = {"roles": tf.roles_table(pc.unique(role_ids).drop_null().to_pylist())}
    result = tf._finish(decoded, rejects + element_rejects, tables, {"arrays": {"user_roles": counts}},
                        tf.legacy_owners_extra(legacy))
    rows = {name: pq.ParquetFile(survivors[name]).metadata.num_rows for name in ("users", "user_roles")}
    result.counts["rows"] = {"users": rows["users"], **result.counts["rows"], "user_roles": rows["user_roles"]}
    return result, {name: str(path) for name, path in survivors.items()}, newest, undecodable


def _key_list(collection: str, values) -> list[str]:
    coerce, out = tf.RULES[collection]["id"][1], []
    for v in values:
        try:
            out.append(coerce(v))
        except tf.Reject:
            pass
    return out


def _read_keys(path: str | None) -> set[str]:
    return set(read_frame(path)["key"].dropna()) if path else set()


def _keys(cfg: RunConfig, dependency: str, upstream: dict | None) -> tf.KeySet | set[str]:
    """Keys of a collection this transform references. From this run's transform output when
    that collection ran in full (an Arrow :class:`transform.KeySet`: no Python string per
    key); else from the target table — in an incremental run minus what the source no longer
    has or this batch re-read, plus what this batch accepted."""
    table = COLLECTIONS[dependency].main_table
    if upstream and upstream.get("mode") != "incremental":
        return tf.KeySet(pq.read_table(upstream["tables"][table.name], columns=["id"]).column("id"))
    accepted = set(read_frame(upstream["tables"][table.name], ["id"])["id"].dropna()) if upstream else set()
    log.info("transform: reading %s keys from the target table %s", dependency, table.name)
    with connect(cfg) as conn:
        in_target = fetch_keys(conn, cfg, table.name, "id")
    if not upstream:
        return in_target
    return accepted | ((in_target & _read_keys(upstream["source_keys"])) - _read_keys(upstream["batch_keys"]))


def _competitors(cfg: RunConfig, collection: str, source_keys: set[str], batch_keys: set[str],
                 batch_mongo_ids: set[str]) -> pd.DataFrame:
    """Target rows that stay and that batch rows must not collide with (incremental runs)."""
    from authmigrate.db import q, use_schema

    cols = COLLECTIONS[collection].competitor_columns
    with connect(cfg) as conn, conn.transaction():
        use_schema(conn, cfg)
        rows = conn.execute(q("competitors", columns=cols, table=COLLECTIONS[collection].main_table.name)).fetchall()
    frame = pd.DataFrame(rows, columns=list(cols), dtype=object)
    keep = frame["id"].isin(source_keys) & ~frame["id"].isin(batch_keys) & ~frame["mongo_id"].isin(batch_mongo_ids)
    return frame[keep].reset_index(drop=True)


def transform_collection(cfg: RunConfig, collection: str, exported: dict, upstream: dict[str, dict | None]) -> dict:
    if exported.get("absent"):
        return _absent(cfg, collection, exported)
    if collection == "users" and exported.get("mode") != "incremental":
        return _transform_users_file(cfg, exported)
    spec = COLLECTIONS[collection]
    census = FieldCensus()
    frame, undecodable = read_documents_frame(exported["paths"], collection, census=census)
    undecodable += file_rejects(exported)
    out = collection_dir(cfg, collection, "transform")
    incremental = exported.get("mode") == "incremental"
    existing = None
    source_keys_path = batch_keys_path = None
    if incremental:
        key_frame, _ = read_documents_frame(exported["keys"]["path"], collection, f"{collection} keys")
        source_keys = set(_key_list(collection, key_frame[spec.key_field]))
        batch_keys = set(_key_list(collection, frame[spec.key_field]))
        existing = _competitors(cfg, collection, source_keys, batch_keys, set(frame["_id"].dropna()))
        source_keys_path = str(write_frame(pd.DataFrame({"key": sorted(source_keys)}, dtype="string"),
                                           out / "source_keys.parquet"))
        batch_keys_path = str(write_frame(pd.DataFrame({"key": sorted(batch_keys)}, dtype="string"),
                                          out / "batch_keys.parquet"))
        log.info("transform %s: incremental batch of %d documents; %d keys in the source; %d target rows "
                 "checked for collisions", collection, len(frame), len(source_keys), len(existing))
    known = {dep: _keys(cfg, dep, upstream.get(dep)) for dep in spec.depends_on}
    extras = {name: read_frame(path) for dep in upstream.values() if dep and spec.module  # only own logic reads them
              for name, path in (dep.get("extras") or {}).items()}
    result = tf.transform(collection, frame, known, existing, extras)
    stamps = [t for t in frame.get("updatedAt", ()) if isinstance(t, dt.datetime)]
    return _outputs(collection, out, result, {}, undecodable, max(stamps) if stamps else None,
                    incremental, source_keys_path, batch_keys_path, collection_census(census, collection))


def file_rejects(exported: dict) -> list[dict]:
    """The pieces of a dump file that were not documents (source=files), as rejects."""
    return [r for path in exported.get("file_rejects") or () for r in read_frame(path).to_dict("records")]


def _absent(cfg: RunConfig, collection: str, exported: dict) -> dict:
    """An optional collection the source does not have: nothing to transform; the load leaves its
    tables as they are and the report says so."""
    out = collection_dir(cfg, collection, "transform")
    log.info("transform %s: the source has no collection %r (optional): nothing to transform",
             collection, exported["source"])
    counts = {"source_documents": 0, "rejected_documents": 0, "rows": {}, "rejects_by_reason": {}}
    return {"path": str(out), "tables": {}, "extras": {}, "counts": counts, "mode": "full",
            "rejects": str(write_frame(tf.rejects_frame([]), out / "rejects.parquet")),
            "source_keys": None, "batch_keys": None, "watermark_candidate": None, "census": None,
            "absent": True, "source": exported["source"]}


def _transform_users_file(cfg: RunConfig, exported: dict) -> dict:
    out = collection_dir(cfg, "users", "transform")
    census = FieldCensus()
    result, files, newest, undecodable = transform_users_batched(exported["paths"], out, cfg.batch_size, census)
    undecodable += file_rejects(exported)
    return _outputs("users", out, result, files, undecodable, newest, False, None, None,
                    collection_census(census, "users"))


def _outputs(collection: str, out, result: tf.Result, files: dict[str, str], undecodable: list[dict],
             newest: dt.datetime | None, incremental: bool, source_keys_path, batch_keys_path,
             census: dict) -> dict:
    """Write the row sets, extras and rejects; log and return what XCom carries (paths, counts,
    the field census: names and counts, never values)."""
    if undecodable:
        result.rejects = pd.concat([tf.rejects_frame(undecodable), result.rejects], ignore_index=True)
        result.counts["source_documents"] += len(undecodable)
        result.counts["rejected_documents"] += len(undecodable)
        by = result.counts["rejects_by_reason"]
        for code, n in Counter(r["reason_code"] for r in undecodable).items():
            by[code] = by.get(code, 0) + n
        result.counts["rejects_by_reason"] = dict(sorted(by.items()))
    tables = {name: str(write_frame(df, out / f"{name}.parquet")) for name, df in result.tables.items()}
    tables = {t.name: files.get(t.name) or tables[t.name] for t in COLLECTIONS[collection].tables}
    extras = {name: str(write_frame(df, out / f"{name}.parquet")) for name, df in result.extras.items()}
    rejects = str(write_frame(result.rejects, out / "rejects.parquet"))
    counts = result.counts
    log.info("transform %s: %d documents → rows %s; %d documents rejected; rejects by reason %s",
             collection, counts["source_documents"], counts["rows"], counts["rejected_documents"],
             counts["rejects_by_reason"])
    return {"path": str(out), "tables": tables, "extras": extras, "rejects": rejects, "counts": counts,
            "mode": "incremental" if incremental else "full", "source_keys": source_keys_path,
            "batch_keys": batch_keys_path, "watermark_candidate": newest.isoformat() if newest else None,
            "census": census}
