"""Verification hashes of a transform file, computed a batch at a time in Arrow (what the
validate task sends), equal the pandas rule's over the whole frame."""
from __future__ import annotations


import pandas as pd
import pytest

from authmigrate import verify
from authmigrate.registry import TABLES
from authmigrate.staging import write_frame


@pytest.mark.parametrize("slice_rows", [1, 4, 1000])
def test_row_hashes_from_a_file_equal_the_whole_frame(tmp_path, slice_rows):
    from authmigrate.transform import documents_frame, transform_users
    from authmigrate.registry import COLLECTIONS
    from tests.data import documents

    import pyarrow.parquet as pq

    users = transform_users(documents_frame(documents()["users"], COLLECTIONS["users"].projection)).tables["users"]
    path = write_frame(users, tmp_path / "users.parquet")
    table = TABLES["users"]
    streamed = [pair for batch in pq.ParquetFile(path).iter_batches(batch_size=slice_rows, columns=list(table.columns))
                for pair in verify.row_hashes_arrow(table, batch)]
    assert streamed == verify.row_hashes(table, users)


# ------------------------------------------------------------------ the Arrow row hashes
import datetime as dt  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from authmigrate.registry import Table  # noqa: E402

EVERY_KIND = Table("every_kind", key=("id",), columns={
    "id": "text", "name": "text", "ip": "inet", "flag": "bool", "count": "int", "at": "timestamp"})
ROW = st.fixed_dictionaries({
    "name": st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                                blacklist_characters="\x00"), max_size=6)),
    "ip": st.one_of(st.none(), st.sampled_from(["10.0.0.1", "::1", "2001:db8::7"])),
    "flag": st.one_of(st.none(), st.booleans()),
    "count": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    "at": st.one_of(st.none(), st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                                            timezones=st.just(dt.timezone.utc))),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, min_size=1, max_size=12))
def test_arrow_row_hashes_equal_the_pandas_rule_for_every_kind_of_value(tmp_path_factory, rows):
    """Unicode of every plane, empty text, NULLs, int64 extremes, timestamps from year 1 to 9999:
    the file path (Arrow) hashes exactly like the DataFrame path (and so like PostgreSQL)."""
    from authmigrate import transform as tf

    frame = pd.DataFrame([{"id": f"{i:04d}", **r} for i, r in enumerate(rows)], dtype=object)
    tables, tf.TABLES = tf.TABLES, {**tf.TABLES, "every_kind": EVERY_KIND}  # typed as the transform types
    try:  # (no monkeypatch fixture: hypothesis runs many examples per test function call)
        typed = tf._typed(frame, "every_kind")
    finally:
        tf.TABLES = tables
    path = write_frame(typed, tmp_path_factory.mktemp("h") / "every_kind.parquet")
    batch = next(pq.ParquetFile(path).iter_batches())
    assert isinstance(batch, pa.RecordBatch)
    assert verify.row_hashes_arrow(EVERY_KIND, batch) == verify.row_hashes(EVERY_KIND, typed)


def test_parent_runs_count_each_parent_once_across_batch_boundaries():
    parents = ["a", "a", "b", "b", "b", "c", "d", "d", "e"]
    for size in (1, 2, 3, 4, 9):
        runs, last = 0, None
        for i in range(0, len(parents), size):
            runs, last = verify._parent_runs(pa.array(parents[i:i + size], pa.large_string()), runs, last)
        assert (runs, last) == (5, "e")
    assert verify._parent_runs(pa.array([], pa.large_string()), 3, "x") == (3, "x")
