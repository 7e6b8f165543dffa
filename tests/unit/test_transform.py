"""One focused test per source-data rule of ``authmigrate.transform`` (no servers).

Every rule listed in docs/data-contract.md has a test here; the catalog there names them.
Documents are plain dicts shaped the way the identity provider stores them, with fixed
``ObjectId`` values, turned into the transform's input with ``documents_frame``.

A few tests assert the behaviour the contract asks for where the code currently does
something else; they are marked in their docstrings with "SUSPECTED BUG".
"""
from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "plugins"))

import datetime as dt  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402

import bson  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from bson import Decimal128, ObjectId  # noqa: E402
from bson.datetime_ms import DatetimeMS  # noqa: E402
from bson.int64 import Int64  # noqa: E402

from authmigrate import transform as tf  # noqa: E402
from authmigrate.registry import COLLECTIONS, TABLES  # noqa: E402

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = dt.datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
T2 = dt.datetime(2024, 9, 1, 12, 0, 0, tzinfo=UTC)
NO_LEGACY = pd.DataFrame(columns=["app_id", "user_id"]).astype("string")


# --------------------------------------------------------------------------- helpers
def oid(n: int) -> ObjectId:
    """A fixed ObjectId: 65a000000000000000000001, 65a000000000000000000002, ..."""
    return ObjectId(f"65a{n:021x}")


def user(n: int, **fields) -> dict:
    doc = {"_id": oid(n), "userId": f"{n:012d}", "username": f"user{n}", "email": f"user{n}@example.com",
           "createdAt": T0, "updatedAt": T0}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not _ABSENT}


def app(n: int, **fields) -> dict:
    doc = {"_id": oid(1000 + n), "oauthClientAppId": f"{n:06d}", "clientId": f"client-{n}",
           "owner": "000000000001", "createdAt": T0, "updatedAt": T0}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not _ABSENT}


def role(n: int, **fields) -> dict:
    doc = {"_id": oid(2000 + n), "oauthRoleId": f"role-{n}", "oauthClientAppId": "000001",
           "oauthRoleName": f"name-{n}", "oauthUserIds": [], "createdAt": T0, "updatedAt": T0}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not _ABSENT}


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()  # a field left out of the document entirely


def frame(docs: list[dict], collection: str) -> pd.DataFrame:
    return tf.documents_frame(docs, COLLECTIONS[collection].projection)


def users(docs: list[dict]) -> tf.Result:
    return tf.transform_users(frame(docs, "users"))


KNOWN_USERS = {f"{n:012d}" for n in range(1, 6)}
KNOWN_APPS = {"000001", "000002", "012345"}


def apps(docs: list[dict], known_users: set[str] = KNOWN_USERS, legacy: pd.DataFrame = NO_LEGACY) -> tf.Result:
    return tf.transform_apps(frame(docs, "oauthClientApps"), known_users, legacy)


def roles(docs: list[dict], known_users: set[str] = KNOWN_USERS, known_apps: set[str] = KNOWN_APPS) -> tf.Result:
    return tf.transform_roles(frame(docs, "oauthRoles"), known_users, known_apps)


