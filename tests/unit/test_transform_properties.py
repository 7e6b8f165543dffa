"""Property tests of ``authmigrate.transform``: random batches of hostile documents.

Each strategy mixes values the app writes with hostile ones for every field: wrong types
(lists, objects, None, ints, floats, bools, Decimal128, ObjectId, datetimes, out-of-range
dates, binary), ids stored as numbers, keys drawn from small pools so duplicates are
frequent, ``"*"`` among role members, NUL bytes, emoji and over-long strings.

Invariants checked on every batch (one test per collection, checks in this order):
  * no exception escapes the transform;
  * every input document is in the main table or has exactly one ``document`` reject;
  * the reconciliation identities of ``result.counts`` hold;
  * keys, usernames, emails (case-insensitively), identities, client ids, (app, role name)
    are unique in the output; every join row references an accepted parent (and a known user);
  * the transform is deterministic: same input twice, or shuffled, gives equal results;
  * everything written to PostgreSQL is storable there (no NUL in text, int ranges, NOT NULL),
    and no secret value reaches a reject.
"""
from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "plugins"))

import datetime as dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from collections import Counter  # noqa: E402

import bson  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from bson import Decimal128, ObjectId  # noqa: E402
from bson.datetime_ms import DatetimeMS  # noqa: E402
from bson.int64 import Int64  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from authmigrate import transform as tf  # noqa: E402
from authmigrate.registry import COLLECTIONS, TABLES  # noqa: E402

UTC = dt.timezone.utc
# Derandomized (the same 60 batches on every run, no example database written) and without
# the shrink phase: shrinking these batches takes minutes, and the minimal reproduction of
# every failure found so far is a unit test in test_transform.py. To shrink a new failure,
# run with AUTHMIGRATE_HYPOTHESIS_SHRINK=1.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + (
    [Phase.shrink] if os.environ.get("AUTHMIGRATE_HYPOTHESIS_SHRINK") else [])
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None, phases=_PHASES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECRET_MARK = "SECRET-"
NOT_NULL = {  # NOT NULL columns of schema.sql
    "users": {"id", "mongo_id", "username", "mfa_enabled", "email_verified", "sign_count", "can_manage_apps",
              "banned"},
    "roles": {"id", "name"}, "user_roles": {"user_id", "role_id"},
    "oauth_client_apps": {"id", "mongo_id", "client_id", "is_public_client", "disabled"},
    "client_roles": {"id", "mongo_id", "oauth_client_app_id", "name", "grants_all_users"},
    "client_role_users": {"client_role_id", "user_id"},
}
INT_RANGE = {("users", "sign_count"): 2**63, ("oauth_client_apps", "access_token_validity"): 2**31}  # bigint, integer


def oid(n: int) -> ObjectId:
    return ObjectId(f"65a{n:021x}")


class Long(str):
    """An over-long string (a plain ``str`` to the transform) with a short repr, so a failing
    example stays readable."""

    def __repr__(self) -> str:
        return f"{self[:1]!r} * {len(self)}"


def long(char: str, n: int = 65_537) -> Long:
    return Long(char * n)


# --------------------------------------------------------------------------- strategies
def _tz(hours: float) -> dt.timezone:
    return dt.timezone(dt.timedelta(hours=hours))


DATES = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                     timezones=st.sampled_from([None, UTC, _tz(2), _tz(-5.5), _tz(14)]))
OUT_OF_RANGE_MS = st.one_of(st.integers(-(2**63), -62_135_596_800_001), st.integers(253_402_300_800_000, 2**63 - 1))
ODD_STRINGS = ["", " ", "\x00", "a\x00b", "😀", "ünï", "true", "false", "TRUE", "*", "12", " 7 ", "-3", "--5", "²",
               "2019-03-04T10:11:12Z", "2019-03-04T10:11:12+02:00", "2019-03-04", "not-a-date", long("x")]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 2, -1, 12345, 1_551_694_272, 1_551_694_272_345]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
    st.sampled_from(["7", "7.000", "1.5", "-3", "NaN", "Infinity", "1E+30", "1551694272345", "0", "12345"])
    .map(Decimal128),
    st.sampled_from([oid(900), oid(901)]),
    DATES,
    OUT_OF_RANGE_MS.map(DatetimeMS),
    st.binary(max_size=4),
)
HOSTILE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "password", "clientSecret", "Password", "x"]), inner, max_size=3),
    ),
    max_leaves=5,
)


