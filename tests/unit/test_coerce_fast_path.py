"""The column-at-once fast paths of the coercers: for any mix of values, ``_coerce`` gives the
rows, values and rejects (same reasons, same order) that the per-value rules give document by
document — the fast path only decides which rows may skip them."""
from __future__ import annotations

import datetime as dt

import pandas as pd
from bson import Decimal128, ObjectId
from bson.datetime_ms import DatetimeMS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authmigrate.transform import MAX_TEXT, RULES, Reject, _coerce, _reject_row, documents_frame

UTC = dt.timezone.utc
ODD_VALUES = st.one_of(
    st.none(), st.just(""), st.text(max_size=8), st.just("a\x00b"), st.just("x" * (MAX_TEXT + 1)),
    st.just(" true "), st.just("12"), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.sampled_from([0, 1, 2 ** 31]),
    st.floats(allow_nan=True), st.just(7.0),
    st.datetimes(timezones=st.just(UTC)), st.datetimes(), st.just(DatetimeMS(2 ** 62)),
    st.just(Decimal128("3")), st.lists(st.text(max_size=3), max_size=3), st.dictionaries(st.text(max_size=2),
                                                                                          st.integers(), max_size=2),
    st.just("2024-06-01T12:00:00Z"),
)


def per_value(docs: pd.DataFrame, rules) -> tuple[pd.DataFrame, list[dict]]:
    """The rules applied document by document, as _coerce did before it had fast paths."""
    out = {col: [] for col in rules}
    keep, rejects = [], []
    ids = docs["_id"].tolist()
    for i in range(len(docs)):
        row = []
        try:
            if ids[i] is None or "\x00" in ids[i]:
                raise Reject("invalid_document_id", "the document's _id is null or contains a NUL byte; "
                                                    "give it a proper _id at the source")
            for col, (src, fn) in rules.items():
                row.append(fn(docs[src].iat[i]))
        except Reject as r:
            rejects.append(_reject_row(docs["_doc"].iat[i], "document", None, r.code, r.reason))
            continue
        keep.append(i)
        for col, value in zip(rules, row):
            out[col].append(value)
    frame = pd.DataFrame({col: pd.Series(vals, dtype=object) for col, vals in out.items()})
    frame["mongo_id"] = pd.Series([ids[i] for i in keep], dtype=object)
    frame["_row"] = keep
    return frame, rejects


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_fast_paths_change_no_outcome(data):
    collection = data.draw(st.sampled_from(sorted(RULES)))
    rules = RULES[collection]
    fields = [src for src, _ in rules.values()]
    clean = {"string": "v", "bool": True, "int": 5, "date": dt.datetime(2024, 1, 2, tzinfo=UTC), "array": ["r"]}
    n = data.draw(st.integers(1, 12))
    docs = []
    for i in range(n):
        # mostly clean documents (the fast path's rows) with an odd value in at most two fields:
        # a row with an odd value anywhere takes the per-value rules as a whole
        odd = set(data.draw(st.lists(st.sampled_from(fields), max_size=2)))
        doc = {"_id": ObjectId(f"{i + 1:024x}")}
        for (src, fn) in rules.values():
            if src in odd:
                doc[src] = data.draw(ODD_VALUES)
            elif data.draw(st.booleans()):
                doc[src] = clean[fn.expects[0]] if fn.expects[0] != "string" else f"v{i}"
        docs.append(doc)
    frame = documents_frame(docs, fields)
    got, got_rejects = _coerce(frame, rules)
    want, want_rejects = per_value(frame, rules)
    assert got_rejects == want_rejects
    assert list(got.columns) == list(want.columns) and list(got["_row"]) == list(want["_row"])
    for col in want.columns:
        for a, b in zip(got[col].tolist(), want[col].tolist()):
            assert same(a, b), (col, a, b)


def test_a_clean_column_never_takes_the_per_value_rules():
    """The fast path is taken: a column of plain values needs no call of the per-value rule."""
    calls = []
    (src, fn) = RULES["users"]["username"]

    def counting(v):
        calls.append(v)
        return fn(v)

    counting.fast = fn.fast
    docs = documents_frame([{"_id": ObjectId(f"{i + 1:024x}"), "username": f"u{i}"} for i in range(50)]
                           + [{"_id": ObjectId(f"{99:024x}"), "username": 3}], ["username"])
    frame, rejects = _coerce(docs, {"username": (src, counting)})
    assert calls == [3], "only the row its fast path left goes through the rule"
    assert len(frame) == 50 and [r["reason_code"] for r in rejects] == ["invalid_type"]


EVERY_ODD_VALUE = [None, "", "v", " true ", "12", "a\x00b", "x" * (MAX_TEXT + 1), True, False, 0, 1, 5, -1,
                   2 ** 31 - 1, 2 ** 31, -2 ** 31, -2 ** 31 - 1, 2 ** 63 - 1, 2 ** 63, -2 ** 63, -2 ** 63 - 1,
                   7.0, 7.5, float("nan"), float("inf"), Decimal128("3"), Decimal128("3.5"),
                   dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 2), DatetimeMS(2 ** 62),
                   "2024-06-01T12:00:00Z", 1_700_000_000_000, [], ["r", 3], {"a": 1}, ObjectId()]


def test_every_field_of_every_collection_against_every_odd_value():
    """Exhaustive over the declared fields: one document per (field, value), the others clean."""
    clean = {"string": "v", "bool": True, "int": 5, "date": dt.datetime(2024, 1, 2, tzinfo=UTC), "array": ["r"]}
    for collection, rules in RULES.items():
        fields = [src for src, _ in rules.values()]
        docs = []
        for src, _ in rules.values():
            for value in EVERY_ODD_VALUE:
                doc = {f: clean[fn.expects[0]] for f, fn in rules.values()}
                doc.update({"_id": ObjectId(), src: value})
                docs.append(doc)
        frame = documents_frame(docs, fields)
        got, got_rejects = _coerce(frame, rules)
        want, want_rejects = per_value(frame, rules)
        assert got_rejects == want_rejects, collection
        assert list(got["_row"]) == list(want["_row"]), collection
        for col in want.columns:
            for a, b in zip(got[col].tolist(), want[col].tolist()):
                assert same(a, b), (collection, col, a, b)