def legacy(*pairs: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(list(pairs), columns=["app_id", "user_id"]).astype("string")


def rejects(result: tf.Result) -> list[dict]:
    return result.rejects.to_dict("records")


def only_reject(result: tf.Result) -> dict:
    rows = rejects(result)
    assert len(rows) == 1, rows
    return rows[0]


def accepted_one(result: tf.Result, table: str) -> dict:
    assert result.rejects.empty, rejects(result)
    df = result.tables[table]
    assert len(df) == 1, df
    return {k: (None if _isna(v) else v) for k, v in df.iloc[0].to_dict().items()}


def _isna(v) -> bool:
    return not isinstance(v, (list, dict)) and bool(pd.isna(v))


def col(result: tf.Result, table: str, column: str) -> list:
    """A column's values, NULLs (NA / NaT) as None."""
    return [None if _isna(v) else v for v in result.tables[table][column].tolist()]


def doc_rejected(result: tf.Result, code: str, source: ObjectId, table: str) -> dict:
    """Assert the document was refused with ``code`` (scope document) and is not in ``table``."""
    r = only_reject(result)
    assert (r["scope"], r["reason_code"], r["source_id"], r["element"]) == ("document", code, str(source), None)
    assert str(source) not in set(result.tables[table]["mongo_id"])
    assert result.counts["rejected_documents"] == 1
    assert result.counts["rejects_by_reason"] == {code: 1}
    return r


def ts(value: str) -> pd.Timestamp:
    return pd.Timestamp(value).tz_convert("UTC") if pd.Timestamp(value).tzinfo else pd.Timestamp(value, tz="UTC")


# --------------------------------------------------------------------------- clean documents, dtypes
def test_clean_user_becomes_one_typed_row():
    r = users([user(1, password="pw-hash", firstName="Ann", lastName="Lee", identityProvider="google",
                    identityProviderUserId="g-1", passkeyId="pk", passkeyPublicKey="pub", mfaSecret="mfa",
                    mfaEnabled=True, emailVerified=True, signCount=4, canManageApps=True, banned=True,
                    bannedAt=T1, bannedReason="spam", bannedBy="000000000002",
                    providerRoles=["standardUser", "oauthUser"])])
    row = accepted_one(r, "users")
    assert row == {
        "id": "000000000001", "mongo_id": str(oid(1)), "username": "user1", "email": "user1@example.com",
        "password_hash": "pw-hash", "first_name": "Ann", "last_name": "Lee", "identity_provider": "google",
        "identity_provider_user_id": "g-1", "passkey_id": "pk", "passkey_public_key": "pub", "mfa_secret": "mfa",
        "mfa_enabled": True, "email_verified": True, "sign_count": 4, "can_manage_apps": True, "banned": True,
        "banned_at": pd.Timestamp(T1), "banned_reason": "spam", "banned_by": "000000000002",
        "created_at": pd.Timestamp(T0), "updated_at": pd.Timestamp(T0),
    }
    assert col(r, "user_roles", "role_id") == ["oauthUser", "standardUser"]
    assert col(r, "roles", "id") == col(r, "roles", "name") == ["oauthUser", "standardUser"]


EXPECTED_DTYPES = {"text": "string", "bool": "boolean", "int": "Int64", "timestamp": "datetime64[us, UTC]"}


@pytest.mark.parametrize("docs_fn", [
    lambda: users([user(1, providerRoles=["a"])]),
    lambda: users([]),
    lambda: apps([app(1)]),
    lambda: apps([]),
    lambda: roles([role(1, oauthUserIds=["000000000001"])]),
    lambda: roles([]),
], ids=["users", "users-empty", "apps", "apps-empty", "roles", "roles-empty"])
def test_tables_have_registry_columns_and_nullable_dtypes(docs_fn):
    r = docs_fn()
    for name, df in r.tables.items():
        spec = TABLES[name].columns
        assert list(df.columns) == list(spec), name
        for column, kind in spec.items():
            assert str(df[column].dtype) == EXPECTED_DTYPES[kind], (name, column, df[column].dtype)
    assert list(r.rejects.columns) == tf.REJECT_COLUMNS


def test_empty_batch_counts():
    r = users([])
    assert r.counts == {
        "source_documents": 0, "rejected_documents": 0, "rows": {"users": 0, "roles": 0, "user_roles": 0},
        "arrays": {"user_roles": {"array_elements": 0, "rejected_elements": 0, "wildcard_elements": 0}},
        "rejects_by_reason": {},
    }


def test_unknown_extra_fields_are_ignored():
    r = users([user(1, __v=3, legacyThing={"password": "x"}, someList=[1, 2])])
    row = accepted_one(r, "users")
    assert row["id"] == "000000000001"
    assert "__v" not in r.tables["users"].columns
    r = apps([app(1, __v=0, extra="x")])
    assert accepted_one(r, "oauth_client_apps")["id"] == "000001"
    r = roles([role(1, __v=0, description="x")])
    assert accepted_one(r, "client_roles")["id"] == "role-1"


# --------------------------------------------------------------------------- userId (app key)
@pytest.mark.parametrize("value", [_ABSENT, None, ""], ids=["absent", "null", "empty"])
def test_user_id_missing_or_empty_rejects_missing_key(value):
    r = users([user(1, userId=value)])
    rej = doc_rejected(r, "missing_key", oid(1), "users")
    assert rej["reason"] == f"userId is {'empty' if value == '' else 'missing'}"


@pytest.mark.parametrize("value, expected", [
    (42, "000000000042"),
    (Int64(42), "000000000042"),
    (42.0, "000000000042"),
    (Decimal128("42"), "000000000042"),
    (0, "000000000000"),
    (123456789012345, "123456789012345"),  # wider than 12 digits: kept whole
    ("42", "42"),  # a string is taken as is (no padding)
    (" 000000000042 ", " 000000000042 "),  # ... including its spaces
], ids=["int", "int64", "float", "decimal128", "zero", "wide", "short-string", "spaces"])
def test_numeric_user_id_becomes_twelve_digit_string(value, expected):
    r = users([user(1, userId=value)])
    assert accepted_one(r, "users")["id"] == expected


@pytest.mark.parametrize("value", [True, False, -1, 1.5, float("nan"), float("inf"), Decimal128("1.5"),
                                   Decimal128("NaN"), {"n": 1}, ["000000000001"], oid(99), T0],
                         ids=["true", "false", "negative", "fraction", "nan", "inf", "dec-fraction", "dec-nan",
                              "object", "array", "objectid", "date"])
def test_user_id_of_wrong_type_rejects_invalid_key(value):
    r = users([user(1, userId=value)])
    rej = doc_rejected(r, "invalid_key", oid(1), "users")
    assert rej["reason"].startswith("userId must be a string id, got ")


# --------------------------------------------------------------------------- duplicates
def test_duplicate_user_id_newest_updated_at_wins():
    older = user(1, userId="000000000007", username="old", email="old@x.io", updatedAt=T0)
    newer = user(2, userId="000000000007", username="new", email="new@x.io", updatedAt=T1)
    r = users([newer, older])
    assert col(r, "users", "username") == ["new"]
    rej = doc_rejected(r, "duplicate_key", oid(1), "users")
    assert rej["reason"] == f"userId '000000000007' is already used by document {oid(2)}"


def test_duplicate_user_id_number_and_string_collide():
    r = users([user(1, userId="000000000007", updatedAt=T1), user(2, userId=7, updatedAt=T0)])
    assert col(r, "users", "mongo_id") == [str(oid(1))]
    doc_rejected(r, "duplicate_key", oid(2), "users")


def test_duplicate_user_id_missing_updated_at_loses_and_ties_go_to_smallest_object_id():
    r = users([user(1, userId="000000000007", updatedAt=None), user(2, userId="000000000007", updatedAt=T0)])
    assert col(r, "users", "mongo_id") == [str(oid(2))]
    r = users([user(3, userId="000000000007", updatedAt=T0), user(2, userId="000000000007", updatedAt=T0)])
    assert col(r, "users", "mongo_id") == [str(oid(2))]
    doc_rejected(r, "duplicate_key", oid(3), "users")


def test_duplicate_username_earliest_created_at_wins():
    first = user(1, username="sam", createdAt=T0, updatedAt=T2)
    second = user(2, username="sam", createdAt=T1, updatedAt=T1)
    r = users([second, first])
    assert col(r, "users", "id") == ["000000000001"]
    rej = doc_rejected(r, "duplicate_username", oid(2), "users")
    assert rej["reason"] == f"username 'sam' is already used by document {oid(1)}"


def test_usernames_are_compared_exactly():
    r = users([user(1, username="Sam"), user(2, username="sam"), user(3, username="sam ")])
    assert col(r, "users", "username") == ["Sam", "sam", "sam "]
    assert r.rejects.empty


def test_duplicate_email_ignoring_case_earliest_wins_and_is_stored_as_given():
    r = users([user(2, email="ann@example.com", createdAt=T1), user(1, email="Ann@Example.COM", createdAt=T0)])
    assert col(r, "users", "email") == ["Ann@Example.COM"]
    rej = doc_rejected(r, "duplicate_email", oid(2), "users")
    assert rej["reason"] == ("email (compared case-insensitively) 'ann@example.com' "
                             f"is already used by document {oid(1)}")


def test_duplicate_email_uses_unicode_casefold():
    r = users([user(1, email="straße@example.com"), user(2, email="STRASSE@example.com", createdAt=T1)])
    assert col(r, "users", "email") == ["straße@example.com"]
    doc_rejected(r, "duplicate_email", oid(2), "users")


def test_missing_emails_never_collide():
    r = users([user(1, email=_ABSENT), user(2, email=None), user(3, email="")])
    assert col(r, "users", "email") == [None, None, None]
    assert r.rejects.empty


def test_duplicate_identity_provider_user_id():
    r = users([user(1, identityProvider="github", identityProviderUserId="77", createdAt=T0),
               user(2, identityProvider="github", identityProviderUserId=77, createdAt=T1)])
    assert col(r, "users", "id") == ["000000000001"]
    assert col(r, "users", "identity_provider_user_id") == ["77"]  # numbers: digits, no padding
    rej = doc_rejected(r, "duplicate_identity", oid(2), "users")
    assert rej["reason"] == ("identity (provider, provider user id) ['github', '77'] "
                             f"is already used by document {oid(1)}")


def test_same_provider_user_id_under_other_providers_is_no_duplicate():
    r = users([user(1, identityProvider="github", identityProviderUserId="77"),
               user(2, identityProvider="google", identityProviderUserId="77"),
               user(3, identityProviderUserId="77")])  # no provider: NULL never collides
    assert len(r.tables["users"]) == 3 and r.rejects.empty


def test_null_identity_provider_user_ids_never_collide():
    r = users([user(1, identityProvider="local"), user(2, identityProvider="local", identityProviderUserId=None),
               user(3, identityProvider="local", identityProviderUserId="")])
    assert col(r, "users", "identity_provider_user_id") == [None, None, None]
    assert r.rejects.empty


def test_duplicate_rules_apply_in_order_key_first():
    """A document dropped as a duplicate key does not then take part in the username rule."""
    r = users([user(1, userId="000000000009", username="x", createdAt=T0, updatedAt=T0),
               user(2, userId="000000000009", username="y", createdAt=T1, updatedAt=T1),
               user(3, userId="000000000003", username="y", createdAt=T2, updatedAt=T2)])
    # doc 1 loses its key to doc 2 (newer); doc 3 then loses username "y" to doc 2 (older createdAt)
    assert col(r, "users", "mongo_id") == [str(oid(2))]
    assert sorted((x["source_id"], x["reason_code"]) for x in rejects(r)) == [
        (str(oid(1)), "duplicate_key"), (str(oid(3)), "duplicate_username")]


# --------------------------------------------------------------------------- text fields
TEXT_FIELDS = [("email", "email"), ("password", "password_hash"), ("firstName", "first_name"),
               ("lastName", "last_name"), ("identityProvider", "identity_provider"), ("passkeyId", "passkey_id"),
               ("passkeyPublicKey", "passkey_public_key"), ("mfaSecret", "mfa_secret"),
               ("bannedReason", "banned_reason")]


@pytest.mark.parametrize("field, column", TEXT_FIELDS + [("identityProviderUserId", "identity_provider_user_id"),
                                                         ("bannedBy", "banned_by")])
@pytest.mark.parametrize("value", ["", None, _ABSENT], ids=["empty", "null", "absent"])
def test_empty_optional_strings_become_null(field, column, value):
    r = users([user(1, **{field: value})])
    assert accepted_one(r, "users")[column] is None


@pytest.mark.parametrize("value", [_ABSENT, None, ""], ids=["absent", "null", "empty"])
def test_username_missing_or_empty_rejects_missing_required(value):
    r = users([user(1, username=value)])
    rej = doc_rejected(r, "missing_required", oid(1), "users")
    assert rej["reason"] == f"username is {'empty' if value == '' else 'missing'}"


@pytest.mark.parametrize("field", ["username"] + [f for f, _ in TEXT_FIELDS])
@pytest.mark.parametrize("value", [5, 1.5, True, ["a"], {"a": 1}, T0, Decimal128("1"), oid(5), b"bytes"],
                         ids=["int", "float", "bool", "array", "object", "date", "decimal", "objectid", "binary"])
def test_text_field_of_wrong_type_rejects_invalid_type(field, value):
    r = users([user(1, **{field: value})])
    rej = doc_rejected(r, "invalid_type", oid(1), "users")
    assert rej["reason"] == f"{field} must be a string, got {type(value).__name__}"


@pytest.mark.parametrize("field", ["userId", "username", "email", "password", "firstName", "identityProviderUserId",
                                   "bannedBy"])
def test_nul_byte_in_string_rejects_nul_in_string(field):
    r = users([user(1, **{field: "ab\x00cd"})])
    rej = doc_rejected(r, "nul_in_string", oid(1), "users")
    assert rej["reason"] == f"{field} contains a NUL byte, which PostgreSQL text cannot store"
    shown = json.loads(rej["document"])[field]
    assert "\x00" not in rej["document"]
    assert shown == (tf.REDACTED if field == "password" else "ab\u2400cd")  # NUL shown as U+2400


@pytest.mark.parametrize("field", ["username", "email", "firstName", "mfaSecret", "userId"])
def test_string_over_65536_characters_rejects_string_too_long(field):
    r = users([user(1, **{field: "x" * 65_537})])
    rej = doc_rejected(r, "string_too_long", oid(1), "users")
    assert rej["reason"] == f"{field} is 65537 characters long (limit 65536)"
    assert len(rej["document"]) < 10_000  # long strings are cut in the rendered document


def test_string_of_exactly_65536_characters_and_emoji_are_kept():
    r = users([user(1, firstName="y" * 65_536, lastName="😀" * 65_536, username="ünïcødé 😀")])
    row = accepted_one(r, "users")
    assert len(row["first_name"]) == 65_536 and row["last_name"] == "😀" * 65_536
    assert row["username"] == "ünïcødé 😀"


# --------------------------------------------------------------------------- booleans
BOOL_FIELDS = [("mfaEnabled", "mfa_enabled"), ("emailVerified", "email_verified"),
               ("canManageApps", "can_manage_apps"), ("banned", "banned")]


@pytest.mark.parametrize("field, column", BOOL_FIELDS)
@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False), (Int64(1), True), ("true", True), ("false", False),
    ("TRUE", True), (" False ", False), (None, False), (_ABSENT, False),
], ids=["true", "false", "1", "0", "int64-1", "'true'", "'false'", "'TRUE'", "' False '", "null", "absent"])
def test_booleans_coerce(field, column, value, expected):
    r = users([user(1, **{field: value})])
    assert accepted_one(r, "users")[column] is expected


