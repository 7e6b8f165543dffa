"""Field-level verification: prove content, not just counts.

For every loaded row, a canonical hash of its mapped fields is computed from the transform's
output (the data that was exported and mapped) and compared, set-based in SQL, with the same
hash computed inside PostgreSQL from the loaded row. A full export read from a transform file
is first compared whole: the row counts and a multiset checksum (the sum of the first 60 bits of
every row's md5) of the file and of the loaded table, PostgreSQL summing while Python hashes the
file. Only when they differ, or for a partial export, are the rows compared by key, which names
them. Join tables are compared per parent
(the sorted set of child keys); from a transform file, its (parent, child) pairs are copied
as they are and PostgreSQL joins them with the loaded pairs: a parent with a pair on one side
only, or exported twice, mismatches. Each collection's verify task checks two tables at a
time, each on a connection of its own. A timezone
shift, a truncated string or a swapped column fails the run, and the report names the first
mismatching ids and fields.

Canonical text of a value: NULL → ``~``; text → ``<length>:<text>``; boolean → ``1``/``0``;
integer → decimal; timestamp → microseconds since the epoch; inet → its host text.
Fields are concatenated in table order; md5 over the UTF-8 bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd
from psycopg import sql

from authmigrate.db import q
from authmigrate.registry import TABLES, Table

log = logging.getLogger("authmigrate")


def _canonical_column(series: pd.Series, kind: str) -> list[str]:
    if kind == "timestamp":
        micros = series.astype("datetime64[us, UTC]").astype("int64")
        return [("~" if na else str(v)) for v, na in zip(micros, series.isna())]
    out = []
    for v in series.astype(object):
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            out.append("~")
        elif kind in ("text", "inet"):
            out.append(f"{len(v)}:{v}")
        elif kind == "bool":
            out.append("1" if v else "0")
        else:
            out.append(str(int(v)))
    return out


def row_hashes(table: Table, df: pd.DataFrame) -> list[tuple[str, str]]:
    columns = [_canonical_column(df[c], k) for c, k in table.columns.items()]
    keys = df[table.key[0]].tolist()
    return [(k, hashlib.md5("".join(parts).encode()).hexdigest()) for k, parts in zip(keys, zip(*columns))]


def _canonical_arrow(column, kind: str):
    """:func:`_canonical_column` in Arrow, for a column read from a transform file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "timestamp":
        if pa.types.is_timestamp(column.type) and column.type.unit == "us" and column.type.tz is not None:
            # what the transform writes: the stored value is the microseconds since the epoch
            return pc.fill_null(column.cast(pa.int64()).cast(pa.large_string()), pa.scalar("~", pa.large_string()))
        # any other unit or zone: the pandas rule, so that they convert exactly alike
        return pa.array(_canonical_column(column.to_pandas(), kind), pa.large_string())

    def s(text: str):
        return pa.scalar(text, pa.large_string())

    if kind in ("text", "inet"):
        text = column.cast(pa.large_string())
        out = pc.binary_join_element_wise(pc.utf8_length(text).cast(pa.large_string()), text, s(":"))
    elif kind == "bool":
        out = pc.if_else(column, s("1"), s("0"))
    else:
        out = column.cast(pa.int64()).cast(pa.large_string())
    return pc.fill_null(out, s("~"))


