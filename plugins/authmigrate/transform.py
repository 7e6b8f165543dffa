"""Pure transforms: decoded MongoDB documents in, typed row sets and rejects out.

Nothing here touches a server. Every function takes a DataFrame of documents as built by
:func:`documents_frame` (one object column per projected field, ``_id`` and ``_doc``, the
original document used only to render rejects) and returns a :class:`Result`.

The rules (coercions and reject reasons) are listed in docs/data-contract.md; each has a
unit test in tests/unit/test_transform.py.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, compress
from typing import Any, Callable, Container, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from bson import Decimal128, ObjectId, json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.errors import InvalidBSON

from authmigrate.registry import (COLLECTIONS, KIND_DEFAULT, SECRET_FIELDS, SOURCES, TABLES, Collection, Field,
                                  JoinArray)

UTC = dt.timezone.utc
WILDCARD = "*"
MAX_TEXT = 65_536  # characters; longer strings in a mapped field reject the document
REJECT_PREVIEW = 2_000  # characters kept of each string in a reject's document
REJECT_COLUMNS = ["source_id", "scope", "element", "reason_code", "reason", "document"]
_SECRET_KEYS = {k.lower() for k in SECRET_FIELDS}
# a reject shows only fields some collection maps: the export reads whole documents, and a
# field outside the mapping (whatever it holds) is never copied into the target's rejects
MAPPED_FIELDS = frozenset({"_id"}.union(*(c.projection for c in COLLECTIONS.values())))
REDACTED = "[REDACTED]"

CODEC = CodecOptions(
    tz_aware=True,
    tzinfo=UTC,
    unicode_decode_error_handler="strict",
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)
_LENIENT = CODEC.with_options(unicode_decode_error_handler="replace")


class Reject(Exception):
    """A value that cannot be migrated: a machine-readable code and a human reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --------------------------------------------------------------------------- rendering