@pytest.mark.parametrize("value", [2, -1, 1.0, "yes", "1", "", [True], {"v": True}, Decimal128("1")],
                         ids=["2", "-1", "float-1", "yes", "'1'", "empty", "array", "object", "decimal"])
def test_boolean_other_values_reject_invalid_type(value):
    r = users([user(1, banned=value)])
    rej = doc_rejected(r, "invalid_type", oid(1), "users")
    assert rej["reason"].startswith("banned must be a boolean, got ")


# --------------------------------------------------------------------------- integers
@pytest.mark.parametrize("value, expected", [
    (5, 5), (Int64(2**62), 2**62), (3.0, 3), (Decimal128("7"), 7), (Decimal128("7.000"), 7), ("12", 12),
    (" 12 ", 12), ("-4", -4), (None, 0), (_ABSENT, 0), (2**53 + 1, 2**53 + 1),
], ids=["int", "int64", "float", "decimal128", "decimal128-scaled", "digits", "spaces", "negative", "null",
        "absent", "2^53+1"])
def test_sign_count_coerces(value, expected):
    r = users([user(1, signCount=value)])
    assert accepted_one(r, "users")["sign_count"] == expected


@pytest.mark.parametrize("value", ["garbage", "3.0", "+3", "", "1e3", "--5", "\u00b2", "\u0663", "1 2", 3.5,
                                   float("nan"), True, [1], {"n": 1}, Decimal128("7.5"), Decimal128("Infinity"),
                                   Decimal128("1E+30"), str(2**63), T0],
                         ids=["garbage", "'3.0'", "'+3'", "empty", "'1e3'", "double-minus", "superscript-two",
                              "arabic-indic-digit", "inner-space", "fraction", "nan", "bool", "array", "object",
                              "dec-fraction", "dec-inf", "dec-out-of-range", "'2^63'", "date"])
def test_sign_count_garbage_rejects_invalid_type(value):
    r = users([user(1, signCount=value)])
    rej = doc_rejected(r, "invalid_type", oid(1), "users")
    assert rej["reason"].startswith("signCount ")


@pytest.mark.parametrize("value", ["9" * 5000, "-" + "1" * 4301], ids=["5000-digits", "4301-digits-negative"])
def test_sign_count_digit_string_over_4300_digits_rejects_invalid_type(value):
    """SUSPECTED BUG: ``int()`` refuses strings of more than 4,300 digits (Python's
    ``sys.get_int_max_str_digits()``) with a ValueError that ``integer()`` does not catch, so the
    whole transform crashes instead of rejecting one document. ('--5' and '²' crashed the same
    way before digit strings were matched with ``[0-9]``; they are in the garbage test now.)"""
    r = users([user(1, signCount=value)])
    doc_rejected(r, "invalid_type", oid(1), "users")