def _arrow_text(table: Table, batch):
    """Each row's canonical text, built column by column in Arrow, as bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = [_canonical_arrow(batch.column(c), k) for c, k in table.columns.items()]
    return pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string())).cast(pa.large_binary())


def _arrow_hashes(table: Table, batch) -> list[str]:
    """The md5 of each row's canonical text (:func:`_arrow_text`); only the md5 runs per row
    (a million users: 2.8 s instead of 5.5 s)."""
    md5 = hashlib.md5
    return [md5(t).hexdigest() for t in _arrow_text(table, batch).to_pylist()]


CHECKSUM_BITS = 60  # of each row's md5, summed: PostgreSQL's bigint holds them, and numeric their sum


def checksum_add(digests: bytes) -> int:
    """The sum of the first :data:`CHECKSUM_BITS` bits of each 16-byte md5 digest in ``digests``
    (concatenated), summed in numpy: halves of 30 bits each fit uint64 sums of 2**34 rows."""
    import numpy as np

    if not digests:
        return 0
    first = np.frombuffer(digests, dtype=">u8")[::2] >> np.uint64(64 - CHECKSUM_BITS)
    half = np.uint64(CHECKSUM_BITS // 2)
    high, low = first >> half, first & np.uint64((1 << (CHECKSUM_BITS // 2)) - 1)
    return (int(high.sum(dtype=np.uint64)) << (CHECKSUM_BITS // 2)) + int(low.sum(dtype=np.uint64))


def file_checksum(table: Table, path) -> tuple[int, int]:
    """(rows, checksum) of a transform file: what :file:`verify_checksum.sql` gives of the loaded
    table when it holds the same rows, each once."""
    from authmigrate.staging import iter_batches

    md5 = hashlib.md5
    rows, total = 0, 0
    for batch in iter_batches(path, HASH_BATCH, list(table.columns)):
        total += checksum_add(b"".join([md5(t).digest() for t in _arrow_text(table, batch).to_pylist()]))
        rows += batch.num_rows
    return rows, total


def row_hashes_arrow(table: Table, batch) -> list[tuple[str, str]]:
    """:func:`row_hashes` of an Arrow record batch (what :func:`_copy_expected` sends)."""
    return list(zip(batch.column(table.key[0]).to_pylist(), _arrow_hashes(table, batch)))


def child_hashes(table: Table, df: pd.DataFrame) -> list[tuple[str, str]]:
    """Per parent: md5 of its children's ``<length>:<key>`` joined by commas, in code-point
    order (PostgreSQL side: ``ORDER BY ... COLLATE "C"``)."""
    parent, child = table.parent_column, table.child_column
    if df.empty:
        return []
    pairs = df[[parent, child]].astype(object).sort_values([parent, child], kind="stable")
    keys = pairs[parent].tolist()
    tokens = [f"{len(c)}:{c}" for c in pairs[child].tolist()]
    out, start = [], 0
    for i in range(1, len(keys) + 1):  # one pass over the sorted pairs, a run per parent
        if i == len(keys) or keys[i] != keys[start]:
            out.append((keys[start], hashlib.md5(",".join(tokens[start:i]).encode()).hexdigest()))
            start = i
    return out


def _row_text(table: Table) -> sql.Composed:
    parts = []
    for col, kind in table.columns.items():
        c = sql.Identifier(col)
        if kind == "text":
            expr = sql.SQL("length({c})::text || ':' || {c}").format(c=c)
        elif kind == "inet":
            expr = sql.SQL("length(host({c}))::text || ':' || host({c})").format(c=c)
        elif kind == "bool":
            expr = sql.SQL("{c}::int::text").format(c=c)
        elif kind == "int":
            expr = sql.SQL("{c}::text").format(c=c)
        else:
            expr = sql.SQL("(extract(epoch FROM {c}) * 1000000)::bigint::text").format(c=c)
        parts.append(sql.SQL("coalesce({}, '~')").format(expr))
    return sql.SQL(" || ").join(parts)


def _differences(conn, table: Table, df: pd.DataFrame, keys: list[str]) -> list[str]:
    """Name the fields that differ for a few mismatching keys."""
    cols = table.column_names
    key = table.key[0]
    loaded = {r[0]: r for r in conn.execute(
        q("verify_fetch_rows", columns=cols, target=table.name, key=key), {"keys": keys})}
    expected = df.set_index(key, drop=False)
    out = []
    for k in keys[:5]:
        if k not in loaded:
            out.append(f"{k}: missing from {table.name}")
            continue
        if k not in expected.index:
            out.append(f"{k}: in {table.name} but not in the export")
            continue
        row = expected.loc[k]
        fields = []
        for i, (c, kind) in enumerate(table.columns.items()):
            got = loaded[k][i]
            got = str(got) if kind == "inet" and got is not None else got
            if (_canonical_column(pd.Series([row[c]], dtype=df[c].dtype), kind)
                    != _canonical_column(pd.Series([got], dtype=df[c].dtype), kind)):
                fields.append(c)
        out.append(f"{k}: {', '.join(fields) or 'fields differ'}")
    return out


HASH_BATCH = 10_000  # rows hashed at a time from a file: a row group of the transform's files
# (50,000 held ~75 MiB more while verifying the 1M users, and was no faster)


def _expected_hashes(table: Table, expected: pd.DataFrame):
    """(key, hash) pairs of a DataFrame's rows, or of a join table's parents."""
    return child_hashes(table, expected) if table.sync == "children" else row_hashes(table, expected)


def _expected_rows(table: Table, expected, keys: list[str]) -> pd.DataFrame:
    if isinstance(expected, pd.DataFrame):
        return expected
    import pyarrow.parquet as pq

    return pq.read_table(expected, filters=[(table.key[0], "in", keys)]).to_pandas()


def _parent_runs(column, runs: int, last):
    """``runs`` plus the runs of equal values in ``column`` (one that continues the previous
    batch's last value is not new); the new last value. In a transform file each parent's join
    rows are adjacent (sorted, or written with their document), so the runs are its parents,
    counted without holding a million of them."""
    import pyarrow.compute as pc

    if not len(column):
        return runs, last
    changes = pc.sum(pc.not_equal(column.slice(1), column.slice(0, len(column) - 1))).as_py() or 0
    first = column[0].as_py()
    return runs + changes + (last is None or first != last), column[len(column) - 1].as_py()


def _copy_expected(conn, table: Table, path, expected: sql.Composable) -> int:
    """COPY the transform file's side into ``expected`` in PostgreSQL's binary format (pgpq),
    a batch at a time: for a row table (key, hash), the canonical text built in Arrow
    (:func:`_canonical_arrow`) and only the md5 per row in Python; for a join table its
    (parent, child) pairs as they are (PostgreSQL aggregates them per parent, as it does the
    loaded ones). Returns the rows, or for a join table the parents (:func:`_parent_runs`)."""
    import pyarrow as pa
    from pgpq import ArrowToPostgresBinaryEncoder

    from authmigrate.staging import iter_batches

    text = pa.large_string()
    children = table.sync == "children"
    if children:
        columns = [table.parent_column, table.child_column]
        schema = pa.schema([("key", text), ("part", text)])
    else:
        columns = list(table.columns)
        schema = pa.schema([("key", text), ("hash", text)])
    encoder = ArrowToPostgresBinaryEncoder(schema)
    n, parents, last = 0, 0, None
    with conn.cursor() as cur, cur.copy(q("verify_expected_copy_binary", expected=expected,
                                          columns=tuple(schema.names))) as copy:
        copy.write(encoder.write_header())
        for batch in iter_batches(path, HASH_BATCH, columns):
            if children:
                arrays = [batch.column(columns[0]).cast(text), batch.column(columns[1]).cast(text)]
                parents, last = _parent_runs(arrays[0], parents, last)
            else:
                arrays = [batch.column(table.key[0]).cast(text), pa.array(_arrow_hashes(table, batch), text)]
            copy.write(encoder.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema)))
            n += batch.num_rows
        copy.write(encoder.finish())
    return parents if children else n


def whole_table(table_name: str, transformed: dict) -> bool:
    """Whether a transform's file holds the whole table (``verify_table``'s ``full``): not an
    incremental batch, nor a table merged by upsert. Only such a file is compared by checksum."""
    return TABLES[table_name].sync != "upsert" and transformed.get("mode") != "incremental"


def _loaded_checksum(conn, table: Table) -> tuple[int, int]:
    """(rows, checksum) of the loaded table (:file:`verify_checksum.sql`)."""
    rows, total = conn.execute(q("verify_checksum", target=table.name, row_text=_row_text(table))).fetchone()
    return int(rows), int(total)


def _checksum_file(path) -> Path:
    return Path(f"{path}.checksum.json")


def _file_identity(path) -> dict:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def save_file_checksums(tables: dict[str, str]) -> float:
    """Write :func:`file_checksum` of each transform file next to it (owner-only; the file's
    size and mtime bind it to that file). The load task calls this on a thread of its own while
    PostgreSQL copies and indexes, so that the verify task only sums the loaded side. Returns
    the seconds it took."""
    from authmigrate.staging import private_file

    started = time.monotonic()
    for name, path in tables.items():
        identity = _file_identity(path)
        rows, total = file_checksum(TABLES[name], path)
        with private_file(_checksum_file(path)) as fh:
            fh.write(json.dumps({"rows": rows, "checksum": str(total), **identity}).encode())
    return time.monotonic() - started


def _saved_checksum(path) -> tuple[int, int] | None:
    """The checksum :func:`save_file_checksums` wrote of this very file, if any."""
    try:
        saved = json.loads(_checksum_file(path).read_text())
    except (OSError, ValueError):
        return None
    if {k: saved.get(k) for k in ("size", "mtime_ns")} != _file_identity(path):
        return None
    return int(saved["rows"]), int(saved["checksum"])


def _checksums_match(conn, table: Table, path) -> tuple[int, bool]:
    """(the file's rows, whether the loaded table holds exactly the file's rows): their counts and
    multiset checksums (:file:`verify_checksum.sql`, :func:`file_checksum`) agree. PostgreSQL
    sums the loaded side on ``conn`` while this thread hashes the file: no copy of the file's
    side, no temporary table, no join (a million users in a 2-worker run: 9.2 s, where the keyed
    comparison took 16.2 s; docs/performance.md). With the checksum the load task saved of this
    very file, only the loaded side is summed. A wrong, missing, extra or repeated row changes
    the count or the sum; changes that cancel out need md5 prefixes whose sums collide."""
    import threading

    saved = _saved_checksum(path)
    if saved is not None:  # hashed by the load task
        return saved[0], _loaded_checksum(conn, table) == saved
    loaded: list = []
    failed: list[BaseException] = []

    def sum_loaded() -> None:
        try:
            loaded.append(_loaded_checksum(conn, table))
        except BaseException as exc:  # raised below, in the caller's thread
            failed.append(exc)

    summing = threading.Thread(target=sum_loaded, name=f"checksum-{table.name}")
    summing.start()
    try:
        rows, total = file_checksum(table, path)
    finally:
        summing.join()
    if failed:
        raise failed[0]
    return rows, loaded[0] == (rows, total)


def verify_table(conn, table_name: str, expected, full: bool = True) -> tuple[bool, str]:
    """Compare one table's loaded content with the transform output ``expected``: a DataFrame
    (hashed here, row by row), or the path of its Parquet file (:func:`_copy_expected`, read in
    batches so memory stays bounded), compared set-based in PostgreSQL with the loaded rows.
    ``full``: the export covered the whole table, so rows only in the target also mismatch."""
    table = TABLES[table_name]
    started = time.monotonic()
    from_file = not isinstance(expected, pd.DataFrame)
    if from_file and full:
        rows, same = _checksums_match(conn, table, expected)
        if same:
            return True, f"{rows} rows checksummed and compared in {time.monotonic() - started:.2f}s"
        # they differ: the keyed comparison below names the rows
    children = table.sync == "children"
    target = sql.Identifier("pg_temp", f"verify_{table.name}")
    scope = sql.SQL("") if full else sql.SQL("AND e.key IS NOT NULL")
    conn.execute(q("verify_expected_drop", expected=target))
    conn.execute(q("verify_expected_pairs_create" if from_file and children else "verify_expected_create",
                   expected=target))
    if from_file:
        hashed = _copy_expected(conn, table, expected, target)
    else:
        hashed = 0
        with conn.cursor() as cur, cur.copy(q("verify_expected_copy", expected=target)) as copy:
            for row in _expected_hashes(table, expected):
                copy.write_row(row)
                hashed += 1
    if children and from_file:
        # not a full export: only the exported parents' pairs count, on both sides
        pair_scope = sql.SQL("") if full else sql.SQL("AND coalesce(e.key, t.{}) IN (SELECT key FROM {})").format(
            sql.Identifier(table.parent_column), target)
        compare = q("verify_pairs", expected=target, target=table.name, parent=table.parent_column,
                    child=table.child_column, scope=pair_scope)
    elif children:
        compare = q("verify_children", expected=target, target=table.name,
                    parent=table.parent_column, child=table.child_column, scope=scope)
    else:
        compare = q("verify_rows", expected=target, target=table.name, key=table.key[0],
                    row_text=_row_text(table), scope=scope)
    bad = [r[0] for r in conn.execute(compare)]
    elapsed = time.monotonic() - started
    what = f"{hashed} {'parents' if children else 'rows'} hashed and compared in {elapsed:.2f}s"
    if not bad:
        return True, what
    detail = bad if children else _differences(conn, table, _expected_rows(table, expected, bad[:5]), bad)
    return False, f"{what}; first mismatches: {'; '.join(detail[:5])}"