def pool(*values) -> st.SearchStrategy:
    return st.sampled_from(values)


def documents(fields: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]], keep: tuple[str, ...] = ()
              ) -> st.SearchStrategy:
    """Documents built field by field from ``(usual, bad)`` strategies. Usual values are what
    the app writes plus the dirty-but-coercible kinds (ids as numbers, digit strings, ISO and
    epoch dates, empty strings, ...) from small pools, so keys collide often. About half the
    documents have one or two broken fields (their ``bad`` strategy or anything hostile), and
    fields other than ``keep`` may be left out: most documents get past the first fields, so
    every coercer and every duplicate rule sees hostile input."""
    names = sorted(fields)
    optional = [n for n in names if n not in keep]

    @st.composite
    def build(draw):
        n_broken = draw(st.sampled_from([0, 0, 0, 1, 1, 2]))
        broken = set(draw(st.lists(st.sampled_from(names), min_size=n_broken, max_size=n_broken)))
        absent = set(draw(st.lists(st.sampled_from(optional), max_size=2)))
        doc = {}
        for name in names:
            usual, bad = fields[name]
            if name in broken:
                doc[name] = draw(st.one_of(bad, HOSTILE))
            elif name not in absent:
                doc[name] = draw(usual)
        return doc

    return build()


USER_IDS = ("000000000001", "000000000002", "000000000003", 1, 2, 3.0, Int64(3), Decimal128("2"), "7")
APP_IDS = ("000001", "000002", "012345", 1, 2, 12345, Decimal128("12345"), "999999")
BAD_KEY = pool("", None, True, -1, 1.5, "a\x00b", long("k"), [1])
SECRET = st.text(max_size=6).map(lambda s: SECRET_MARK + s)
SECRET_FIELD = (SECRET, st.one_of(pool(5, "s\x00", long("s")), st.dictionaries(pool("password"), SECRET)))
TEXT = (st.one_of(pool("", None, "Ann", "😀 emoji"), st.text(max_size=8)), pool("a\x00b", long("x"), 5, ["a"]))
BOOL = (pool(True, False, 0, 1, "true", "false", " TRUE ", None), pool(2, -1, "yes", "1", 1.0, Decimal128("1")))
INT = (pool(0, 1, 5, 3.0, Decimal128("7"), "12", " 7 ", "-3", "--5", "²", 3600, None),
       pool("garbage", 1.5, float("nan"), Decimal128("1E+30"), long("9", 5000), 2**31, -(2**31) - 1, 2**63 - 1))
WHEN = (st.one_of(DATES, pool("2019-03-04T10:11:12.345Z", "2019-03-04T10:11:12+02:00", "2019-03-04T10:11:12",
                              "", None, 1_551_694_272, 1_551_694_272.5, 1_551_694_272_345, Decimal128("1551694272"))),
        st.one_of(pool("not-a-date", " ", 1e300, True, float("nan")), OUT_OF_RANGE_MS.map(DatetimeMS)))


def array_of(*values) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    usual = st.one_of(st.lists(pool(*values), max_size=5), st.lists(st.one_of(pool(*values), HOSTILE), max_size=4),
                      pool(*values), pool(None))
    return usual, pool({}, {"a": 1}, 5, True, Decimal128("1"))