# --------------------------------------------------------------------------- timestamps
@pytest.mark.parametrize("value, expected", [
    (dt.datetime(2024, 3, 1, 12, 0, 0, 123000), "2024-03-01T12:00:00.123Z"),  # naive BSON date = UTC
    (dt.datetime(2024, 3, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2024-03-01T12:00:00Z"),
    (T0, "2024-03-01T12:00:00Z"),
    ("2019-03-04T10:11:12.345Z", "2019-03-04T10:11:12.345Z"),
    ("2019-03-04T10:11:12+02:00", "2019-03-04T08:11:12Z"),
    ("2019-03-04T10:11:12-05:30", "2019-03-04T15:41:12Z"),
    ("2019-03-04T10:11:12", "2019-03-04T10:11:12Z"),  # no zone: UTC
    ("2019-03-04 10:11:12.123456", "2019-03-04T10:11:12.123456Z"),
    ("2019-03-04", "2019-03-04T00:00:00Z"),
    (" 2019-03-04T10:11:12Z ", "2019-03-04T10:11:12Z"),
    (1551694272, "2019-03-04T10:11:12Z"),  # epoch seconds
    (1551694272.5, "2019-03-04T10:11:12.5Z"),
    (1551694272345, "2019-03-04T10:11:12.345Z"),  # epoch milliseconds (> 1e11)
    (Int64(1551694272345), "2019-03-04T10:11:12.345Z"),
    (Decimal128("1551694272345"), "2019-03-04T10:11:12.345Z"),
    (100_000_000_000, "5138-11-16T09:46:40Z"),  # exactly 1e11: still seconds
    (100_000_000_001, "1973-03-03T09:46:40.001Z"),  # above 1e11: milliseconds
    (-86400, "1969-12-31T00:00:00Z"),
    (dt.datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00Z"),
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC), "9999-12-31T23:59:59.999Z"),
], ids=["naive", "aware+02", "aware-utc", "iso-Z", "iso+02", "iso-0530", "iso-no-zone", "iso-space-micro",
        "date-only", "iso-spaces", "epoch-s", "epoch-s-float", "epoch-ms", "epoch-ms-int64", "epoch-ms-decimal",
        "1e11", "1e11+1", "negative-epoch", "year-1", "year-9999"])
def test_dates_coerce_to_utc(value, expected):
    r = users([user(1, createdAt=value)])
    got = accepted_one(r, "users")["created_at"]
    assert got == pd.Timestamp(expected.replace("Z", "+00:00"))
    assert str(got.tz) == "UTC"


@pytest.mark.parametrize("value", ["", None, _ABSENT], ids=["empty", "null", "absent"])
def test_missing_dates_are_null(value):
    r = users([user(1, createdAt=value, updatedAt=value, bannedAt=value)])
    row = accepted_one(r, "users")
    assert row["created_at"] is None and row["updated_at"] is None and row["banned_at"] is None


@pytest.mark.parametrize("field", ["createdAt", "updatedAt", "bannedAt"])
@pytest.mark.parametrize("value", ["not-a-date", " ", "2019-13-40", "1551694272345", True, float("nan"),
                                   float("inf"), 10**30, Decimal128("1.5"), [T0], {"$date": 1}, oid(3)],
                         ids=["garbage", "blank", "bad-calendar", "digits-string", "bool", "nan", "inf",
                              "huge-epoch", "dec-fraction", "array", "object", "objectid"])
def test_unparseable_dates_reject_invalid_date(field, value):
    r = users([user(1, **{field: value})])
    rej = doc_rejected(r, "invalid_date", oid(1), "users")
    assert rej["reason"].startswith(f"{field} is not a date: ")


def test_out_of_range_bson_date_rejects_invalid_date():
    """A BSON date outside Python's range decodes (DATETIME_AUTO) to a DatetimeMS."""
    raw = bson.encode(user(1, createdAt=DatetimeMS(2**62)))
    docs, undecodable = tf.decode_documents([raw])
    assert undecodable == [] and isinstance(docs[0]["createdAt"], DatetimeMS)
    r = users(docs)
    rej = doc_rejected(r, "invalid_date", oid(1), "users")
    assert rej["reason"] == "createdAt is outside the representable date range"
    assert json.loads(rej["document"])["createdAt"] == {"$date": {"$numberLong": str(2**62)}}


def test_bson_dates_round_trip_as_utc():
    naive = dt.datetime(2024, 3, 1, 12, 0, 0, 123000)
    docs, _ = tf.decode_documents([bson.encode(user(1, createdAt=naive))])
    assert docs[0]["createdAt"].tzinfo is not None
    assert accepted_one(users(docs), "users")["created_at"] == pd.Timestamp("2024-03-01T12:00:00.123Z")


# --------------------------------------------------------------------------- other user references
@pytest.mark.parametrize("value, expected", [("000000000002", "000000000002"), (2, "000000000002"),
                                             (Decimal128("2"), "000000000002")])
def test_banned_by_numbers_become_twelve_digit_ids(value, expected):
    assert accepted_one(users([user(1, bannedBy=value)]), "users")["banned_by"] == expected


def test_banned_by_of_wrong_type_rejects_invalid_key():
    doc_rejected(users([user(1, bannedBy=True)]), "invalid_key", oid(1), "users")


# --------------------------------------------------------------------------- providerRoles
@pytest.mark.parametrize("value", [_ABSENT, None, []], ids=["absent", "null", "empty-array"])
def test_provider_roles_missing_gives_no_rows(value):
    r = users([user(1, providerRoles=value)])
    accepted_one(r, "users")
    assert r.tables["user_roles"].empty and r.tables["roles"].empty
    assert r.counts["arrays"]["user_roles"] == {"array_elements": 0, "rejected_elements": 0, "wildcard_elements": 0}


def test_provider_roles_plain_string_is_one_element():
    r = users([user(1, providerRoles="standardUser")])
    accepted_one(r, "users")
    assert r.tables["user_roles"].to_dict("records") == [{"user_id": "000000000001", "role_id": "standardUser"}]
    assert r.counts["arrays"]["user_roles"]["array_elements"] == 1


@pytest.mark.parametrize("value", [{"role": "admin"}, 5, 2.5, True, Decimal128("1"), T0],
                         ids=["object", "int", "float", "bool", "decimal", "date"])
def test_provider_roles_not_an_array_rejects_document_invalid_array(value):
    r = users([user(1, providerRoles=value), user(2, providerRoles=["ok"])])
    rej = only_reject(r)
    assert (rej["scope"], rej["reason_code"], rej["source_id"]) == ("document", "invalid_array", str(oid(1)))
    assert rej["reason"] == f"providerRoles must be an array, got {type(value).__name__}"
    assert col(r, "users", "id") == ["000000000002"]
    assert r.counts["arrays"]["user_roles"]["array_elements"] == 1  # only accepted documents' arrays count


@pytest.mark.parametrize("element, reason", [
    (["nested"], "role must be a string, got list"),
    (7, "role must be a string, got int"),
    (None, "role must be a string, got NoneType"),
    ({"r": 1}, "role must be a string, got dict"),
    ("", "role is an empty string"),
    ("   ", "role is an empty string"),
], ids=["nested-array", "number", "null", "object", "empty", "blank"])
def test_provider_roles_bad_element_rejects_element_invalid_element(element, reason):
    r = users([user(1, providerRoles=["standardUser", element])])
    assert col(r, "users", "id") == ["000000000001"]  # the user is kept
    assert col(r, "user_roles", "role_id") == ["standardUser"]
    rej = only_reject(r)
    assert (rej["scope"], rej["reason_code"], rej["reason"]) == ("element", "invalid_element", reason)
    assert rej["element"] == (element if isinstance(element, str) or element is None else tf.preview(element, 200))
    assert r.counts["rejected_documents"] == 0
    assert r.counts["arrays"]["user_roles"] == {"array_elements": 2, "rejected_elements": 1, "wildcard_elements": 0}


def test_provider_roles_duplicate_element_rejects_element_duplicate_element():
    r = users([user(1, providerRoles=["standardUser", "admin", "standardUser"])])
    assert col(r, "user_roles", "role_id") == ["admin", "standardUser"]
    rej = only_reject(r)
    assert (rej["scope"], rej["element"], rej["reason_code"]) == ("element", "standardUser", "duplicate_element")
    assert r.counts["arrays"]["user_roles"] == {"array_elements": 3, "rejected_elements": 1, "wildcard_elements": 0}


def test_provider_roles_are_case_and_space_sensitive():
    r = users([user(1, providerRoles=["admin", "Admin", " admin"])])
    assert col(r, "user_roles", "role_id") == [" admin", "Admin", "admin"]
    assert r.rejects.empty


@pytest.mark.parametrize("element, code", [("ad\x00min", "nul_in_string"), ("r" * 65_537, "string_too_long")])
def test_provider_roles_unstorable_element_rejects_element(element, code):
    r = users([user(1, providerRoles=[element, "ok"])])
    assert col(r, "user_roles", "role_id") == ["ok"]
    rej = only_reject(r)
    assert (rej["scope"], rej["reason_code"]) == ("element", code)


def test_reject_element_text_is_storable_in_postgresql():
    """SUSPECTED BUG: ``_reject_row`` keeps a string element as ``element[:200]`` without the
    NUL replacement ``redact`` applies everywhere else, so a role name or member id holding a
    NUL byte yields a reject whose ``element`` PostgreSQL text cannot store: the COPY into
    authmigrate.rejects then fails the collection's whole load transaction."""
    r = users([user(1, providerRoles=["ad\x00min"])])
    r2 = roles([role(1, oauthUserIds=["0000\x0000001"])])
    for rej in rejects(r) + rejects(r2):
        for key in ("source_id", "element", "reason", "document"):
            assert rej[key] is None or "\x00" not in rej[key], (key, rej[key])


def test_roles_table_is_distinct_sorted_role_ids():
    r = users([user(1, providerRoles=["standardUser", "oauthUser"]), user(2, providerRoles=["standardUser"]),
               user(3, providerRoles="admin")])
    assert r.tables["roles"].to_dict("records") == [
        {"id": "admin", "name": "admin"}, {"id": "oauthUser", "name": "oauthUser"},
        {"id": "standardUser", "name": "standardUser"}]
    assert r.tables["user_roles"].to_dict("records") == [
        {"user_id": "000000000001", "role_id": "oauthUser"}, {"user_id": "000000000001", "role_id": "standardUser"},
        {"user_id": "000000000002", "role_id": "standardUser"}, {"user_id": "000000000003", "role_id": "admin"}]


def test_roles_of_rejected_users_are_not_created():
    r = users([user(1, providerRoles=["onlyMine"], userId=None), user(2, providerRoles=["shared"])])
    assert col(r, "roles", "id") == ["shared"]


# --------------------------------------------------------------------------- legacy oauthClientAppIds
def test_legacy_app_ids_become_ownership_claims():
    r = users([user(1, oauthClientAppIds=[12345, "000002", 12345.0, Decimal128("3"), "", None, True, [1]]),
               user(2, oauthClientAppIds="000009")])
    claims = r.extras["legacy_owners"].sort_values(["app_id", "user_id"]).reset_index(drop=True)
    assert claims.to_dict("records") == [
        {"app_id": "000002", "user_id": "000000000001"}, {"app_id": "000003", "user_id": "000000000001"},
        {"app_id": "000009", "user_id": "000000000002"}, {"app_id": "012345", "user_id": "000000000001"}]
    assert r.rejects.empty  # unusable legacy ids are skipped silently


def test_legacy_app_ids_not_an_array_reject_the_user():
    """A documented choice of array(): a non-array oauthClientAppIds refuses the user."""
    doc_rejected(users([user(1, oauthClientAppIds={"a": 1})]), "invalid_array", oid(1), "users")


def test_legacy_claims_of_rejected_users_are_dropped():
    r = users([user(1, userId=None, oauthClientAppIds=["000001"])])
    assert r.extras["legacy_owners"].empty


# --------------------------------------------------------------------------- apps
def test_clean_app_becomes_one_typed_row():
    r = apps([app(1, clientSecret="s3cret", oauthAppName="App", redirectUri="https://x/cb",
                  accessTokenValidity=3600, isPublicClient=True, disabled=True, disabledAt=T1,
                  disabledReason="abuse")])
    assert accepted_one(r, "oauth_client_apps") == {
        "id": "000001", "mongo_id": str(oid(1001)), "client_id": "client-1", "client_secret": "s3cret",
        "name": "App", "redirect_uri": "https://x/cb", "access_token_validity": 3600, "is_public_client": True,
        "owner_user_id": "000000000001", "disabled": True, "disabled_at": pd.Timestamp(T1),
        "disabled_reason": "abuse", "created_at": pd.Timestamp(T0), "updated_at": pd.Timestamp(T0)}
    assert r.counts["owners_backfilled"] == 0


@pytest.mark.parametrize("value", [_ABSENT, None, ""], ids=["absent", "null", "empty"])
def test_app_missing_client_id_rejects_missing_required(value):
    rej = doc_rejected(apps([app(1, clientId=value)]), "missing_required", oid(1001), "oauth_client_apps")
    assert rej["reason"] == f"clientId is {'empty' if value == '' else 'missing'}"


def test_app_missing_key_rejects_missing_key():
    doc_rejected(apps([app(1, oauthClientAppId=None)]), "missing_key", oid(1001), "oauth_client_apps")


def test_duplicate_client_id_earliest_created_at_wins():
    r = apps([app(2, clientId="dup", createdAt=T1), app(1, clientId="dup", createdAt=T0)])
    assert col(r, "oauth_client_apps", "id") == ["000001"]
    rej = doc_rejected(r, "duplicate_client_id", oid(1002), "oauth_client_apps")
    assert rej["reason"] == f"clientId 'dup' is already used by document {oid(1001)}"


def test_client_ids_are_compared_exactly():
    r = apps([app(1, clientId="Dup"), app(2, clientId="dup")])
    assert len(r.tables["oauth_client_apps"]) == 2 and r.rejects.empty


def test_duplicate_app_id_newest_updated_at_wins():
    r = apps([app(1, clientId="a", updatedAt=T0), app(1, clientId="b", updatedAt=T1) | {"_id": oid(1009)}])
    assert col(r, "oauth_client_apps", "client_id") == ["b"]
    doc_rejected(r, "duplicate_key", oid(1001), "oauth_client_apps")


@pytest.mark.parametrize("value, expected", [(12345, "012345"), (12345.0, "012345"), (Decimal128("12345"), "012345"),
                                             (1234567, "1234567"), ("12345", "12345"),
                                             ("3f0c1c5e-8d1e-4c7b-9a53-2f9a3c4b5d6e",
                                              "3f0c1c5e-8d1e-4c7b-9a53-2f9a3c4b5d6e")])
def test_numeric_app_id_becomes_six_digit_string(value, expected):
    assert accepted_one(apps([app(1, oauthClientAppId=value)]), "oauth_client_apps")["id"] == expected


@pytest.mark.parametrize("value, expected", [("3600", 3600), (3600.0, 3600), (Decimal128("60"), 60), (None, None),
                                             (_ABSENT, None)])
def test_access_token_validity_coerces(value, expected):
    got = accepted_one(apps([app(1, accessTokenValidity=value)]), "oauth_client_apps")["access_token_validity"]
    assert got is None if expected is None else got == expected


@pytest.mark.parametrize("value", ["1h", 1.5, True, [3600]])
def test_access_token_validity_garbage_rejects_invalid_type(value):
    doc_rejected(apps([app(1, accessTokenValidity=value)]), "invalid_type", oid(1001), "oauth_client_apps")


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**40])
def test_access_token_validity_outside_postgres_integer_rejects(value):
    """SUSPECTED BUG: oauth_client_apps.access_token_validity is ``integer`` (32-bit) in
    schema.sql, but ``integer()`` only checks the 64-bit range, so 2**31 passes the transform
    and then fails the COPY into PostgreSQL ('value out of range for type integer'),
    aborting the whole collection's load instead of rejecting one document."""
    doc_rejected(apps([app(1, accessTokenValidity=value)]), "invalid_type", oid(1001), "oauth_client_apps")