def redact(value: Any) -> Any:
    """A copy safe to store or log: secrets replaced, NUL made visible, long strings cut."""
    if isinstance(value, dict):
        return {k: (REDACTED if str(k).lower() in _SECRET_KEYS else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        value = value.replace("\x00", "\u2400")
        if len(value) > REJECT_PREVIEW:
            return value[:REJECT_PREVIEW] + f"…[{len(value) - REJECT_PREVIEW} more chars]"
        return value
    if isinstance(value, (bytes, bytearray)):
        return f"<binary {len(value)} bytes>"
    return value


def render(doc: dict | None) -> str | None:
    """The redacted document as relaxed Extended JSON; values Extended JSON cannot express
    (e.g. a date that overflows once shifted to UTC) fall back to their text."""
    if doc is None:
        return None
    safe = redact(doc)
    try:
        return json_util.dumps(safe, json_options=json_util.RELAXED_JSON_OPTIONS)
    except (OverflowError, ValueError, TypeError):
        return json.dumps(safe, default=str)


def preview(value: Any, limit: int = 60) -> str:
    text = repr(redact(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def source_id(doc: dict) -> str | None:
    oid = doc.get("_id")
    if oid is None:
        return None
    return str(oid) if isinstance(oid, ObjectId) else f"{type(oid).__name__}:{oid}"


# --------------------------------------------------------------------------- decoding
def decode_documents(raws: Iterable[bytes], positions: list[int] | None = None) -> tuple[list[dict], list[dict]]:
    """BSON bytes → documents. A document that is not valid BSON/UTF-8 becomes a reject.
    ``positions``, when given, receives the index in ``raws`` of every decoded document."""
    import bson

    raws = raws if isinstance(raws, list) else list(raws)
    if all(len(raw) == int.from_bytes(raw[:4], "little", signed=True) for raw in raws):
        # each document exactly as long as it says: decoded in one call, split where one call per
        # document would (200,000 users: 2.71-3.91 -> 2.59-2.74 s); any error and each is decoded on its own
        try:
            docs = bson.decode_all(b"".join(raws), CODEC)
        except (InvalidBSON, UnicodeDecodeError, ValueError, OverflowError):
            docs = None
        if docs is not None and len(docs) == len(raws):
            if positions is not None:
                positions.extend(range(len(raws)))
            return docs, []
    docs, rejects = [], []
    for i, raw in enumerate(raws):
        try:
            docs.append(bson.decode(raw, codec_options=CODEC))
            if positions is not None:
                positions.append(i)
        except (InvalidBSON, UnicodeDecodeError, ValueError, OverflowError) as exc:
            try:
                shown = bson.decode(raw, codec_options=_LENIENT)
            except Exception:  # noqa: BLE001 - truly unreadable: keep what we can say
                shown = {}
            rejects.append(
                _reject_row(shown, "document", None, "undecodable_document",
                            f"document is not valid BSON/UTF-8 ({type(exc).__name__}: {str(exc)[:120]})")
            )
    return docs, rejects


def documents_frame(docs: list[dict], projection: Iterable[str], raws: list[bytes] | None = None) -> pd.DataFrame:
    """One object column per projected field (no type inference: one odd document cannot
    change the dtype of its whole batch), plus ``_id`` (hex) and ``_doc``: the documents, or,
    given ``raws``, their raw BSON (a third of a decoded document's memory; decoded again only
    to word a reject)."""
    columns: dict[str, Any] = {"_id": pd.Series([source_id(d) for d in docs], dtype=object)}
    for f in projection:
        columns[f] = pd.Series([d.get(f) for d in docs], dtype=object)
    columns["_doc"] = pd.Series(docs if raws is None else raws, dtype=object)
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- coercers
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _integral(v: Any) -> int | None:
    """An int from int / integral float / integral Decimal128, else None."""
    if _is_int(v):
        return int(v)
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    if isinstance(v, Decimal128):
        d = v.to_decimal()
        if d.is_finite() and d == d.to_integral_value():
            return int(d)
    return None


def _check_text(value: str, name: str) -> str:
    if "\x00" in value:
        raise Reject("nul_in_string", f"{name} contains a NUL byte, which PostgreSQL text cannot store")
    if len(value) > MAX_TEXT:
        raise Reject("string_too_long", f"{name} is {len(value)} characters long (limit {MAX_TEXT})")
    return value


def text(name: str, required: bool = False) -> Callable[[Any], str | None]:
    """A string. Empty or missing → NULL (or a reject when required). Other types → reject."""

    def coerce(v: Any) -> str | None:
        if v is None or v == "":
            if required:
                raise Reject("missing_required", f"{name} is {'empty' if v == '' else 'missing'}")
            return None
        if not isinstance(v, str):
            raise Reject("invalid_type", f"{name} must be a string, got {type(v).__name__}")
        return _check_text(v, name)

    coerce.expects = ("string",)
    coerce.fast = lambda values: _fast_strings(values, required)
    return coerce


def app_key(name: str, width: int, required: bool = True) -> Callable[[Any], str | None]:
    """An application id. Numbers (ids stored as numbers) become their decimal digits,
    left-padded with zeros to ``width`` (12 for userId, 6 for old oauthClientAppIds)."""

    def coerce(v: Any) -> str | None:
        if v is None or v == "":
            if required:
                raise Reject("missing_key", f"{name} is {'empty' if v == '' else 'missing'}")
            return None
        if isinstance(v, str):
            return _check_text(v, name)
        n = _integral(v)
        if n is not None and n >= 0:
            return str(n).zfill(width)
        raise Reject("invalid_key", f"{name} must be a string id, got {type(v).__name__} {preview(v)}")

    coerce.expects = ("string",)
    coerce.fast = lambda values: _fast_strings(values, required)  # a number id takes the per-value rule
    return coerce


def boolean(name: str, default: bool | None = False) -> Callable[[Any], bool | None]:
    """true/false; 0/1 numbers and "true"/"false" strings coerce; missing → ``default`` (false,
    or NULL where a declaration says the app's own default applies)."""

    def coerce(v: Any) -> bool | None:
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        if _is_int(v) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        raise Reject("invalid_type", f"{name} must be a boolean, got {type(v).__name__} {preview(v)}")

    coerce.expects = ("bool",)
    coerce.fast = lambda values: _fast_exact(values, bool, default)
    return coerce


_DECIMAL = re.compile(r"-?[0-9]{1,40}")


def integer(name: str, default: int | None = None, bits: int = 64) -> Callable[[Any], int | None]:
    """Integers; integral floats, Decimal128 and digit strings coerce; missing → default.
    Values outside the target column's range (``bits``) are rejected."""

    def coerce(v: Any) -> int | None:
        if v is None:
            return default
        n = _integral(v)
        if n is None and isinstance(v, str) and _DECIMAL.fullmatch(v.strip()):
            n = int(v.strip())
        if n is None:
            raise Reject("invalid_type", f"{name} must be an integer, got {type(v).__name__} {preview(v)}")
        if not -(2 ** (bits - 1)) <= n < 2 ** (bits - 1):
            raise Reject("invalid_type", f"{name} is out of the {bits}-bit integer range")
        return n

    coerce.expects = ("int", "long")
    coerce.fast = lambda values: _fast_exact(values, int, default, bits)
    return coerce




def timestamp(name: str) -> Callable[[Any], dt.datetime | None]:
    """UTC timestamps. BSON dates as is; ISO-8601 strings (no zone = UTC); epoch numbers
    (milliseconds when above 10^11, else seconds). Anything else → reject invalid_date."""

    def coerce(v: Any) -> dt.datetime | None:
        if v is None or v == "":
            return None
        try:
            if isinstance(v, dt.datetime):
                return v.astimezone(UTC) if v.tzinfo else v.replace(tzinfo=UTC)
            if isinstance(v, str):
                parsed = dt.datetime.fromisoformat(v.strip())
                return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            n = _integral(v) if not isinstance(v, float) else v
            if n is not None and not isinstance(v, bool) and math.isfinite(n):
                seconds = n / 1000 if abs(n) > 1e11 else n
                return dt.datetime.fromtimestamp(seconds, UTC)
        except (ValueError, OverflowError, OSError):
            pass
        if isinstance(v, DatetimeMS):
            raise Reject("invalid_date", f"{name} is outside the representable date range")
        raise Reject("invalid_date", f"{name} is not a date: {type(v).__name__} {preview(v)}")

    coerce.expects = ("date",)
    coerce.fast = _fast_datetimes
    return coerce


def array(name: str) -> Callable[[Any], list]:
    """An array field. Missing or null → empty; a lone string → a one-element array;
    any other non-array (object, number, boolean) → reject invalid_array."""

    def coerce(v: Any) -> list:
        if v is None:
            return []
        if isinstance(v, list):
            return v
        if isinstance(v, str):
            return [v]
        raise Reject("invalid_array", f"{name} must be an array, got {type(v).__name__}")

    coerce.expects = ("array",)
    coerce.fast = _fast_arrays
    return coerce


# --------------------------------------------------------------------------- fast paths
# A coercer's ``fast(values) -> (coerced, slow)`` does a whole column at once with C-speed
# primitives (type maps, numpy masks, Arrow string kernels) for the values whose rule is plain
# (a string that is a string, a missing value with a default, ...), and marks every other row
# ``slow``: those rows, and only those, go through the per-value rules above, so each dirty case
# keeps its exact reject and reason. ``coerced`` holds the fast rows' values (slow rows: None).
_NONE = type(None)


def _types(values: list) -> np.ndarray:
    return np.fromiter(map(type, values), dtype=object, count=len(values))


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = pd.Series(values, dtype=object).to_numpy()  # lists stay elements, never a 2-D array
    return out


def _fast_strings(values: list, required: bool) -> tuple[np.ndarray, np.ndarray]:
    """Strings as stored; missing or "" → NULL (slow when required: a reject). A string with a
    NUL or longer than MAX_TEXT, and any other type, is slow."""
    types = _types(values)
    is_str = types == str
    out = _objects(values)
    slow = ~(is_str | (types == _NONE))
    if is_str.any():
        strings = pa.array(out[is_str].tolist(), pa.large_string())
        bad = pc.or_(pc.greater(pc.utf8_length(strings), MAX_TEXT),
                     pc.greater_equal(pc.find_substring(strings, "\x00"), 0)).to_numpy(zero_copy_only=False)
        empty = pc.equal(pc.binary_length(strings), 0).to_numpy(zero_copy_only=False)
        where = np.flatnonzero(is_str)
        slow[where[bad]] = True
        out[where[empty]] = None
        if required:
            slow[where[empty]] = True
    if required:
        slow |= types == _NONE
    out[slow] = None
    return out, slow


def _fast_exact(values: list, kind: type, default: Any, bits: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Values of exactly ``kind`` (``int`` excludes bool) as stored, within ``bits`` for ints;
    missing → ``default``. Anything else (0/1 for a bool, "12" for an int, ...) is slow."""
    types = _types(values)
    exact = types == kind
    out = _objects(values)
    slow = ~(exact | (types == _NONE))
    out[types == _NONE] = default
    if bits and exact.any():
        where = np.flatnonzero(exact)
        ints = out[where]
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1)
        if min(ints) < low or max(ints) >= high:
            slow[where[[not low <= v < high for v in ints]]] = True
    out[slow] = None
    return out, slow


def _fast_datetimes(values: list) -> tuple[np.ndarray, np.ndarray]:
    """BSON dates as decoded (UTC-aware: what the rule returns for them); missing → NULL.
    Strings, numbers and out-of-range dates (DatetimeMS) are slow."""
    types = _types(values)
    out = _objects(values)
    slow = ~((types == dt.datetime) | (types == _NONE))
    aware = np.flatnonzero(types == dt.datetime)
    if len(aware):
        slow[aware[[v.tzinfo is not UTC for v in out[aware]]]] = True
    out[slow] = None
    return out, slow


def _fast_arrays(values: list) -> tuple[np.ndarray, np.ndarray]:
    """Arrays as stored; missing → []; a lone string → [it]; anything else is slow."""
    types = _types(values)
    out = _objects(values)
    for i in np.flatnonzero(types == _NONE):
        out[i] = []
    for i in np.flatnonzero(types == str):
        out[i] = [out[i]]
    slow = ~((types == list) | (types == _NONE) | (types == str))
    out[slow] = None
    return out, slow


# --------------------------------------------------------------------------- machinery
class KeySet:
    """The keys of a large collection (a million user ids) as one Arrow array: ~30 MiB where a
    Python set of them takes ~110. A transform asks once for the keys among its candidates
    (:func:`known_among`) and tests membership in that small set; ``in`` works too, but
    builds the whole Python set the first time (for small callers only)."""

    def __init__(self, keys: pa.Array | pa.ChunkedArray):
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        self.keys = keys.drop_null()
        self._all: set[str] | None = None

    def among(self, candidates: Iterable[Any]) -> set[str]:
        """The keys among ``candidates`` (anything but a string is never a key)."""
        wanted = [c for c in candidates if isinstance(c, str)]
        if not wanted:
            return set()
        asked = pa.array(wanted, self.keys.type)
        # the hash table over the few candidates, probed by every key (once), not one over the
        # million keys per call: a batched transform asks per batch
        present = self.keys.filter(pc.is_in(self.keys, value_set=pc.unique(asked)))
        found = pc.is_in(asked, value_set=present).to_numpy(zero_copy_only=False)
        return set(compress(wanted, found))  # the candidates' own string objects: no copies

    def __contains__(self, key: object) -> bool:
        if self._all is None:
            self._all = set(self.keys.to_pylist())
        return key in self._all


def known_among(known: Container[str], candidates: Iterable[str | None]) -> Container[str]:
    """``known`` narrowed to ``candidates`` when it is a :class:`KeySet` (else ``known`` itself):
    membership answers stay the same for every candidate."""
    return known.among(candidates) if isinstance(known, KeySet) else known


def _element_keys(arrays: Iterable[list], element_fn: Callable[[Any], str]) -> Iterator[str]:
    """The keys ``element_fn`` makes of the arrays' elements, skipping the ones it rejects."""
    for values in arrays:
        for el in values:
            try:
                yield element_fn(el)
            except Reject:
                pass


@dataclass
class Result:
    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    counts: dict[str, Any]
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)


def _storable(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: make it visible instead."""
    return None if text is None else text.replace("\x00", "\u2400")


def _reject_row(doc: dict | bytes, scope: str, element: Any, code: str, reason: str, show_doc: bool = True) -> dict:
    """``doc``: the document, or its raw BSON (see :func:`documents_frame`)."""
    if isinstance(doc, (bytes, bytearray)):
        import bson

        doc = bson.decode(doc, codec_options=CODEC)
    return {
        "source_id": _storable(source_id(doc)),
        "scope": scope,
        "element": None if element is None else (
            _storable(element[:200]) if isinstance(element, str) else preview(element, 200)),
        "reason_code": code,
        "reason": reason,
        "document": render({k: v for k, v in doc.items() if k in MAPPED_FIELDS}) if show_doc else None,
    }


def rejects_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=REJECT_COLUMNS).astype(object)


def _coerce(docs: pd.DataFrame, rules: dict[str, tuple[str, Callable]]) -> tuple[pd.DataFrame, list[dict]]:
    """Apply ``rules`` (column -> (source field, coercer)) to every document.
    Returns the coerced frame of accepted documents and one reject per refused document
    (the first failing field, in rule order). Each column goes through its coercer's fast path
    at once; a row that any fast path leaves (or whose _id is bad) goes through the per-value
    rules, whole, so its outcome is exactly theirs."""
    n = len(docs)
    ids = docs["_id"].tolist()
    columns = {col: docs[src].tolist() for col, (src, _) in rules.items()}
    fast: dict[str, np.ndarray] = {}
    slow = np.fromiter((i is None or "\x00" in i for i in ids), dtype=bool, count=n)
    for col, (_, fn) in rules.items():  # every coercer above has its fast path
        fast[col], column_slow = fn.fast(columns[col])
        slow |= column_slow
    rejects: list[dict] = []
    accepted_slow: dict[int, list] = {}
    items = [(col, columns[col], fn) for col, (_, fn) in rules.items()]
    for i in np.flatnonzero(slow).tolist():
        row = []
        try:
            if ids[i] is None or "\x00" in ids[i]:
                raise Reject("invalid_document_id", "the document's _id is null or contains a NUL byte; "
                                                    "give it a proper _id at the source")
            for col, values, fn in items:
                row.append(fn(values[i]))
        except Reject as r:
            rejects.append(_reject_row(docs["_doc"].iat[i], "document", None, r.code, r.reason))
            continue
        accepted_slow[i] = row
    keep = np.flatnonzero(~slow)
    if accepted_slow:
        keep = np.sort(np.concatenate([keep, np.fromiter(accepted_slow, dtype=np.int64, count=len(accepted_slow))]))
    out = {}
    for j, (col, _, _) in enumerate(items):
        values = fast[col]
        for i, row in accepted_slow.items():
            values[i] = row[j]
        out[col] = pd.Series(values[keep], dtype=object)
    frame = pd.DataFrame(out)
    frame["mongo_id"] = pd.Series([ids[i] for i in keep.tolist()], dtype=object)
    frame["_row"] = keep.tolist()
    return frame, rejects


def find_duplicates(frame: pd.DataFrame, subset: list[str], order: list[str], ascending: list[bool],
                    casefold: bool = False) -> list[tuple[Any, tuple, Any]]:
    """Rows that lose a uniqueness contest on ``subset``: (index, key, winner's mongo_id), in rank
    order. The first row by ``order`` (then ``mongo_id``) wins; rows with a NULL in ``subset``
    are never duplicates of each other. Only the contested keys are materialised."""
    if frame.empty:
        return []
    keys = frame[subset]
    if casefold:
        keys = keys.apply(lambda s: s.map(lambda v: v.casefold() if isinstance(v, str) else v))
    ranking = frame[order + ["mongo_id"]].sort_values(order + ["mongo_id"], ascending=ascending + [True],
                                                      na_position="last", kind="stable").index
    keys = keys.loc[ranking]
    has_all = keys.notna().all(axis=1)
    dup = keys.duplicated(keep="first") & has_all
    if not dup.any():
        return []
    winners = keys.duplicated(keep=False) & has_all & ~dup  # the first row of every contested key
    winner_of = dict(zip(map(tuple, keys[winners].itertuples(index=False)),
                         frame.loc[keys.index[winners.to_numpy()], "mongo_id"]))
    losers = keys[dup]
    return [(idx, k, winner_of[k]) for idx, k in zip(losers.index, map(tuple, losers.itertuples(index=False)))]


def duplicate_reason(what: str, key: tuple, winner: Any) -> str:
    return f"{what} {preview(key if len(key) > 1 else key[0])} is already used by document {winner}"


def duplicate_plan(frame: pd.DataFrame, passes: tuple) -> list[tuple]:
    """Apply the uniqueness ``passes`` (subset, order, ascending, code, what, casefold) one after
    the other; returns (``_row``, reason code, reason) of every losing row, pass by pass.
    Needs only the key, order, ``mongo_id`` and ``_row`` columns, so a whole collection's
    keys can be ranked without its documents (:func:`coded_duplicate_plan`: the same over
    integer codes)."""
    out = []
    for subset, order, asc, code, what, fold in passes:
        found = find_duplicates(frame, subset, order, asc, fold)
        out += [(int(frame.at[idx, "_row"]), code, duplicate_reason(what, k, w)) for idx, k, w in found]
        frame = frame.drop(index=[idx for idx, _, _ in found])
    return out


def _combined(codes: list[np.ndarray]) -> np.ndarray:
    """One int64 code per row for several columns of non-negative codes (equal iff all are)."""
    out = codes[0].astype(np.int64)
    for c in codes[1:]:
        width = int(c.max()) + 1 if len(c) else 1
        if len(out) and int(out.max()) >= (2 ** 62) // width:  # would overflow: make the codes dense first
            out = np.unique(out, return_inverse=True)[1].astype(np.int64)
        out = out * width + c
    return out


def _repeated(keys: list[np.ndarray]) -> np.ndarray:
    """Which rows share their key (every column non-NULL, i.e. >= 0) with another row."""
    has_all = np.logical_and.reduce([k >= 0 for k in keys])
    out = np.zeros(len(has_all), dtype=bool)
    if not has_all.any():
        return out
    if len(keys) == 1:  # dense codes: count them
        k = keys[0][has_all]
        out[has_all] = np.bincount(k)[k] > 1
    else:
        _, inverse, counts = np.unique(_combined([k[has_all] for k in keys]), return_inverse=True,
                                       return_counts=True)
        out[has_all] = counts[inverse.reshape(-1)] > 1
    return out


def coded_duplicate_plan(columns: dict[str, np.ndarray], rows: np.ndarray, passes: tuple) -> list[tuple]:
    """:func:`duplicate_plan` in numpy over integer arrays: every column holds order-preserving
    codes >= 0 (already case-folded where a pass folds), -1 for NULL (``mongo_id`` among them).
    Per pass, only the rows whose key repeats are ranked (a subset keeps its relative rank
    order); a million users rank in a few integer arrays, where a pandas frame of nullable
    columns took ~300 MiB more. Entries: (``rows`` value, reason code, (what, subset, key
    codes, winner's mongo_id code)), pass by pass, each pass's losers in rank order; the caller
    words the reason (:func:`duplicate_reason`) once it has decoded the codes
    (tests/unit/test_transform_properties.py holds it to :func:`duplicate_plan`)."""
    alive = np.ones(len(rows), dtype=bool)
    big = np.iinfo(np.int64).max
    out = []
    for subset, order, asc, code, what, _ in passes:
        idx = np.flatnonzero(alive)
        idx = idx[_repeated([columns[c][idx] for c in subset])]  # the contested rows, in row order
        if not len(idx):
            continue
        sort_keys = []
        for name, up in zip([*order, "mongo_id"], [*asc, True]):
            c = columns[name][idx].astype(np.int64)
            sort_keys.append(np.where(c < 0, big, c if up else -c))  # NULLs last either way
        contested = idx[np.lexsort(sort_keys[::-1])]  # stable: ties keep row order
        _, first, inverse = np.unique(_combined([columns[c][contested].astype(np.int64) for c in subset]),
                                      return_index=True, return_inverse=True)  # each key's first row in rank order
        lose = np.ones(len(contested), dtype=bool)
        lose[first] = False
        losers = contested[lose]
        winners = contested[first[inverse.reshape(-1)[lose]]]
        key_codes = np.stack([columns[c][losers] for c in subset], axis=1).tolist()
        out += [(int(r), code, (what, subset, tuple(k), int(w)))
                for r, k, w in zip(rows[losers].tolist(), key_codes, columns["mongo_id"][winners].tolist())]
        alive[losers] = False
    return out


def _drop_duplicates(frame: pd.DataFrame, docs: pd.DataFrame, subset: list[str], order: list[str],
                     ascending: list[bool], code: str, what: str, casefold: bool = False
                     ) -> tuple[pd.DataFrame, list[dict]]:
    """Keep one row per ``subset`` (the first by ``order``); reject the others naming the winner."""
    found = find_duplicates(frame, subset, order, ascending, casefold)
    rejects = [_reject_row(docs["_doc"].iat[frame.at[idx, "_row"]], "document", None, code,
                           duplicate_reason(what, k, w)) for idx, k, w in found]
    return frame.drop(index=[idx for idx, _, _ in found]), rejects


def _drop_clashes(frame: pd.DataFrame, docs: pd.DataFrame, existing: pd.DataFrame | None, subset: list[str],
                  code: str, what: str, casefold: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """Incremental runs: reject batch rows whose ``subset`` is already taken by a target row
    that stays (existing rows win; ``existing`` holds only rows outside the batch)."""
    if existing is None or existing.empty or frame.empty:
        return frame, []

    def fold(v):
        return v.casefold() if casefold and isinstance(v, str) else v

    taken = {tuple(fold(v) for v in row): rid for rid, *row in existing[["id", *subset]].itertuples(index=False)
             if all(v is not None and v is not pd.NA for v in row)}
    drop, rejects = [], []
    for idx, row in zip(frame.index, frame[subset].itertuples(index=False)):
        k = tuple(fold(v) for v in row)
        if k in taken:
            drop.append(idx)
            rejects.append(_reject_row(docs["_doc"].iat[frame.at[idx, "_row"]], "document", None, code,
                                       f"{what} {preview(k if len(k) > 1 else k[0])} is already used by "
                                       f"existing row {taken[k]}"))
    return frame.drop(index=drop), rejects


def _typed(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Columns in table order with nullable dtypes (no float-ified ints, no object bools)."""
    spec = TABLES[table].columns
    out = {}
    for col, kind in spec.items():
        values = frame[col] if col in frame else pd.Series([None] * len(frame), dtype=object)
        values = values.reset_index(drop=True)
        if kind in ("text", "inet"):
            out[col] = values.astype("string")
        elif kind == "bool":
            out[col] = values.astype("boolean")
        elif kind == "int":
            out[col] = values.astype("Int64")
        elif kind == "timestamp":
            out[col] = pd.to_datetime(values, utc=True).astype("datetime64[us, UTC]")
        else:  # pragma: no cover - registry and this function are kept in step by tests
            raise ValueError(f"unknown column kind {kind}")
    return pd.DataFrame(out)


def _explode(frame: pd.DataFrame, docs: pd.DataFrame, array_col: str, parent_col: str, child_col: str,
             element_fn: Callable[[Any], str], known: set[str] | None = None,
             dangling_code: str = "dangling_user", dangling_what: str = "user"
             ) -> tuple[pd.DataFrame, list[dict], dict[str, int]]:
    """One join row per valid, distinct, known element; a reject row for every other element.
    ``element_fn`` returns the element's key or raises Reject; it may return WILDCARD."""
    parents, children, rows, rejects = [], [], [], []
    elements = wildcards = 0
    wild_rows: list[int] = []
    sources = docs["_doc"]  # the documents, looked up only to explain a reject
    for parent, values, row in zip(frame[parent_col], frame[array_col], frame["_row"]):
        seen: set[str] = set()
        for el in values:
            elements += 1
            try:
                key = element_fn(el)
            except Reject as r:
                rejects.append({**_reject_row(sources.iat[row], "element", el, r.code, r.reason), "_row": row})
                continue
            if key in seen:
                rejects.append({**_reject_row(sources.iat[row], "element", el, "duplicate_element",
                                              f"{preview(el)} appears more than once in the array"), "_row": row})
                continue
            seen.add(key)
            if key == WILDCARD:
                wildcards += 1
                wild_rows.append(row)
                continue
            if known is not None and key not in known:
                rejects.append({**_reject_row(sources.iat[row], "element", el, dangling_code,
                                              f"{dangling_what} {preview(key)} does not exist (or was rejected)"),
                                "_row": row})
                continue
            parents.append(parent)
            children.append(key)
            rows.append(row)
    out = pd.DataFrame({parent_col: parents, child_col: children, "_row": pd.Series(rows, dtype="int64")})
    counts = {"array_elements": elements, "rejected_elements": len(rejects), "wildcard_elements": wildcards,
              "_wildcard_rows": wild_rows}
    return out, rejects, counts


def _name_element(what: str) -> Callable[[Any], str]:
    """An array element that is a name: a non-blank string, kept exactly as stored."""

    def coerce(el: Any) -> str:
        if not isinstance(el, str):
            raise Reject("invalid_element", f"{what} must be a string, got {type(el).__name__}")
        if el.strip() == "":
            raise Reject("invalid_element", f"{what} is an empty string")
        return _check_text(el, what)

    return coerce


def _key_element(what: str, width: int, wildcard: bool = False) -> Callable[[Any], str]:
    """An array element that is an id, by the key rule; ``wildcard``: "*" is passed through."""
    key = app_key(what, width)

    def coerce(el: Any) -> str:
        if wildcard and el == WILDCARD:
            return WILDCARD
        try:
            return key(el)
        except Reject as r:
            raise Reject("invalid_element", r.reason) from None

    return coerce


def element_rule(a: JoinArray) -> Callable[[Any], str]:
    return _name_element(a.what) if a.element == "name" else _key_element(a.what, a.width, a.wildcard)


_role_name = _name_element("role")
_member_id = _key_element("user id", 12, wildcard=True)


def _legacy_app_id(el: Any) -> str | None:
    try:
        return app_key("app id", 6)(el)
    except Reject:
        return None


def _finish(docs: pd.DataFrame | int, rejects: list[dict], tables: dict[str, pd.DataFrame],
            counts: dict[str, Any], extras: dict | None = None) -> Result:
    """``docs``: the documents (or their number)."""
    doc_rejects = sum(1 for r in rejects if r["scope"] == "document")
    counts = {
        "source_documents": docs if isinstance(docs, int) else len(docs),
        "rejected_documents": doc_rejects,
        "rows": {name: len(df) for name, df in tables.items()},
        **counts,
        "rejects_by_reason": dict(sorted(Counter(r["reason_code"] for r in rejects).items())),
    }
    return Result(tables=tables, rejects=rejects_frame(rejects), counts=counts, extras=extras or {})


# --------------------------------------------------------------------------- rules from declarations
def coercer(f: Field) -> Callable[[Any], Any]:
    """The coercer a declared field's kind names (§2 of docs/data-contract.md)."""
    default = None if f.default is KIND_DEFAULT else f.default
    if f.kind == "key":
        return app_key(f.source, f.width, required=f.required)
    if f.kind == "text":
        return text(f.source, required=f.required)
    if f.kind == "bool":
        return boolean(f.source, default=False if f.default is KIND_DEFAULT else f.default)
    if f.kind in ("int", "int32"):
        return integer(f.source, default=default, bits=32 if f.kind == "int32" else 64)
    if f.kind == "timestamp":
        return timestamp(f.source)
    if f.kind == "array":
        return array(f.source)
    raise ValueError(f"field {f.source}: no coercer for kind {f.kind!r}")


def rules_of(spec: Collection) -> dict[str, tuple[str, Callable]]:
    """column -> (source field, coercer), in the declaration's (rule) order."""
    return {f.column: (f.source, coercer(f)) for f in spec.all_fields if f.source}


RULES = {name: rules_of(spec) for name, spec in COLLECTIONS.items()}
USER_RULES, APP_RULES, ROLE_RULES = RULES["users"], RULES["oauthClientApps"], RULES["oauthRoles"]
def transform_roles(docs: pd.DataFrame, known_users: Container[str], known_apps: Container[str],
                    existing: pd.DataFrame | None = None) -> Result:
    """oauthRoles → client_roles, client_role_users, by the declaration (hook
    ``grant_all_wildcard``: ``"*"`` sets ``grants_all_users``, kept alongside explicit members)."""
    return transform_declared(COLLECTIONS["oauthRoles"], docs, {"users": known_users, "oauthClientApps": known_apps},
                              existing)


def _unique(spec: Collection, frame: pd.DataFrame, docs: pd.DataFrame, existing: pd.DataFrame | None,
            rejects: list[dict]) -> tuple[pd.DataFrame, list[dict]]:
    """The declaration's uniqueness: collisions with target rows that stay (incremental runs),
    then the key and each Unique within the batch, one pass after the other."""
    for subset, code, what, fold in spec.clash_rules:
        frame, dropped = _drop_clashes(frame, docs, existing, subset, code, what, fold)
        rejects += dropped
    for subset, order, asc, code, what, fold in spec.duplicate_passes:
        frame, dropped = _drop_duplicates(frame, docs, subset, order, asc, code, what, fold)
        rejects += dropped
    return frame, rejects


def _grant_all_wildcard(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(grants_all_users=[WILDCARD in m for m in frame["_members"]])


FRAME_HOOKS = {"grant_all_wildcard": _grant_all_wildcard}  # hooks the declared transform applies


def declared_accept(spec: Collection, docs: pd.DataFrame, known: dict[str, Container[str]]
                    ) -> tuple[pd.DataFrame, list[dict], dict[str, Container[str]]]:
    """The per-document part of a declared transform before its uniqueness contests: coerce
    every field (§2), reject documents whose ``reject`` references dangle. Returns the accepted
    frame, the rejects and ``known`` narrowed to the keys these documents reference."""
    frame, rejects = _coerce(docs, RULES[spec.name])
    sources = docs["_doc"]
    wanted: dict[str, list] = {}
    for r in spec.references:
        wanted.setdefault(r.collection, []).append(frame[r.column])
    for a in spec.arrays:
        if a.references:
            wanted.setdefault(a.references, []).append(_element_keys(frame[a.column], element_rule(a)))
    known = {name: known_among(known[name], chain(*columns)) for name, columns in wanted.items()}
    for r in spec.references:
        if r.dangling != "reject":
            continue
        values = frame[r.column]
        dangling = (values.notna() & ~values.isin(known[r.collection])).to_numpy()
        for idx in frame.index[dangling]:
            rejects.append(_reject_row(sources.iat[frame.at[idx, "_row"]], "document", None, r.code,
                                       f"{r.what} {frame.at[idx, r.column]} does not exist (or was rejected)"))
        frame = frame[~dangling]
    return frame, rejects, known


def declared_rows(spec: Collection, frame: pd.DataFrame, docs: pd.DataFrame, known: dict[str, Container[str]],
                  rejects: list[dict], sort: bool = True) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """The per-document part after the contests: NULL the ``null`` references that dangle (a
    field reject each, appended to ``rejects``), apply the frame hooks, explode each array into
    its join table. Returns the typed tables (sorted by key unless ``sort`` is false) and each
    join table's element counts."""
    sources = docs["_doc"]
    for r in spec.references:
        if r.dangling != "null":
            continue
        values = []
        for value, row in zip(frame[r.column], frame["_row"]):
            if value is not None and value not in known[r.collection]:
                rejects.append(_reject_row(sources.iat[row], "field", value, r.code,
                                           f"{r.what} {value} does not exist (or was rejected); {r.what} set to NULL"))
                value = None
            values.append(value)
        frame = frame.assign(**{r.column: pd.Series(values, index=frame.index, dtype=object)})
    for hook in spec.hooks:
        frame = FRAME_HOOKS[hook](frame)  # a declared transform has frame hooks only (checked below)
    if sort:
        frame = frame.sort_values("id", kind="stable")
    tables = {spec.table: _typed(frame, spec.table)}
    arrays = {}
    for a in spec.arrays:
        rows, el_rejects, counts = _explode(frame, docs, a.column, "id", a.element_column, element_rule(a),
                                            known.get(a.references) if a.references else None,
                                            a.dangling_code, a.dangling_what)
        rows = rows.rename(columns={"id": a.parent_column})
        if sort:
            rows = rows.sort_values([a.parent_column, a.element_column])
        rejects += el_rejects
        counts.pop("_wildcard_rows")
        tables[a.table] = _typed(rows, a.table)
        arrays[a.table] = counts
    return tables, arrays


def transform_declared(spec: Collection, docs: pd.DataFrame, known: dict[str, Container[str]],
                       existing: pd.DataFrame | None = None) -> Result:
    """Any collection by its declaration alone: coerce every field (§2), reject documents whose
    ``reject`` references dangle, drop collisions and duplicates (key, then each Unique), NULL
    the ``null`` references that dangle (a field reject each), apply the frame hooks, explode
    each array into its join table. ``known``: per referenced collection, its accepted keys.
    (``transform_task.transform_declared_batched`` does the same a batch at a time.)"""
    frame, rejects, known = declared_accept(spec, docs, known)
    frame, rejects = _unique(spec, frame, docs, existing, rejects)
    tables, arrays = declared_rows(spec, frame, docs, known, rejects)
    return _finish(docs, rejects, tables, {"arrays": arrays} if arrays else {})


def own_module(collection: str):
    """The module of a collection's own logic (``Collection.module``), or None."""
    from importlib import import_module

    spec = SOURCES[collection]
    return import_module(f"authmigrate.collections.{spec.module}") if spec.module else None


def transform(collection: str, docs: pd.DataFrame, known: dict[str, Container[str]] | None = None,
              existing: pd.DataFrame | None = None, extras: dict[str, pd.DataFrame] | None = None) -> Result:
    """The one transform signature: a collection's documents, the accepted keys of the
    collections it references, the target rows an incremental batch must not collide with, and
    the upstream transforms' extras (the users' legacy ownership claims). A collection with
    logic of its own has it in ``authmigrate.collections.<module>``, behind this signature;
    every other one is transformed by its declaration alone."""
    spec = SOURCES[collection]  # KeyError: never route a collection to another's rules
    module = own_module(collection)
    if module is not None:
        return module.transform(docs, known or {}, existing, extras or {})
    return transform_declared(spec, docs, known or {}, existing)


# the own logic of users and apps, as it was named here before it moved to its modules
_MOVED = {"users": ("USERS", "USER_CLASHES", "USER_DUPLICATES", "USER_KEY_COLUMNS", "users_accept", "users_explode",
                    "users_result", "roles_table", "legacy_owners_extra", "transform_users"),
          "oauth_client_apps": ("transform_apps",)}


def __getattr__(name: str):
    from importlib import import_module

    for module, names in _MOVED.items():
        if name in names:
            return getattr(import_module(f"authmigrate.collections.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_unknown = {name: [h for h in spec.hooks if h not in FRAME_HOOKS] for name, spec in COLLECTIONS.items()
            if not spec.module}
assert not any(_unknown.values()), f"hooks that need a transform of their own: {_unknown}"