USER_DOC = documents({
    "userId": (pool(*USER_IDS), BAD_KEY),
    "username": (pool("alice", "bob", "Alice", "carol 😀", "dave", "erin"), pool("", None, "a\x00b", 5)),
    "email": (pool("a@x.io", "A@X.IO", "b@x.io", "B@x.io", "straße@x.io", "STRASSE@x.io", "c@x.io", "", None),
              pool(5, "e\x00", long("e"))),
    "password": SECRET_FIELD, "passkeyPublicKey": SECRET_FIELD, "mfaSecret": SECRET_FIELD,
    "firstName": TEXT, "lastName": TEXT, "passkeyId": TEXT, "bannedReason": TEXT,
    "identityProvider": (pool("local", "github", "google", None), pool(1, "g\x00")),
    "identityProviderUserId": (pool("1", "2", 1, 2, Int64(2), None, ""), BAD_KEY),
    "mfaEnabled": BOOL, "emailVerified": BOOL, "canManageApps": BOOL, "banned": BOOL,
    "signCount": INT,
    "providerRoles": array_of("standardUser", "oauthUser", "admin", "Admin", "*", "", " ", "r\x00le", 7, ["x"]),
    "bannedAt": WHEN, "bannedBy": (pool(*USER_IDS, None), BAD_KEY), "createdAt": WHEN, "updatedAt": WHEN,
    "oauthClientAppIds": array_of(*APP_IDS, "", True),
    "__v": (HOSTILE, HOSTILE),
}, keep=("userId", "username"))
APP_DOC = documents({
    "oauthClientAppId": (pool(*APP_IDS), BAD_KEY),
    "clientId": (pool("c1", "c2", "C1", "😀", "c3", "c4"), pool("", None, "c\x00", 5)),
    "clientSecret": SECRET_FIELD,
    "oauthAppName": TEXT, "redirectUri": TEXT, "disabledReason": TEXT,
    # validities in milliseconds by mistake: 30 days = 2_592_000_000 ms, past PostgreSQL integer
    "accessTokenValidity": (st.one_of(INT[0], pool(86_400_000, 2_592_000_000)), INT[1]),
    "isPublicClient": BOOL, "disabled": BOOL,
    "owner": (pool(*USER_IDS, "999999999999", None, ""), BAD_KEY),
    "disabledAt": WHEN, "createdAt": WHEN, "updatedAt": WHEN,
    "__v": (HOSTILE, HOSTILE),
}, keep=("oauthClientAppId", "clientId"))
ROLE_DOC = documents({
    "oauthRoleId": (pool("r1", "r2", "r3", "r4", 1, 2, Decimal128("2")), BAD_KEY),
    "oauthClientAppId": (pool(*APP_IDS), BAD_KEY),
    "oauthClientId": (pool("c1", "c2", None), pool(5, "c\x00")),
    "oauthRoleName": (pool("admin", "reader", "Admin", "writer"), pool("", None, 5)),
    "owner": (pool(*USER_IDS, "999999999999", None), BAD_KEY),
    "oauthUserIds": array_of(*USER_IDS, "*", "999999999999", "0000\x0000001", -1, ["x"]),
    "createdAt": WHEN, "updatedAt": WHEN,
    "__v": (HOSTILE, HOSTILE),
}, keep=("oauthRoleId", "oauthClientAppId", "oauthRoleName"))
KNOWN_USERS = st.sets(st.sampled_from(["000000000001", "000000000002", "000000000003", "000000000007"]))
KNOWN_APPS = st.sets(st.sampled_from(["000001", "000002", "012345", "1"]))
LEGACY = st.lists(st.tuples(st.sampled_from(["000001", "000002", "012345"]),
                            st.sampled_from(["000000000001", "000000000002", "000000000003", "000000000009"])),
                  max_size=6).map(lambda rows: pd.DataFrame(rows, columns=["app_id", "user_id"]).astype("string"))


@st.composite
def batch(draw, doc: st.SearchStrategy) -> list[dict]:
    """Up to 8 documents with distinct ObjectIds, assigned in a random order."""
    docs = draw(st.lists(doc, max_size=8))
    ids = draw(st.permutations(range(1, len(docs) + 1)))
    return [{"_id": oid(i), **d} for i, d in zip(ids, docs)]


# --------------------------------------------------------------------------- running and checking
def run(collection: str, docs: list[dict], *args) -> tf.Result:
    frame = tf.documents_frame(docs, COLLECTIONS[collection].projection)
    return {"users": tf.transform_users, "oauthClientApps": tf.transform_apps,
            "oauthRoles": tf.transform_roles}[collection](frame, *args)