@pytest.mark.parametrize("field, column", [("isPublicClient", "is_public_client"), ("disabled", "disabled")])
@pytest.mark.parametrize("value, expected", [(1, True), ("false", False), (None, False)])
def test_app_booleans_coerce(field, column, value, expected):
    assert accepted_one(apps([app(1, **{field: value})]), "oauth_client_apps")[column] is expected


@pytest.mark.parametrize("value", [2, 2.0, Decimal128("2")])
def test_app_owner_numbers_become_twelve_digit_ids(value):
    assert accepted_one(apps([app(1, owner=value)]), "oauth_client_apps")["owner_user_id"] == "000000000002"


def test_unknown_owner_is_set_null_with_field_reject_dangling_owner():
    r = apps([app(1, owner="999999999999")])
    assert col(r, "oauth_client_apps", "owner_user_id") == [None]
    assert col(r, "oauth_client_apps", "id") == ["000001"]  # the app is kept
    rej = only_reject(r)
    assert (rej["scope"], rej["element"], rej["reason_code"], rej["source_id"]) == (
        "field", "999999999999", "dangling_owner", str(oid(1001)))
    assert r.counts["rejected_documents"] == 0 and r.counts["rejects_by_reason"] == {"dangling_owner": 1}


def test_dangling_owner_is_not_back_filled_from_legacy_claims():
    r = apps([app(1, owner="999999999999")], legacy=legacy(("000001", "000000000002")))
    assert col(r, "oauth_client_apps", "owner_user_id") == [None]
    assert only_reject(r)["reason_code"] == "dangling_owner"


@pytest.mark.parametrize("owner", [_ABSENT, None, ""], ids=["absent", "null", "empty"])
def test_missing_owner_back_filled_from_the_one_claiming_user(owner):
    r = apps([app(1, owner=owner)], legacy=legacy(("000001", "000000000003"), ("000002", "000000000004")))
    assert accepted_one(r, "oauth_client_apps")["owner_user_id"] == "000000000003"
    assert r.counts["owners_backfilled"] == 1


def test_back_fill_from_users_transform_with_legacy_ids_stored_as_numbers():
    u = users([user(3, oauthClientAppIds=[12345]), user(4, oauthClientAppIds=["000002"])])
    known = set(u.tables["users"]["id"])
    r = apps([app(12345, owner=_ABSENT), app(2, owner=_ABSENT, clientId="c2")], known, u.extras["legacy_owners"])
    assert r.tables["oauth_client_apps"][["id", "owner_user_id"]].to_dict("records") == [
        {"id": "000002", "owner_user_id": "000000000004"}, {"id": "012345", "owner_user_id": "000000000003"}]
    assert r.rejects.empty and r.counts["owners_backfilled"] == 2


