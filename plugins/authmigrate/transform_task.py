"""The transform task's file side: read the export, call the pure transform, write row sets."""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from authmigrate import transform as tf
from authmigrate.census import FieldCensus, collection_census
from authmigrate.config import ConfigError, RunConfig
from authmigrate.db import connect, fetch_keys
from authmigrate.memory import release
from authmigrate.progress import Progress
from authmigrate.registry import COLLECTIONS
from authmigrate.staging import FrameWriter, collection_dir, iter_batches, read_frame, write_frame

log = logging.getLogger("authmigrate")


def _paths(paths: str | list[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


def raw_batches(paths: str | list[str], batch_size: int):
    """The raw BSON of an export (one file, or its chunk files in key order), in batches."""
    for path in _paths(paths):
        yield from iter_batches(path, batch_size, ["bson"])


def export_rows(paths: str | list[str]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in _paths(paths))


MIN_TRANSFORM_BATCH = 10_000  # documents per transform batch, at least (pandas has a per-call cost);
# 20,000 raised the 1M-user transform's peak by ~50 MiB and left ~70 MiB more behind, for no speed


def _document_batches(paths: list[str], collection: str, batch_size: int, what: str):
    """The export a batch at a time: (export position of the batch's first document, positions
    in the batch of the decoded documents, the documents, the undecodable ones' rejects, the
    documents frame with ``_doc``), with progress lines."""
    projection = COLLECTIONS[collection].projection
    progress = Progress(what, export_rows(paths))
    start = 0
    for batch in raw_batches(paths, max(batch_size, MIN_TRANSFORM_BATCH)):
        raws, positions = batch.column(0).to_pylist(), []
        docs, bad = tf.decode_documents(raws, positions)
        yield start, np.asarray(positions, dtype=np.int64), docs, bad, \
            tf.documents_frame(docs, projection, [raws[i] for i in positions])
        start += batch.num_rows
        progress.advance(batch.num_rows)
    progress.log(final=True)


def count_into(census: FieldCensus, docs: list[dict], frame: pd.DataFrame, collection: str) -> None:
    """Count ``docs`` into ``census``, reading the mapped fields' values from their documents
    frame (each ``doc.get(field)``, built once for both)."""
    census.add(docs, {f: frame[f].tolist() for f in COLLECTIONS[collection].projection})


def read_documents_frame(paths: str | list[str], collection: str, what: str | None = None,
                         census: FieldCensus | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """The export as the transform's documents frame, decoded a batch at a time: only the
    mapped fields stay decoded, ``_doc`` holds the raw BSON. Plus the undecodable documents'
    rejects. ``what`` names the export in the progress lines (default: the collection); every
    decoded document is counted into ``census``."""
    parts, rejects = [], []
    for _, _, docs, bad, frame in _document_batches(_paths(paths), collection, 10_000, f"decode {what or collection}"):
        if census is not None:
            count_into(census, docs, frame, collection)
        parts.append(frame)
        rejects += bad
    frame = pd.concat(parts, ignore_index=True) if parts else tf.documents_frame([], COLLECTIONS[collection].projection)
    return frame, rejects


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


KEY_COLUMNS = [*tf.USER_KEY_COLUMNS, "mongo_id"]
FOLDED = {c for subset, *_, fold in tf.USER_DUPLICATES if fold for c in subset}


def _column(paths: list[Path], name: str) -> pa.ChunkedArray:
    """One column of the accepted rows, over every part's file in export order."""
    return pa.chunked_array([c for p in paths for c in pq.read_table(p, columns=[name]).column(name).chunks],
                            pq.read_schema(paths[0]).field(name).type)


def _coded_key(paths: list[Path], name: str) -> np.ndarray:
    column = _column(paths, name).combine_chunks()
    if name in FOLDED:
        column = _casefold(column)
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())  # its stored instants: they sort like the times
    rank = pc.rank(column, sort_keys="ascending", tiebreaker="dense").to_numpy().astype(np.int32) - 1
    return np.where(column.is_null().to_numpy(zero_copy_only=False), np.int32(-1), rank)


def _coded_keys(paths: list[Path]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The key columns of the accepted users as int32 codes (-1 for NULL), for
    :func:`transform.coded_duplicate_plan`, and the rows' ``_row``: a million rows rank in a few
    integer arrays, with no Python string per value. A code is the value's dense rank (text
    case-folded where its pass folds, in code-point order: the order pandas sorts Python
    strings in), so codes sort like the values. Ranking sorts: at 1M it took half the time and
    half the memory of hashing the distinct values. Two columns at a time, on two threads
    (Parquet decoding and Arrow's sort run outside the GIL): 1M users, 2.7-3.1 -> 1.7-1.9 s; not
    more at once, Parquet decoding is greedy."""
    with ThreadPoolExecutor(2, thread_name_prefix="keys") as pool:
        codes = dict(zip(KEY_COLUMNS, pool.map(lambda name: _coded_key(paths, name), KEY_COLUMNS)))
    rows = _column(paths, "_row").to_numpy()
    release()
    return codes, rows


def _decoded(paths: list[Path], codes: dict[str, np.ndarray], losers: list[tuple]) -> list[tuple[int, str, str]]:
    """Word the reasons of :func:`transform.coded_duplicate_plan`: each code it names is
    decoded from the first accepted row that has it, one column at a time."""
    wanted: dict[str, set[int]] = {}
    for _, _, (_, subset, key, winner) in losers:
        for column, code in zip(subset, key):
            wanted.setdefault(column, set()).add(int(code))
        wanted.setdefault("mongo_id", set()).add(int(winner))
    values: dict[str, dict[int, Any]] = {}
    for column, want in wanted.items():
        coded = codes[column]
        where = np.flatnonzero(np.isin(coded, np.fromiter(want, dtype=np.int64, count=len(want))))
        found, first = np.unique(coded[where], return_index=True)
        picked = _column(paths, column).take(pa.array(where[first]))
        if column in FOLDED:
            picked = _casefold(picked)
        values[column] = dict(zip(found.tolist(), picked.to_pylist()))
    return [(row, code, tf.duplicate_reason(what, tuple(values[c][int(v)] for c, v in zip(subset, key)),
                                            values["mongo_id"][int(winner)]))
            for row, code, (what, subset, key, winner) in losers]


TRANSFORM_WORKERS_MIN_ROWS = 100_000  # below this an export is accepted in-process (a worker costs ~1 s to start)


def transform_workers(rows: int, row_groups: int) -> int:
    """Processes that accept an export's batches side by side: AUTHMIGRATE_TRANSFORM_WORKERS,
    else the machine's cores; 1 (in-process) for an export of fewer than
    ``TRANSFORM_WORKERS_MIN_ROWS`` documents, never more than its row groups."""
    raw = os.environ.get("AUTHMIGRATE_TRANSFORM_WORKERS", "").strip()
    if raw and (not raw.isdigit() or int(raw) < 1):
        raise ConfigError(f"AUTHMIGRATE_TRANSFORM_WORKERS must be a positive integer, got {raw!r}")
    wanted = int(raw) if raw else len(os.sched_getaffinity(0))
    if rows < TRANSFORM_WORKERS_MIN_ROWS:
        return 1
    return max(1, min(wanted, row_groups))


def _row_group_parts(paths: list[str], parts: int, skip: int = 0) -> list[dict]:
    """The export's row groups split into at most ``parts`` runs of consecutive row groups of
    about equal rows, each with the export position of its first document; after the first
    ``skip`` documents (a row-group boundary), if given."""
    units = [(path, i, meta.row_group(i).num_rows)
             for path in paths for meta in [pq.ParquetFile(path).metadata] for i in range(meta.num_row_groups)]
    skipped = 0
    while units and skipped < skip:
        skipped += units.pop(0)[2]
    if skipped != skip:
        raise ValueError(f"{skip} documents do not end at a row group of the export")
    total = sum(n for *_, n in units)
    out: list[dict] = []
    current: list[tuple] = []
    start = position = skip

    def close() -> None:
        groups: dict[str, list[int]] = {}
        for path, i, _ in current:
            groups.setdefault(path, []).append(i)
        out.append({"files": list(groups.items()), "start": start, "rows": position - start})

    for unit in units:
        current.append(unit)
        position += unit[2]
        if len(out) < parts - 1 and position - skip >= total * (len(out) + 1) // parts:
            close()
            current, start = [], position
    if current:
        close()
    return out


def accept_part(files: list[tuple[str, list[int]] | str], start: int, out: Path, batch_size: int,
                what: str = "transform users") -> dict:
    """Step 1 of the users transform over some of the export (:func:`accept_batches`).
    ``files``: export files, or (file, row groups); ``start``: the export position of the first."""
    files = [(f, None) if isinstance(f, str) else f for f in files]
    metas = [pq.ParquetFile(p).metadata for p, _ in files]
    total = sum(m.num_rows if groups is None else sum(m.row_group(i).num_rows for i in groups)
                for m, (_, groups) in zip(metas, files))
    batches = (batch for path, groups in files
               for batch in iter_batches(path, max(batch_size, MIN_TRANSFORM_BATCH), ["bson"], row_groups=groups))
    return accept_batches(batches, start, out, total, what)


def accept_batches(batches, start: int, out: Path, total: int | None, what: str) -> dict:
    """Step 1 of the users transform over consecutive batches of the export (raw BSON in their
    first column; ``start`` is the export position of the first document): per batch, decode,
    count into the census, coerce (``users_accept``) and explode; write the accepted rows
    (``users.accepted``) and their join rows (``user_roles.accepted``), each tagged with its
    document's position in the export. ``rows`` in the result: the documents it took."""
    progress = Progress(what, total)
    census = FieldCensus()
    part = {"rejects": [], "undecodable": [], "element_rejects": [], "wildcard_rows": [], "decoded": 0,
            "newest": None, "census": census, "start": start}
    legacy_parts: list[pd.DataFrame] = []
    position = start
    accepted = FrameWriter(out / "users.accepted.parquet")
    joined = FrameWriter(out / "user_roles.accepted.parquet")
    with accepted, joined:
        for batch in batches:
            positions: list[int] = []
            docs, bad = tf.decode_documents(batch.column(0).to_pylist(), positions)
            frame = tf.documents_frame(docs, COLLECTIONS["users"].projection)
            count_into(census, docs, frame, "users")
            part["undecodable"] += bad
            part["decoded"] += len(docs)
            stamps = [t for t in frame["updatedAt"] if isinstance(t, dt.datetime)]
            if stamps:
                newest = part["newest"]
                part["newest"] = max(stamps) if newest is None else max(newest, *stamps)
            docs = None  # the frame keeps what the rules need
            users, batch_rejects = tf.users_accept(frame)
            part["rejects"] += batch_rejects
            user_roles, el_rejects, el_counts, legacy = tf.users_explode(users, frame)
            where = [position + i for i in positions]  # frame row → position in the export
            typed = tf._typed(users, "users")
            typed["_row"] = pd.array([where[r] for r in users["_row"]], dtype="int64")
            typed["_elements"] = pd.array([len(v) for v in users["_roles"]], dtype="int64")
            accepted.write(typed)
            roles = tf._typed(user_roles, "user_roles")
            roles["_row"] = pd.array([where[r] for r in user_roles["_row"]], dtype="int64")
            joined.write(roles)
            part["element_rejects"] += [{**r, "_row": where[r["_row"]]} for r in el_rejects]
            part["wildcard_rows"] += [where[r] for r in el_counts["_wildcard_rows"]]
            legacy_parts.append(legacy.assign(_row=[where[r] for r in legacy["_row"]]))
            position += batch.num_rows
            progress.advance(batch.num_rows)
        part["accepted"] = str(accepted.close())
        part["joined"] = str(joined.close())
    progress.log(final=True)
    part["rows"] = position - start
    part["legacy"] = pd.concat(legacy_parts, ignore_index=True) if legacy_parts else \
        pd.DataFrame({"app_id": [], "user_id": [], "_row": []})
    return part


def start_worker(spec: dict, *options: str, stdin=None):
    """``python -m authmigrate.transform_worker [options] SPEC`` in a process of its own that dies
    with this one (``stdin``: a pipe, or none)."""
    import subprocess
    import sys

    from authmigrate.tasks import die_with_parent

    # the package's folder (Airflow puts its plugins folder on sys.path, not on PYTHONPATH)
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", "authmigrate.transform_worker", *options, json.dumps(spec)],
                            env=env, stdin=subprocess.DEVNULL if stdin is None else stdin,
                            preexec_fn=die_with_parent)


def _accept_in_workers(paths: list[str], out: Path, batch_size: int, workers: int, skip: int = 0) -> list[dict]:
    """:func:`accept_part` over ``workers`` runs of the export's row groups (after its first
    ``skip`` documents), each in a process of its own (``python -m authmigrate.transform_worker``,
    dying with this one), side by side; their results in export order. A failed worker fails the
    task (its retry redoes every part)."""
    parts = _row_group_parts(paths, workers, skip)
    procs = []
    for k, part in enumerate(parts):
        folder = out / f"part-{k:03d}"
        folder.mkdir(exist_ok=True, mode=0o700)
        spec = {"files": part["files"], "start": part["start"], "out": str(folder), "batch_size": batch_size,
                "what": f"transform users, part {k + 1}/{len(parts)}", "result": str(folder / "result.pickle")}
        procs.append((start_worker(spec), spec))
    log.info("transform users: %d documents accepted by %d processes side by side (rows per part: %s)",
             sum(p["rows"] for p in parts), len(parts), [p["rows"] for p in parts])
    failed = [(spec["what"], proc.wait()) for proc, spec in procs]
    failed = [(what, code) for what, code in failed if code != 0]
    if failed:
        raise RuntimeError(f"transform users: worker processes failed {failed} (their errors are in the log above)")
    results = []
    for _, spec in procs:
        with open(spec["result"], "rb") as fh:
            results.append(pickle.load(fh))
        os.unlink(spec["result"])
    return results


def _loser_rejects(paths: list[str], batch_size: int, losers: list[tuple[int, str, str]]) -> list[dict]:
    """The rejects of the documents that lost a uniqueness contest, in export order: each
    decoded again from the export to word it."""
    import bson

    explained = {row: (code, reason) for row, code, reason in losers}
    rejects, position = [], 0
    for batch in raw_batches(paths, max(batch_size, MIN_TRANSFORM_BATCH)):
        for i in sorted(r - position for r in explained if position <= r < position + batch.num_rows):
            code, reason = explained[position + i]
            doc = bson.decode(batch.column(0)[i].as_py(), codec_options=tf.CODEC)
            rejects.append(tf._reject_row(doc, "document", None, code, reason))
        position += batch.num_rows
    return rejects


def _write_survivors(name: str, sources: list[Path], out: Path, batch_size: int, lost: pa.Array,
                     keep: frozenset[Path] = frozenset()) -> tuple[Path, int]:
    """``<name>.parquet``: the accepted rows of the workers' files (``sources``, removed after,
    but for those in ``keep``) minus the rows of the documents ``lost`` (export positions), with the exact dtypes of
    ``transform._typed``. Returns its path and, for users, the array elements its rows hold."""
    empty = tf._typed(pd.DataFrame(), name)
    schema = pa.Schema.from_pandas(empty, preserve_index=False)  # with the pandas metadata of exact dtypes
    elements = 0
    with FrameWriter(out / f"{name}.parquet") as writer:
        for source in sources:
            for batch in iter_batches(source, max(batch_size, MIN_TRANSFORM_BATCH)):
                batch = batch.filter(pc.invert(pc.is_in(batch.column("_row"), value_set=lost)))
                if name == "users":
                    elements += pc.sum(batch.column("_elements")).as_py() or 0
                table = pa.Table.from_batches([batch.select(list(empty.columns))])
                if table.schema.remove_metadata() == schema.remove_metadata():  # written from typed frames
                    writer.write_table(table.replace_schema_metadata(schema.metadata))
                else:
                    writer.write(tf._typed(table.to_pandas(), name))  # exact dtypes, e.g. Int64
        path = writer.close(empty)
    for source in sources:
        if source not in keep:
            source.unlink()
    return path, elements


def accepted_prefix(paths: list[str], prefix: dict | None) -> dict | None:
    """The first step's result for the export's first documents, as the export task left it
    (``export.AcceptWhileReading``), when it is whole and of this very export; else None (with a
    line saying why: the transform then accepts those documents itself)."""
    if not prefix or not prefix.get("rows"):
        return None
    try:
        with open(prefix["result"], "rb") as fh:
            part = pickle.load(fh)
        if part["start"] != 0 or part["rows"] != prefix["rows"]:
            raise ValueError(f"it holds {part['rows']} documents from {part['start']}, the export names "
                             f"{prefix['rows']} from 0")
        missing = [f for f in (part["accepted"], part["joined"]) if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(f"its files {missing} are gone")
        _row_group_parts(paths, 1, part["rows"])  # the documents end at a row group of the export
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        log.warning("transform users: the rows the export accepted while reading are not usable (%s): "
                    "accepting every document here", exc)
        return None
    return part


def transform_users_batched(paths: str | list[str], out, batch_size: int, census: FieldCensus | None = None,
                            prefix: dict | None = None
                            ) -> tuple[tf.Result, dict[str, str], dt.datetime | None, list[dict]]:
    """The users transform on an export of any size, holding one batch of documents at a time
    (plus the key columns of the whole collection), with exactly the result of
    :func:`transform.transform_users` on the whole export (tests/unit/test_transform_batched.py).

    1. :func:`accept_part`, over the whole export, or over runs of its row groups in
       :func:`transform_workers` processes side by side.
    2. Rank the whole collection's key columns (``coded_duplicate_plan``): the documents that lose a
       uniqueness contest; only those are decoded again, to explain their rejects.
    3. Stream the accepted rows once more, leaving out the losers.
    ``prefix``: step 1 for the export's first documents, done by the export task while it read
    (:func:`accepted_prefix`); step 1 then covers only the documents after them.
    Returns the result (tables hold only the small ones; users and user_roles are files),
    the paths of those files, the newest ``updatedAt`` seen and the undecodable documents' rejects."""
    paths = _paths(paths)
    first = accepted_prefix(paths, prefix)
    skip = first["rows"] if first else 0
    rest = _row_group_parts(paths, 1, skip)  # the row groups after the prefix, as one part (none if none)
    remaining = sum(p["rows"] for p in rest)
    if first:
        log.info("transform users: the export accepted its first %d documents while reading; %d remain",
                 skip, remaining)
    workers = transform_workers(remaining, sum(len(groups) for p in rest for _, groups in p["files"]))
    parts = [first] if first else []
    if remaining and workers > 1:
        parts += _accept_in_workers(paths, out, batch_size, workers, skip)
    elif remaining or not first:
        parts.append(accept_part(rest[0]["files"] if rest else [], skip, out, batch_size))
    kept = frozenset(Path(first[k]) for k in ("accepted", "joined")) if first else frozenset()
    release()
    rejects = [r for p in parts for r in p["rejects"]]
    undecodable = [r for p in parts for r in p["undecodable"]]
    element_rejects = [r for p in parts for r in p["element_rejects"]]
    wildcard_rows = [r for p in parts for r in p["wildcard_rows"]]
    decoded = sum(p["decoded"] for p in parts)
    stamps = [p["newest"] for p in parts if p["newest"] is not None]
    newest = max(stamps) if stamps else None
    if census is not None:
        for p in parts:
            census.merge(p["census"])
    accepted_paths = [Path(p["accepted"]) for p in parts]
    joined_paths = [Path(p["joined"]) for p in parts]
    legacy = pd.concat([p["legacy"] for p in parts], ignore_index=True)
    parts = None

    codes, rows = _coded_keys(accepted_paths)
    losers = _decoded(accepted_paths, codes, tf.coded_duplicate_plan(codes, rows, tf.USER_DUPLICATES))
    codes = rows = None
    release()
    lost = {row for row, _, _ in losers}
    lost_array = pa.array(sorted(lost), pa.int64())
    # the survivors' two files are written by threads (Arrow filters and Parquet encodes outside
    # the GIL) while this one words the losers' rejects: 1M users, 7.8 -> 6.2 s for a part of the task
    # that otherwise runs on one core
    with ThreadPoolExecutor(2, thread_name_prefix="survivors") as pool:
        written = {name: pool.submit(_write_survivors, name, sources, out, batch_size, lost_array, kept)
                   for name, sources in (("users", accepted_paths), ("user_roles", joined_paths))}
        rejects += _loser_rejects(paths, batch_size, losers)
        log.info("transform users: %d documents lose a uniqueness contest (duplicate key, username, email "
                 "or identity)", len(lost))
        survivors = {name: future.result()[0] for name, future in written.items()}
        elements = written["users"].result()[1]
    for folder in {path.parent for path in accepted_paths} - {Path(out)} - {path.parent for path in kept}:
        # the workers' part folders
        shutil.rmtree(folder)
    role_ids = pq.read_table(survivors["user_roles"], columns=["role_id"]).column("role_id")
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


def _in_export(accepted: pd.DataFrame, positions: np.ndarray, start: int) -> np.ndarray:
    """The export position of each accepted row (its ``_row`` is its document's in the batch);
    int64 even for a batch whose every document was rejected."""
    return positions[accepted["_row"].to_numpy(dtype=np.int64)] + start


def transform_declared_batched(collection: str, paths: str | list[str], out: Path, batch_size: int,
                               known: dict, census: FieldCensus | None = None
                               ) -> tuple[tf.Result, dict[str, str], dt.datetime | None, list[dict]]:
    """A declared collection's full transform holding one batch of documents at a time (plus
    the whole collection's key columns), with exactly the result of
    :func:`transform.transform_declared` on the whole export (tests/unit/test_transform_batched.py).

    1. Per batch, :func:`transform.declared_accept`; keep the accepted rows' key, unique and
       order columns, and spill the batch (its documents frame, accepted frame and rejects) to a
       scratch file. Rank the key columns over the whole collection (``duplicate_plan``).
    2. Per spilled batch, reject the contests' losers, and write the rest's rows
       (:func:`transform.declared_rows`) in export order, as the batched users transform does
       (sorting the files as the one-frame transform sorts its frames cost ~110 MiB at 1M).
    Returns the result (its tables are files), their paths, the newest ``updatedAt`` seen and
    the undecodable documents' rejects."""
    spec = COLLECTIONS[collection]
    paths = _paths(paths)
    columns = list(dict.fromkeys(c for subset, order, *_ in spec.duplicate_passes for c in (*subset, *order)))
    keys, rejects, undecodable, arrays, newest, decoded, batches = [], [], [], {}, None, 0, 0
    names = [spec.table, *(a.table for a in spec.arrays)]
    with ExitStack() as stack:
        # each batch's accepted frame, pickled to a scratch file of this process until the contests
        # are decided: decoding and accepting every document twice took ~40 % of the task
        spill = stack.enter_context(tempfile.TemporaryFile(prefix=f"authmigrate-{collection}-"))
        for start, positions, docs, bad, frame in _document_batches(paths, collection, batch_size,
                                                                    f"transform {collection}, accept"):
            if census is not None:
                count_into(census, docs, frame, collection)
            undecodable += bad
            decoded += len(docs)
            stamps = [t for t in frame.get("updatedAt", ()) if isinstance(t, dt.datetime)]
            if stamps:
                newest = max(stamps) if newest is None else max(newest, *stamps)
            docs = None
            accepted, batch_rejects, narrowed = tf.declared_accept(spec, frame, known)
            where = _in_export(accepted, positions, start)
            keys.append(accepted[[*columns, "mongo_id"]].assign(_row=where))
            # the documents only as their raw BSON (all the rest of their frame reads): 0.11 -> 0.005 s per 10,000
            pickle.dump((frame[["_doc"]], accepted, where, batch_rejects, narrowed), spill, pickle.HIGHEST_PROTOCOL)
            batches += 1
        keys = pd.concat(keys, ignore_index=True) if keys else pd.DataFrame(columns=[*columns, "mongo_id", "_row"])
        losers = {row: (code, reason) for row, code, reason in tf.duplicate_plan(keys, spec.duplicate_passes)}
        lost = np.fromiter(losers, dtype=np.int64, count=len(losers))
        keys = None
        log.info("transform %s: %d documents lose a uniqueness contest", collection, len(losers))

        spill.seek(0)
        progress = Progress(f"transform {collection}, rows", decoded)
        writers = {name: stack.enter_context(FrameWriter(out / f"{name}.parquet")) for name in names}
        for _ in range(batches):
            sources, accepted, where, batch_rejects, narrowed = pickle.load(spill)
            losing = np.isin(where, lost)
            for row, local in zip(where[losing].tolist(), accepted["_row"][losing].tolist()):
                code, reason = losers[row]
                batch_rejects.append(tf._reject_row(sources["_doc"].iat[local], "document", None, code, reason))
            tables, counts = tf.declared_rows(spec, accepted[~losing], sources, narrowed, batch_rejects, sort=False)
            rejects += batch_rejects
            for name, table in tables.items():
                writers[name].write(table)
            for name, c in counts.items():
                arrays[name] = {k: arrays.get(name, {}).get(k, 0) + v for k, v in c.items()}
            progress.advance(len(sources))
        progress.log(final=True)
        files = {name: writers[name].close(tf._typed(pd.DataFrame(), name)) for name in names}
    for a in spec.arrays:
        arrays.setdefault(a.table, {"array_elements": 0, "rejected_elements": 0, "wildcard_elements": 0})
    result = tf._finish(decoded, rejects, {}, {"arrays": arrays} if spec.arrays else {})
    result.counts["rows"] = {name: pq.ParquetFile(files[name]).metadata.num_rows for name in names}
    return result, {name: str(path) for name, path in files.items()}, newest, undecodable


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
    if spec.module is None and exported.get("mode") != "incremental":
        return _transform_declared_file(cfg, collection, exported, upstream)
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
    result, files, newest, undecodable = transform_users_batched(exported["paths"], out, cfg.batch_size, census,
                                                                 exported.get("accepted"))
    undecodable += file_rejects(exported)
    return _outputs("users", out, result, files, undecodable, newest, False, None, None,
                    collection_census(census, "users"))


def _transform_declared_file(cfg: RunConfig, collection: str, exported: dict, upstream: dict[str, dict | None]) -> dict:
    out = collection_dir(cfg, collection, "transform")
    census = FieldCensus()
    known = {dep: _keys(cfg, dep, upstream.get(dep)) for dep in COLLECTIONS[collection].depends_on}
    result, files, newest, undecodable = transform_declared_batched(collection, exported["paths"], out,
                                                                    cfg.batch_size, known, census)
    undecodable += file_rejects(exported)
    return _outputs(collection, out, result, files, undecodable, newest, False, None, None,
                    collection_census(census, collection))


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
