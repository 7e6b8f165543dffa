"""The pure session transform: Redis session hashes → sessions rows and rejects."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from authmigrate.collections.sessions import session_id, transform_sessions
from authmigrate.transform import KeySet

USERS, APPS = {"000000000001"}, {"100001"}


def frame(rows):
    return pd.DataFrame(rows, columns=["key", "status", "fields", "unknown_fields", "pttl"])


def row(key, fields, status="ok", pttl=60_000):
    return (key, status, json.dumps(fields), 0, pttl)


@pytest.mark.parametrize("keys", [set, lambda s: KeySet(pa.array(sorted(s), pa.large_string()))],
                         ids=["python-set", "arrow-keyset"])
def test_sessions_rows_and_rejects(keys):
    result = transform_sessions(frame([
        row("psid:000000000001:s1", {"deviceType": "Firefox", "ipAddr": " 10.0.0.1 ", "createdAt": "1700000000"}),
        row("osid:000000000001:s2", {"oauthClientAppId": "100001", "createdAt": "1700000000"}, pttl=-1),
        row("orsid:000000000001:s3", {"oauthClientAppId": "100001", "scope": "openid"}),
        row("psid:000000000001:badip", {"deviceType": "x", "ipAddr": "999.1.1.1"}),
        row("psid:000000000001:nul", {"deviceType": "a\x00b"}),
        row("psid:onlyone", {"deviceType": "x"}),
        row("psid:000000000002:s4", {"deviceType": "x"}),
        row("osid:000000000001:s5", {"oauthClientAppId": "nope"}),
        row("osid:000000000001:s6", {"createdAt": "1"}),
        row("psid:000000000001:s7", {"createdAt": "yesterday"}),
        row("psid:000000000001:gone", {}, status="expired", pttl=-2),
        row("psid:000000000001:str", {}, status="wrong_type"),
    ]), keys(USERS), keys(APPS), read_at=1_700_000_000.0)
    sessions = result.tables["sessions"]
    assert sorted(sessions["kind"]) == ["login", "login", "oauth_access", "oauth_refresh"]
    assert list(sessions["id"]) == sorted(sessions["id"])
    login = sessions[sessions["id"] == session_id("psid:000000000001:s1")].iloc[0]
    assert login["ip_address"] == "10.0.0.1" and login["user_agent"] == "Firefox"
    assert login["created_at"] == pd.Timestamp("2023-11-14 22:13:20", tz="UTC")
    assert login["expires_at"] == pd.Timestamp(1_700_000_060, unit="s", tz="UTC")
    assert pd.isna(sessions[sessions["kind"] == "oauth_access"].iloc[0]["expires_at"])  # no TTL
    reasons = sorted(zip(result.rejects["reason_code"], result.rejects["scope"]))
    assert reasons == sorted([("invalid_ip", "field"), ("malformed_hash", "document"), ("malformed_key", "document"),
                              ("unknown_user", "document"), ("unknown_app", "document"),
                              ("malformed_hash", "document"), ("malformed_hash", "document"),
                              ("wrong_type", "document")])
    c = result.counts
    assert c["source_documents"] == 12 and c["expired_during_read"] == 1
    assert c["source_documents"] == len(sessions) + c["rejected_documents"] + c["expired_during_read"]


def test_raw_session_ids_never_leave_redis():
    result = transform_sessions(frame([
        row("psid:000000000001:SECRET-COOKIE-TOKEN", {"deviceType": "x"}),
        row("psid:000000000009:OTHER-SECRET-TOKEN", {"deviceType": "x"}),
    ]), USERS, APPS, read_at=0.0)
    text = result.tables["sessions"].to_json() + result.rejects.to_json()
    assert "SECRET-COOKIE-TOKEN" not in text and "OTHER-SECRET-TOKEN" not in text
    assert result.tables["sessions"]["id"].iloc[0].startswith("psid:000000000001:")
    assert session_id("psid:u:a") != session_id("psid:u:b")
    assert "\x00" not in session_id("psid:u\x00x:y")


def test_sessions_go_through_the_one_transform_signature_with_the_declared_references():
    """The Redis source is declared like a collection: transform.transform("sessions", ...) calls
    its module with the keys of the collections its declaration references, and the export's
    frame carries the time the keys were read (for expires_at)."""
    from authmigrate.registry import SESSIONS_SOURCE, TABLES
    from authmigrate.transform import transform

    assert SESSIONS_SOURCE.depends_on == ("users", "oauthClientApps")
    assert TABLES["sessions"] is SESSIONS_SOURCE.main_table and "mongo_id" not in TABLES["sessions"].columns
    exported = frame([row("osid:000000000001:a", {"oauthClientAppId": "100001", "createdAt": "1700000000"}),
                      row("osid:000000000009:b", {"oauthClientAppId": "100001"}),
                      row("osid:000000000001:c", {"oauthClientAppId": "100009"})])
    exported["read_at"] = 1_700_000_000.0
    result = transform("sessions", exported, {"users": USERS, "oauthClientApps": APPS})
    assert list(result.tables["sessions"]["user_id"]) == ["000000000001"]
    assert result.tables["sessions"]["expires_at"].iat[0] == pd.Timestamp(1_700_000_060, unit="s", tz="UTC")
    assert sorted(zip(result.rejects["reason_code"], result.rejects["reason"])) == [
        ("unknown_app", "app 100009 is not in the target oauth_client_apps table"),
        ("unknown_user", "user 000000000009 is not in the target users table")]