def test_two_claimants_leave_owner_null_with_ambiguous_owner():
    r = apps([app(1, owner=None)], legacy=legacy(("000001", "000000000004"), ("000001", "000000000002")))
    assert col(r, "oauth_client_apps", "owner_user_id") == [None]
    rej = only_reject(r)
    assert (rej["scope"], rej["element"], rej["reason_code"]) == ("field", "000000000002,000000000004",
                                                                 "ambiguous_owner")
    assert rej["reason"] == "2 users list this app in oauthClientAppIds; owner left NULL"
    assert r.counts["rejected_documents"] == 0 and r.counts["owners_backfilled"] == 0


def test_claimants_that_are_not_known_users_are_ignored():
    r = apps([app(1, owner=None)], legacy=legacy(("000001", "000000000004"), ("000001", "999999999999")))
    assert col(r, "oauth_client_apps", "owner_user_id") == ["000000000004"]
    assert r.rejects.empty


def test_no_claimant_leaves_owner_null_with_missing_owner():
    r = apps([app(1, owner=None)], legacy=legacy(("000002", "000000000004")))
    assert col(r, "oauth_client_apps", "owner_user_id") == [None]
    rej = only_reject(r)
    assert (rej["scope"], rej["element"], rej["reason_code"]) == ("field", None, "missing_owner")


def test_app_owner_of_wrong_type_rejects_invalid_key():
    doc_rejected(apps([app(1, owner={"id": 1})]), "invalid_key", oid(1001), "oauth_client_apps")


# --------------------------------------------------------------------------- roles
def test_clean_role_becomes_typed_rows():
    r = roles([role(1, oauthClientId="client-1", owner="000000000002",
                    oauthUserIds=["000000000003", "000000000001"])])
    assert accepted_one(r, "client_roles") == {
        "id": "role-1", "mongo_id": str(oid(2001)), "oauth_client_app_id": "000001", "oauth_client_id": "client-1",
        "name": "name-1", "owner_user_id": "000000000002", "grants_all_users": False,
        "created_at": pd.Timestamp(T0), "updated_at": pd.Timestamp(T0)}
    assert r.tables["client_role_users"].to_dict("records") == [
        {"client_role_id": "role-1", "user_id": "000000000001"},
        {"client_role_id": "role-1", "user_id": "000000000003"}]


def test_role_of_unknown_app_rejects_document_dangling_app():
    r = roles([role(1, oauthClientAppId="999999", oauthUserIds=["000000000001"])])
    rej = doc_rejected(r, "dangling_app", oid(2001), "client_roles")
    assert rej["reason"] == "app 999999 does not exist (or was rejected)"
    assert r.tables["client_role_users"].empty
    assert r.counts["arrays"]["client_role_users"]["array_elements"] == 0


def test_role_app_id_stored_as_number_is_padded_to_match():
    r = roles([role(1, oauthClientAppId=12345)])
    assert accepted_one(r, "client_roles")["oauth_client_app_id"] == "012345"


def test_wildcard_sets_grants_all_users_and_is_counted_not_a_row():
    r = roles([role(1, oauthUserIds=["*"])])
    row = accepted_one(r, "client_roles")
    assert row["grants_all_users"] is True
    assert r.tables["client_role_users"].empty
    assert r.counts["arrays"]["client_role_users"] == {"array_elements": 1, "rejected_elements": 0,
                                                      "wildcard_elements": 1}


def test_wildcard_as_lone_string_sets_grants_all_users():
    assert accepted_one(roles([role(1, oauthUserIds="*")]), "client_roles")["grants_all_users"] is True


def test_wildcard_mixed_with_ids_keeps_the_ids_as_rows():
    r = roles([role(1, oauthUserIds=["000000000002", "*", "000000000001"])])
    assert accepted_one(r, "client_roles")["grants_all_users"] is True
    assert col(r, "client_role_users", "user_id") == ["000000000001", "000000000002"]
    assert r.counts["arrays"]["client_role_users"] == {"array_elements": 3, "rejected_elements": 0,
                                                      "wildcard_elements": 1}


def test_repeated_wildcard_is_a_duplicate_element():
    r = roles([role(1, oauthUserIds=["*", "*"])])
    rej = only_reject(r)
    assert (rej["scope"], rej["element"], rej["reason_code"]) == ("element", "*", "duplicate_element")
    assert r.counts["arrays"]["client_role_users"] == {"array_elements": 2, "rejected_elements": 1,
                                                      "wildcard_elements": 1}


def test_member_ids_stored_as_numbers_are_coerced():
    r = roles([role(1, oauthUserIds=[1, 2.0, Int64(3), Decimal128("4")])])
    assert col(r, "client_role_users", "user_id") == ["000000000001", "000000000002", "000000000003",
                                                      "000000000004"]
    assert r.rejects.empty


def test_member_as_number_and_as_string_is_a_duplicate_element():
    r = roles([role(1, oauthUserIds=["000000000001", 1])])
    assert col(r, "client_role_users", "user_id") == ["000000000001"]
    rej = only_reject(r)
    assert (rej["element"], rej["reason_code"]) == ("1", "duplicate_element")


def test_unknown_member_rejects_element_dangling_user():
    r = roles([role(1, oauthUserIds=["000000000001", "999999999999", 99])])
    assert col(r, "client_role_users", "user_id") == ["000000000001"]
    rows = rejects(r)
    assert [(x["scope"], x["element"], x["reason_code"]) for x in rows] == [
        ("element", "999999999999", "dangling_user"), ("element", "99", "dangling_user")]
    assert rows[0]["reason"] == "user '999999999999' does not exist (or was rejected)"
    assert r.counts["rejected_documents"] == 0


@pytest.mark.parametrize("element", [["000000000001"], True, {"id": 1}, -1, 1.5, None, "", oid(1)],
                         ids=["nested", "bool", "object", "negative", "fraction", "null", "empty", "objectid"])
def test_bad_member_element_rejects_invalid_element(element):
    r = roles([role(1, oauthUserIds=[element, "000000000001"])])
    assert col(r, "client_role_users", "user_id") == ["000000000001"]
    rej = only_reject(r)
    assert (rej["scope"], rej["reason_code"]) == ("element", "invalid_element")
    assert rej["reason"].startswith("user id ")


@pytest.mark.parametrize("value", [{"a": 1}, 5, True], ids=["object", "number", "bool"])
def test_members_not_an_array_rejects_document_invalid_array(value):
    doc_rejected(roles([role(1, oauthUserIds=value)]), "invalid_array", oid(2001), "client_roles")


def test_duplicate_role_name_in_one_app_earliest_created_at_wins():
    r = roles([role(2, oauthRoleName="admin", createdAt=T1), role(1, oauthRoleName="admin", createdAt=T0),
               role(3, oauthRoleName="admin", oauthClientAppId="000002"), role(4, oauthRoleName="Admin")])
    assert col(r, "client_roles", "id") == ["role-1", "role-3", "role-4"]
    rej = doc_rejected(r, "duplicate_role_name", oid(2002), "client_roles")
    assert rej["reason"] == f"(app, role name) ['000001', 'admin'] is already used by document {oid(2001)}"


def test_duplicate_role_id_newest_updated_at_wins():
    r = roles([role(1, updatedAt=T0), role(1, oauthRoleName="other", updatedAt=T1) | {"_id": oid(2009)}])
    assert col(r, "client_roles", "mongo_id") == [str(oid(2009))]
    doc_rejected(r, "duplicate_key", oid(2001), "client_roles")


def test_role_numeric_id_keeps_its_digits():
    assert accepted_one(roles([role(1, oauthRoleId=17)]), "client_roles")["id"] == "17"


@pytest.mark.parametrize("value", [_ABSENT, None, ""], ids=["absent", "null", "empty"])
def test_role_missing_name_rejects_missing_required(value):
    doc_rejected(roles([role(1, oauthRoleName=value)]), "missing_required", oid(2001), "client_roles")