def key_set(keys: set[str]) -> tf.KeySet:
    """The known keys as the transform task passes them: Arrow, as read from Parquet."""
    return tf.KeySet(pa.chunked_array([pa.array(sorted(keys), pa.large_string())]))


def nulls_as_none(values) -> list:
    return [None if (not isinstance(v, (list, dict)) and pd.isna(v)) else v for v in values]


def check_common(docs: list[dict], result: tf.Result, main: str, join: str | None) -> None:
    tables, rej, counts = result.tables, result.rejects, result.counts
    accepted = tables[main]["mongo_id"].tolist()
    assert len(set(accepted)) == len(accepted)
    ids = [str(d["_id"]) for d in docs]
    doc_rejects = Counter(rej.loc[rej["scope"] == "document", "source_id"])
    for sid in ids:  # in the main table xor exactly one document reject
        assert (sid in set(accepted)) + doc_rejects[sid] == 1, sid
    assert set(doc_rejects) <= set(ids)
    assert set(rej.loc[rej["scope"] != "document", "source_id"]) <= set(accepted)  # element/field: kept docs
    assert set(rej["scope"]) <= {"document", "element", "field"}
    assert all(isinstance(code, str) and code for code in rej["reason_code"])
    # reconciliation identities
    assert counts["source_documents"] == len(docs) == len(tables[main]) + counts["rejected_documents"]
    assert counts["rejected_documents"] == sum(doc_rejects.values())
    assert counts["rows"] == {name: len(df) for name, df in tables.items()}
    assert counts["rejects_by_reason"] == dict(sorted(Counter(rej["reason_code"]).items()))
    if join:
        a = counts["arrays"][join]
        assert a["array_elements"] == len(tables[join]) + a["rejected_elements"] + a["wildcard_elements"]
        assert a["rejected_elements"] == (rej["scope"] == "element").sum()
    # keys unique, join rows unique, typed as the registry says
    for name, df in tables.items():
        key = list(TABLES[name].key)
        assert not df.duplicated(subset=key).any(), name
        assert list(df.columns) == list(TABLES[name].columns)
        assert df[key].equals(df[key].sort_values(key).reset_index(drop=True)), f"{name} not sorted by key"
    # no secret reaches a reject
    for column in ("element", "reason", "document"):
        assert not any(SECRET_MARK in v for v in rej[column] if isinstance(v, str)), column


def check_storable(result: tf.Result) -> None:
    """Everything the load COPYs into PostgreSQL can be stored there."""
    for name, df in result.tables.items():
        for column, kind in TABLES[name].columns.items():
            values = nulls_as_none(df[column].tolist())
            if column in NOT_NULL[name]:
                assert None not in values, (name, column)
            if kind == "text":
                assert all("\x00" not in v and len(v) <= tf.MAX_TEXT for v in values if v is not None), (name, column)
            limit = INT_RANGE.get((name, column))
            if limit:
                assert all(-limit <= v < limit for v in values if v is not None), (name, column)
    for row in result.rejects.to_dict("records"):  # NULLs there may be None or NaN: only strings matter
        for column in ("source_id", "scope", "element", "reason_code", "reason", "document"):
            assert not isinstance(row[column], str) or "\x00" not in row[column], (column, row[column])
        assert isinstance(row["scope"], str) and isinstance(row["reason_code"], str) and isinstance(row["reason"], str)
        assert not isinstance(row["document"], str) or isinstance(json.loads(row["document"]), dict)


def assert_same(a: tf.Result, b: tf.Result) -> None:
    assert a.tables.keys() == b.tables.keys()
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name])
    assert a.counts == b.counts

    def rejects(r):
        return sorted(map(repr, r.rejects.to_dict("records")))

    assert rejects(a) == rejects(b)


def check_deterministic(docs: list[dict], first: tf.Result, again, data) -> None:
    """A second run, on the same documents in another order, gives the same result (and the
    first run did not change its input). Covers "twice on the same input" as well: a second
    call that depended on state left by the first would differ."""
    snapshot = repr(docs)
    shuffled = data.draw(st.permutations(docs), label="shuffled")
    assert_same(first, again(shuffled))
    assert repr(docs) == snapshot