def test_role_unknown_owner_is_set_null_with_field_reject():
    r = roles([role(1, owner="999999999999")])
    assert col(r, "client_roles", "owner_user_id") == [None]
    rej = only_reject(r)
    assert (rej["scope"], rej["element"], rej["reason_code"]) == ("field", "999999999999", "dangling_owner")


def test_role_without_owner_is_kept_without_reject():
    r = roles([role(1)])
    assert accepted_one(r, "client_roles")["owner_user_id"] is None


@pytest.mark.parametrize("bad_id", [None, "a\x00b"], ids=["null-_id", "nul-in-string-_id"])
def test_document_id_postgresql_cannot_store_rejects_the_document(bad_id):
    """SUSPECTED BUG: MongoDB allows ``_id: null`` (one per collection) and string ``_id``s
    holding a NUL byte. ``source_id`` turns them into a NULL / NUL-holding ``mongo_id``, which
    the transform accepts; ``mongo_id`` is ``text NOT NULL`` in schema.sql, so the COPY (and
    with it the whole collection's load) fails. The document should be refused instead."""
    r = users([user(1), user(2) | {"_id": bad_id}])
    assert col(r, "users", "mongo_id") == [str(oid(1))]
    assert r.counts["rejected_documents"] == 1
    assert r.rejects["scope"].tolist() == ["document"]


# --------------------------------------------------------------------------- incremental runs: existing rows win
def existing_users(*rows: tuple) -> pd.DataFrame:
    cols = ["id", "mongo_id", "username", "email", "identity_provider", "identity_provider_user_id"]
    return pd.DataFrame(list(rows), columns=cols, dtype=object)


@pytest.mark.parametrize("field, value, code", [
    ("username", "taken", "duplicate_username"),
    ("email", "TAKEN@example.com", "duplicate_email"),  # compared case-insensitively
], ids=["username", "email"])
def test_incremental_batch_row_clashing_with_existing_row_is_rejected(field, value, code):
    existing = existing_users(("000000000009", "x", "taken", "taken@example.com", None, None))
    r = tf.transform_users(frame([user(1, **{field: value}, createdAt=dt.datetime(1999, 1, 1, tzinfo=UTC)),
                                  user(2)], "users"), existing)
    assert col(r, "users", "id") == ["000000000002"]  # the existing row wins, however old the batch row
    rej = only_reject(r)
    assert (rej["scope"], rej["reason_code"], rej["source_id"]) == ("document", code, str(oid(1)))
    assert rej["reason"].endswith("is already used by existing row 000000000009")


def test_incremental_identity_clash_and_null_identities():
    existing = existing_users(("000000000009", "x", "u9", None, "github", "77"),
                              ("000000000008", "y", "u8", None, "local", None))
    r = tf.transform_users(frame([user(1, identityProvider="github", identityProviderUserId=77),
                                  user(2, identityProvider="local")], "users"), existing)
    assert col(r, "users", "id") == ["000000000002"]
    assert only_reject(r)["reason_code"] == "duplicate_identity"


@pytest.mark.parametrize("existing", [None, existing_users()], ids=["none", "empty"])
def test_no_existing_rows_changes_nothing(existing):
    docs = [user(1), user(2, username="user1")]
    a, b = users(docs), tf.transform_users(frame(docs, "users"), existing)
    pd.testing.assert_frame_equal(a.tables["users"], b.tables["users"])
    assert rejects(a) == rejects(b)


def test_incremental_client_id_clash_rejects_app():
    existing = pd.DataFrame([("000009", "x", "client-1")], columns=["id", "mongo_id", "client_id"], dtype=object)
    r = tf.transform_apps(frame([app(1), app(2)], "oauthClientApps"), KNOWN_USERS, NO_LEGACY, existing)
    assert col(r, "oauth_client_apps", "id") == ["000002"]
    rej = doc_rejected(r, "duplicate_client_id", oid(1001), "oauth_client_apps")
    assert rej["reason"] == "clientId 'client-1' is already used by existing row 000009"


def test_incremental_role_name_clash_rejects_role():
    existing = pd.DataFrame([("role-9", "x", "000001", "name-1")],
                            columns=["id", "mongo_id", "oauth_client_app_id", "name"], dtype=object)
    r = tf.transform_roles(frame([role(1), role(2), role(3, oauthRoleName="name-1", oauthClientAppId="000002")],
                                 "oauthRoles"), KNOWN_USERS, KNOWN_APPS, existing)
    assert col(r, "client_roles", "id") == ["role-2", "role-3"]
    doc_rejected(r, "duplicate_role_name", oid(2001), "client_roles")


# --------------------------------------------------------------------------- one odd document, whole batch
def test_one_wrong_type_does_not_change_other_documents_values():
    """Object columns: no pandas type inference across the batch (no float-ified ids or counts,
    no stringified dates, no lost precision)."""
    big = 2**53 + 1
    clean = [user(1, signCount=big, createdAt=dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
                  banned=True, userId="000000000001"),
             user(2, signCount=None, createdAt=None, banned=False, userId="000000000002")]
    odd = [user(3, userId=3, signCount="12", createdAt="2019-03-04T10:11:12Z", banned="true", email=5),
           user(4, userId=4.0, signCount=3.0, createdAt=1551694272345, banned=1)]
    alone = users(clean)
    mixed = users(clean + odd)
    assert mixed.tables["users"].iloc[:2].reset_index(drop=True).equals(alone.tables["users"])
    assert col(mixed, "users", "id") == ["000000000001", "000000000002", "000000000004"]
    assert col(mixed, "users", "sign_count") == [big, 0, 3]
    assert [(x["source_id"], x["reason_code"]) for x in rejects(mixed)] == [(str(oid(3)), "invalid_type")]


def test_one_reject_does_not_stop_the_batch():
    r = users([user(1), user(2, userId=True), user(3, createdAt="nope"), user(4)])
    assert col(r, "users", "id") == ["000000000001", "000000000004"]
    assert r.counts["rejects_by_reason"] == {"invalid_date": 1, "invalid_key": 1}


def test_first_failing_field_in_rule_order_names_the_reject():
    r = users([user(1, userId=None, username=None, createdAt="nope")])
    assert only_reject(r)["reason_code"] == "missing_key"


# --------------------------------------------------------------------------- decoding
def test_decode_documents_rejects_invalid_utf8_and_keeps_valid_documents():
    good = bson.encode(user(1, password="hunter2"))
    template = bson.encode(user(2, firstName="PLACEHOLDER", password="hunter2"))
    bad = template.replace(b"PLACEHOLDER", b"ab\xed\xa0\x80cdefgh")  # CESU-8 surrogate: not UTF-8
    assert len(bad) == len(template)
    docs, rej = tf.decode_documents([good, bad, bson.encode(user(3))])
    assert [d["_id"] for d in docs] == [oid(1), oid(3)]
    assert len(rej) == 1
    assert (rej[0]["scope"], rej[0]["reason_code"], rej[0]["source_id"]) == ("document", "undecodable_document",
                                                                            str(oid(2)))
    assert rej[0]["reason"].startswith("document is not valid BSON/UTF-8 (")
    shown = json.loads(rej[0]["document"])
    assert shown["password"] == tf.REDACTED and "hunter2" not in rej[0]["document"]
    assert shown["firstName"].startswith("ab\ufffd")


def test_decode_documents_truncated_bytes_reject_without_id():
    docs, rej = tf.decode_documents([b"\x05\x00\x00", bson.encode(user(1))[:-3]])
    assert docs == []
    assert [(x["reason_code"], x["source_id"]) for x in rej] == [("undecodable_document", None)] * 2


def test_decode_documents_never_splits_or_joins_documents_across_their_bytes():
    """A batch is decoded in one call only when every document is as long as it says: bytes that
    hold two documents, or a document cut short and the next one's start, are each rejected, as
    one decode per document rejects them, and the others are decoded with their positions."""
    one, two, three = (bson.encode(user(i)) for i in (1, 2, 3))
    positions: list[int] = []
    docs, rej = tf.decode_documents([one + two, three], positions)
    assert [d["_id"] for d in docs] == [oid(3)] and positions == [1]
    assert [x["reason_code"] for x in rej] == ["undecodable_document"]
    positions = []
    docs, rej = tf.decode_documents([one[:-4], one[-4:] + two, three], positions)
    assert [d["_id"] for d in docs] == [oid(3)] and positions == [2]
    assert [x["reason_code"] for x in rej] == ["undecodable_document"] * 2
    positions = []
    docs, rej = tf.decode_documents([one, two, three], positions)
    assert [d["_id"] for d in docs] == [oid(1), oid(2), oid(3)] and positions == [0, 1, 2] and rej == []


def test_decode_documents_gives_utc_aware_dates_and_decimal128():
    docs, _ = tf.decode_documents([bson.encode(user(1, signCount=Decimal128("7")))])
    assert docs[0]["createdAt"] == T0 and docs[0]["createdAt"].tzinfo is not None
    assert docs[0]["signCount"] == Decimal128("7")
    assert accepted_one(users(docs), "users")["sign_count"] == 7


# --------------------------------------------------------------------------- redaction
SECRETS = {"password": "PW-SECRET-1", "mfaSecret": "MFA-SECRET-2", "passkeyPublicKey": "PK-SECRET-3"}


@pytest.mark.parametrize("bad", [{"userId": True}, {"username": None}, {"createdAt": "nope"},
                                 {"providerRoles": [7]}, {"password": 5}],
                         ids=["invalid_key", "missing_required", "invalid_date", "invalid_element", "secret-wrong"])
def test_rejected_user_document_never_shows_secrets(bad):
    doc = user(1, **SECRETS, profile={"password": "NESTED-SECRET-4", "list": [{"MFASecret": "NESTED-SECRET-5"}]})
    doc.update(bad)
    r = users([doc])
    rej = only_reject(r)
    for secret in list(SECRETS.values()) + ["NESTED-SECRET-4", "NESTED-SECRET-5"]:
        assert secret not in rej["document"] and secret not in rej["reason"] and secret not in str(rej["element"])
    shown = json.loads(rej["document"])
    assert "profile" not in shown  # a field outside the mapping is never shown, whatever it holds
    assert tf.redact(doc["profile"]) == {"password": "[REDACTED]", "list": [{"MFASecret": "[REDACTED]"}]}
    for key in SECRETS:
        assert shown[key] == "[REDACTED]"


def test_rejected_app_document_never_shows_client_secret():
    r = apps([app(1, clientSecret="CLIENT-SECRET-6", clientId=None), app(2, clientSecret="CLIENT-SECRET-7",
                                                                       owner="999999999999")])
    assert len(r.rejects) == 2
    for rej in rejects(r):
        assert "CLIENT-SECRET" not in rej["document"]
        assert json.loads(rej["document"])["clientSecret"] == "[REDACTED]"


def test_redact_and_render():
    assert tf.redact({"Password": "x", "a": [{"clientSecret": "y"}, "n\x00l"], "b": b"\x01\x02"}) == {
        "Password": "[REDACTED]", "a": [{"clientSecret": "[REDACTED]"}, "n\u2400l"], "b": "<binary 2 bytes>"}
    long = tf.redact("z" * 2_500)
    assert long == "z" * 2_000 + "…[500 more chars]"
    assert tf.render(None) is None
    assert json.loads(tf.render({"_id": oid(1), "d": T0})) == {"_id": {"$oid": str(oid(1))},
                                                              "d": {"$date": "2024-03-01T12:00:00Z"}}


# --------------------------------------------------------------------------- reconciliation, determinism
def _dirty_users() -> list[dict]:
    return [
        user(1, providerRoles=["standardUser", "oauthUser"], oauthClientAppIds=[12345]),
        user(2, providerRoles="standardUser"),
        user(3, providerRoles=["standardUser", "standardUser", 7, ""]),
        user(4, userId="000000000001", updatedAt=T1, providerRoles=["x"]),  # wins key 1 over doc 1
        user(5, userId=None, providerRoles=["never"]),
        user(6, username="user2", createdAt=T1),
        user(7, email="USER3@example.com", createdAt=T1),
        user(8, createdAt="garbage"),
        user(9, userId=9, signCount=Decimal128("3"), providerRoles={"bad": 1}),
        user(10, identityProvider="gh", identityProviderUserId=5, providerRoles=["a", ["b"]]),
        user(11, identityProvider="gh", identityProviderUserId="5", createdAt=T2),
        user(12, firstName="nul\x00"),
    ]


def _check_reconciliation(result: tf.Result, main: str, join: str | None):
    c = result.counts
    scopes = result.rejects["scope"].tolist()
    assert c["source_documents"] == len(result.tables[main]) + c["rejected_documents"]
    assert c["rejected_documents"] == scopes.count("document")
    assert c["rows"] == {name: len(df) for name, df in result.tables.items()}
    assert sum(c["rejects_by_reason"].values()) == len(result.rejects)
    if join:
        a = c["arrays"][join]
        assert a["array_elements"] == len(result.tables[join]) + a["rejected_elements"] + a["wildcard_elements"]
        assert a["rejected_elements"] == scopes.count("element")


def test_reconciliation_identities_users():
    r = users(_dirty_users())
    _check_reconciliation(r, "users", "user_roles")
    assert r.counts["source_documents"] == 12
    assert r.counts["rejected_documents"] == 8
    assert r.counts["rejects_by_reason"] == {
        "duplicate_element": 1, "duplicate_email": 1, "duplicate_identity": 1, "duplicate_key": 1,
        "duplicate_username": 1, "invalid_array": 1, "invalid_date": 1, "invalid_element": 3,
        "missing_key": 1, "nul_in_string": 1}
    # counted over accepted documents only: doc 2 (1), doc 3 (4), doc 4 (1), doc 10 (2)
    assert r.counts["arrays"]["user_roles"] == {"array_elements": 8, "rejected_elements": 4, "wildcard_elements": 0}
    assert len(r.tables["users"]) == 4


def test_reconciliation_identities_roles():
    r = roles([role(1, oauthUserIds=["*", "000000000001", 2, "999999999999", True, "000000000001"]),
               role(2, oauthClientAppId="nope", oauthUserIds=["000000000001"]),
               role(3, oauthUserIds="*"), role(4, oauthUserIds=None)])
    _check_reconciliation(r, "client_roles", "client_role_users")
    assert r.counts["arrays"]["client_role_users"] == {"array_elements": 7, "rejected_elements": 3,
                                                      "wildcard_elements": 2}
    assert col(r, "client_roles", "id") == ["role-1", "role-3", "role-4"]
    assert col(r, "client_roles", "grants_all_users") == [True, True, False]


def test_reconciliation_identities_apps():
    r = apps([app(1), app(2, clientId="client-1", createdAt=T1), app(3, owner="999999999999"),
              app(4, owner=None), app(5, clientId=None)])
    _check_reconciliation(r, "oauth_client_apps", None)
    assert r.counts["rejected_documents"] == 2 and len(r.tables["oauth_client_apps"]) == 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_outputs_are_sorted_and_independent_of_input_order(seed):
    docs = _dirty_users()
    shuffled = docs[:]
    random.Random(seed).shuffle(shuffled)
    a, b = users(docs), users(shuffled)
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name])
    key = TABLES["users"].key
    keys = a.tables["users"][list(key)]
    assert keys.equals(keys.sort_values(list(key)).reset_index(drop=True))
    assert a.counts == b.counts

    def as_set(r):
        return sorted(map(tuple, r.rejects.astype(str).to_numpy().tolist()))

    assert as_set(a) == as_set(b)
    legacy_a = a.extras["legacy_owners"].sort_values(["app_id", "user_id"]).reset_index(drop=True)
    legacy_b = b.extras["legacy_owners"].sort_values(["app_id", "user_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(legacy_a, legacy_b)


def test_render_never_fails_on_a_date_that_overflows_when_shifted_to_utc():
    import datetime as dt

    from authmigrate.transform import render

    doc = {"a": dt.datetime(1, 1, 1, 0, 0, 55, tzinfo=dt.timezone(dt.timedelta(hours=14))), "password": "pw"}
    text = render(doc)
    assert "0001-01-01" in text and "pw" not in text and "[REDACTED]" in text