# --------------------------------------------------------------------------- users
@SETTINGS
@given(docs=batch(USER_DOC), data=st.data())
def test_users_batch_invariants(docs, data):
    r = run("users", docs)
    check_common(docs, r, "users", "user_roles")
    users, user_roles, roles = r.tables["users"], r.tables["user_roles"], r.tables["roles"]
    assert users["username"].is_unique
    emails = [e.casefold() for e in nulls_as_none(users["email"]) if e is not None]
    assert len(emails) == len(set(emails))
    identities = users[["identity_provider", "identity_provider_user_id"]].dropna()
    assert not identities.duplicated().any()
    assert set(user_roles["user_id"]) <= set(users["id"])
    assert set(user_roles["role_id"]) == set(roles["id"])
    assert roles["id"].tolist() == roles["name"].tolist()
    claims = r.extras["legacy_owners"]
    assert set(claims["user_id"]) <= set(users["id"]) and not claims.duplicated().any()
    assert not (r.rejects["scope"] == "field").any()
    check_deterministic(docs, r, lambda d: run("users", d), data)
    check_storable(r)


# --------------------------------------------------------------------------- apps
@SETTINGS
@given(docs=batch(APP_DOC), known_users=KNOWN_USERS, legacy=LEGACY, data=st.data())
def test_apps_batch_invariants(docs, known_users, legacy, data):
    r = run("oauthClientApps", docs, known_users, legacy)
    check_common(docs, r, "oauth_client_apps", None)
    apps = r.tables["oauth_client_apps"]
    assert apps["client_id"].is_unique
    owners = nulls_as_none(apps["owner_user_id"])
    assert all(o is None or o in known_users for o in owners)
    # an owner is NULL exactly when the app has one field reject saying why
    field = Counter(r.rejects.loc[r.rejects["scope"] == "field", "source_id"])
    for mongo_id, owner in zip(apps["mongo_id"], owners):
        assert field[mongo_id] == (1 if owner is None else 0), mongo_id
    assert set(r.rejects.loc[r.rejects["scope"] == "field", "reason_code"]) <= {
        "dangling_owner", "ambiguous_owner", "missing_owner"}
    assert 0 <= r.counts["owners_backfilled"] <= sum(o is not None for o in owners)
    shuffled_legacy = legacy.iloc[::-1].reset_index(drop=True)
    check_deterministic(docs, r, lambda d: run("oauthClientApps", d, known_users, shuffled_legacy), data)
    assert_same(r, run("oauthClientApps", docs, key_set(known_users), legacy))  # the task passes a KeySet
    check_storable(r)


# --------------------------------------------------------------------------- roles
@SETTINGS
@given(docs=batch(ROLE_DOC), known_users=KNOWN_USERS, known_apps=KNOWN_APPS, data=st.data())
def test_roles_batch_invariants(docs, known_users, known_apps, data):
    r = run("oauthRoles", docs, known_users, known_apps)
    check_common(docs, r, "client_roles", "client_role_users")
    roles, members = r.tables["client_roles"], r.tables["client_role_users"]
    assert not roles.duplicated(subset=["oauth_client_app_id", "name"]).any()
    assert set(roles["oauth_client_app_id"]) <= known_apps
    assert all(o is None or o in known_users for o in nulls_as_none(roles["owner_user_id"]))
    assert set(members["client_role_id"]) <= set(roles["id"])
    assert set(members["user_id"]) <= known_users
    assert "*" not in set(members["user_id"])
    by_id = {str(d["_id"]): d for d in docs}
    for mongo_id, grants in zip(roles["mongo_id"], roles["grants_all_users"]):
        source = tf.array("oauthUserIds")(by_id[mongo_id].get("oauthUserIds"))
        assert grants == ("*" in source), mongo_id
    check_deterministic(docs, r, lambda d: run("oauthRoles", d, known_users, known_apps), data)
    assert_same(r, run("oauthRoles", docs, key_set(known_users), key_set(known_apps)))
    check_storable(r)


# --------------------------------------------------------------------------- BSON bytes end to end
BSON_SAFE = st.recursive(  # values bson.encode accepts (ints within int64, no surrogates, str keys)
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8),
              st.sampled_from(ODD_STRINGS), st.sampled_from(["7", "1.5", "NaN"]).map(Decimal128),
              DATES, OUT_OF_RANGE_MS.map(DatetimeMS), st.binary(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["a", "password", "x"]), inner, max_size=3)),
    max_leaves=4,
)
BSON_USER = st.fixed_dictionaries({}, optional={
    "userId": pool(*USER_IDS), "username": pool("alice", "bob"), "email": pool("a@x.io", "A@x.io"),
    "password": SECRET, "signCount": st.one_of(pool(1, "2", Decimal128("3")), BSON_SAFE),
    "providerRoles": st.one_of(pool(["a"], "b"), BSON_SAFE), "createdAt": st.one_of(DATES, BSON_SAFE),
    "updatedAt": BSON_SAFE, "banned": st.one_of(BOOL[0], BSON_SAFE), "__v": BSON_SAFE,
})


@SETTINGS
@given(docs=batch(BSON_USER), corrupt=st.sets(st.integers(1, 8)))
def test_decode_then_transform_accounts_for_every_document(docs, corrupt):
    """BSON bytes (some with invalid UTF-8) → decode_documents → transform_users, combined the
    way transform_task does: every stored document is accepted or rejected exactly once."""
    raws = []
    for d in docs:
        if d["_id"] in {oid(i) for i in corrupt}:
            raw = bson.encode({**d, "firstName": "PLACEHOLDER"})
            raws.append(raw.replace(b"PLACEHOLDER", b"ab\xed\xa0\x80cdefgh"))
        else:
            raws.append(bson.encode(d))
    decoded, undecodable = tf.decode_documents(raws)
    assert len(decoded) + len(undecodable) == len(docs)
    assert {str(d["_id"]) for d in decoded} | {r["source_id"] for r in undecodable} == {str(d["_id"]) for d in docs}
    assert all(r["reason_code"] == "undecodable_document" and SECRET_MARK not in r["document"] for r in undecodable)
    result = run("users", decoded)
    check_common(decoded, result, "users", "user_roles")
    accepted = set(result.tables["users"]["mongo_id"])
    rejected = Counter(result.rejects.loc[result.rejects["scope"] == "document", "source_id"])
    rejected.update(r["source_id"] for r in undecodable)
    for d in docs:
        assert (str(d["_id"]) in accepted) + rejected[str(d["_id"])] == 1


def _codes(draw_list):
    return [None if v < 0 else v for v in draw_list]


@given(st.integers(0, 60).flatmap(lambda n: st.tuples(
    *(st.lists(st.integers(-1, width), min_size=n, max_size=n) for width in (6, 3, 3, 4, 4)),
    st.permutations(range(n)))))
@settings(max_examples=300, deadline=None)
def test_coded_duplicate_plan_equals_the_pandas_plan(data):
    """The numpy contests of the batched users transform: the same losers, in the same order,
    for the same reasons (the same keys and winners) as :func:`transform.duplicate_plan`, the
    one-frame transform's, over the same values as a frame; NULLs (-1) never contest and sort
    last, descending and multi-column orders included."""
    ids, a, b, created, updated, mongo = data
    passes = ((["id"], ["updated_at"], [False], "duplicate_key", "key", False),
              (["a", "b"], ["created_at"], [True], "duplicate_pair", "pair", False),
              (["a"], ["created_at", "updated_at"], [True, False], "duplicate_a", "a", False))
    columns = {"id": ids, "a": a, "b": b, "created_at": created, "updated_at": updated, "mongo_id": list(mongo)}
    frame = pd.DataFrame({k: pd.Series(_codes(v), dtype=object) for k, v in columns.items()})
    frame["_row"] = [10 * i for i in range(len(ids))]
    want = tf.duplicate_plan(frame, passes)
    got = tf.coded_duplicate_plan({k: np.array(v, dtype=np.int32) for k, v in columns.items()},
                                  frame["_row"].to_numpy(), passes)
    assert [(row, code, tf.duplicate_reason(what, key, winner)) for row, code, (what, _, key, winner) in got] == want
