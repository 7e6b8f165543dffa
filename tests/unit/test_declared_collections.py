"""The app's other collections (userAppConsents, invitations, appSettings), transformed by their
declarations alone (``transform.transform_declared``): one test per rule and dirty case, on
small frames, no servers. The rules are listed in docs/data-contract.md."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from bson import ObjectId

from authmigrate import transform as tf
from authmigrate.registry import COLLECTIONS

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T1 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
USERS = {"000000000001", "000000000002"}
APPS = {"000001", "000002"}
ABSENT = object()


def oid(n: int) -> ObjectId:
    return ObjectId(f"65b{n:021x}")


def doc(n: int, base: dict, **fields) -> dict:
    out = {"_id": oid(n), **base, "createdAt": T0, "updatedAt": T0, **fields}
    return {k: v for k, v in out.items() if v is not ABSENT}


def consent(n: int, **fields) -> dict:
    return doc(n, {"consentId": f"consent-{n}", "userId": "000000000001", "oauthClientAppId": "000001",
                   "clientId": "client-1", "consentedScopes": ["openid", "profile"], "firstAuthAt": T0,
                   "lastAuthAt": T1}, **fields)


def invitation(n: int, **fields) -> dict:
    return doc(n, {"inviteId": f"invite-{n}", "email": f"new{n}@example.com", "tokenHash": f"TOKENHASH{n}",
                   "invitedBy": "admin@example.com", "providerRoles": ["beta-tester"], "expiresAt": T1,
                   "acceptedAt": None, "revokedAt": None}, **fields)


def setting(n: int, **fields) -> dict:
    return doc(n, {"key": "global", "registrationEnabled": True, "maintenanceMode": False,
                   "allowedEmailDomains": ["example.com"]}, **fields)


def run(collection: str, docs: list[dict], existing: pd.DataFrame | None = None) -> tf.Result:
    frame = tf.documents_frame(docs, COLLECTIONS[collection].projection)
    return tf.transform(collection, frame, {"users": USERS, "oauthClientApps": APPS}, existing)


def rejects(result: tf.Result) -> list[tuple]:
    return [(r["scope"], r["reason_code"], r["source_id"], r["element"]) for r in result.rejects.to_dict("records")]


def rows(result: tf.Result, table: str) -> list[dict]:
    return [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in result.tables[table].to_dict("records")]


# --------------------------------------------------------------------------- userAppConsents
def test_a_clean_consent_becomes_a_row_and_its_scopes_join_rows():
    r = run("userAppConsents", [consent(1, lastAuthAt="2024-06-01T12:00:00Z")])
    assert rejects(r) == []
    (row,) = rows(r, "user_app_consents")
    assert (row["id"], row["user_id"], row["oauth_client_app_id"], row["client_id"]) == (
        "consent-1", "000000000001", "000001", "client-1")
    assert row["last_auth_at"] == T1 and row["mongo_id"] == str(oid(1))
    assert rows(r, "user_app_consent_scopes") == [{"consent_id": "consent-1", "scope": "openid"},
                                                  {"consent_id": "consent-1", "scope": "profile"}]
    assert r.counts["arrays"]["user_app_consent_scopes"] == {"array_elements": 2, "rejected_elements": 0,
                                                             "wildcard_elements": 0}


def test_a_consent_of_a_user_that_does_not_exist_is_rejected():
    r = run("userAppConsents", [consent(1, userId="999999999999")])
    assert rejects(r) == [("document", "dangling_user", str(oid(1)), None)]
    assert "user 999999999999 does not exist" in r.rejects["reason"][0]
    assert rows(r, "user_app_consents") == [] and rows(r, "user_app_consent_scopes") == []


def test_a_consent_of_an_app_that_does_not_exist_is_rejected():
    r = run("userAppConsents", [consent(1, oauthClientAppId="000009")])
    assert rejects(r) == [("document", "dangling_app", str(oid(1)), None)]


def test_one_consent_per_user_and_app_the_earliest_wins():
    r = run("userAppConsents", [consent(2, createdAt=T1), consent(1)])
    assert rejects(r) == [("document", "duplicate_consent", str(oid(2)), None)]
    assert "already used by document " + str(oid(1)) in r.rejects["reason"][0]
    assert [x["id"] for x in rows(r, "user_app_consents")] == ["consent-1"]


def test_the_same_consent_id_twice_the_newest_update_wins():
    r = run("userAppConsents", [consent(1), consent(2, consentId="consent-1", updatedAt=T1)])
    assert rejects(r) == [("document", "duplicate_key", str(oid(1)), None)]
    assert [x["mongo_id"] for x in rows(r, "user_app_consents")] == [str(oid(2))]


def test_a_consent_without_its_id_is_rejected():
    r = run("userAppConsents", [consent(1, consentId=ABSENT)])
    assert rejects(r) == [("document", "missing_key", str(oid(1)), None)]


def test_ids_stored_as_numbers_are_padded_like_the_app_pads_them():
    r = run("userAppConsents", [consent(1, userId=2, oauthClientAppId=2)])
    (row,) = rows(r, "user_app_consents")
    assert (row["user_id"], row["oauth_client_app_id"]) == ("000000000002", "000002")


def test_consent_scopes_odd_values():
    r = run("userAppConsents", [consent(1, consentedScopes=["openid", "openid", 7, ""]),
                                consent(2, userId="000000000002", consentedScopes="openid")])
    assert sorted(rejects(r)) == [("element", "duplicate_element", str(oid(1)), "openid"),
                                  ("element", "invalid_element", str(oid(1)), ""),
                                  ("element", "invalid_element", str(oid(1)), "7")]
    assert rows(r, "user_app_consent_scopes") == [{"consent_id": "consent-1", "scope": "openid"},
                                                  {"consent_id": "consent-2", "scope": "openid"}]
    assert r.counts["arrays"]["user_app_consent_scopes"]["array_elements"] == 5


def test_consent_scopes_that_are_not_an_array_reject_the_consent():
    r = run("userAppConsents", [consent(1, consentedScopes={"openid": True})])
    assert rejects(r) == [("document", "invalid_array", str(oid(1)), None)]


def test_a_consent_date_that_is_not_a_date_rejects_the_consent():
    r = run("userAppConsents", [consent(1, firstAuthAt="yesterday")])
    assert rejects(r) == [("document", "invalid_date", str(oid(1)), None)]


def test_incremental_a_consent_of_a_pair_a_staying_row_has_is_rejected():
    existing = pd.DataFrame({"id": ["consent-9"], "mongo_id": [str(oid(9))], "user_id": ["000000000001"],
                             "oauth_client_app_id": ["000001"]}, dtype=object)
    r = run("userAppConsents", [consent(1)], existing)
    assert rejects(r) == [("document", "duplicate_consent", str(oid(1)), None)]
    assert "existing row consent-9" in r.rejects["reason"][0]


# --------------------------------------------------------------------------- invitations
def test_a_clean_invitation_becomes_a_row_and_role_rows_for_roles_that_may_not_exist_yet():
    r = run("invitations", [invitation(1, acceptedAt=T1, acceptedUserId="000000000002", canManageApps="true")])
    assert rejects(r) == []
    (row,) = rows(r, "invitations")
    assert (row["id"], row["email"], row["token_hash"], row["invited_by"]) == (
        "invite-1", "new1@example.com", "TOKENHASH1", "admin@example.com")
    assert row["accepted_user_id"] == "000000000002" and row["can_manage_apps"] is True
    assert row["revoked_at"] is None and row["accepted_at"] == T1
    assert rows(r, "invitation_roles") == [{"invitation_id": "invite-1", "role_name": "beta-tester"}]


def test_an_invitation_without_email_is_rejected_and_its_token_hash_never_shows():
    r = run("invitations", [invitation(1, email=ABSENT)])
    assert rejects(r) == [("document", "missing_required", str(oid(1)), None)]
    assert "TOKENHASH1" not in r.rejects["document"][0] and "[REDACTED]" in r.rejects["document"][0]
    assert "TOKENHASH1" not in r.rejects["reason"][0]


def test_an_invitation_accepted_by_a_user_that_does_not_exist_keeps_the_invitation_without_the_user():
    r = run("invitations", [invitation(1, acceptedAt=T1, acceptedUserId="999999999999")])
    assert rejects(r) == [("field", "dangling_accepted_user", str(oid(1)), "999999999999")]
    assert "set to NULL" in r.rejects["reason"][0]
    (row,) = rows(r, "invitations")
    assert row["accepted_user_id"] is None and row["accepted_at"] == T1


def test_an_invitation_with_a_date_that_is_not_a_date_is_rejected():
    r = run("invitations", [invitation(1, expiresAt="in a week")])
    assert rejects(r) == [("document", "invalid_date", str(oid(1)), None)]


def test_an_invitation_role_that_is_blank_is_dropped_the_invitation_kept():
    r = run("invitations", [invitation(1, providerRoles=["standardUser", " "])])
    assert rejects(r) == [("element", "invalid_element", str(oid(1)), " ")]
    assert len(rows(r, "invitation_roles")) == 1


def test_an_invitation_with_a_wrong_type_is_rejected():
    r = run("invitations", [invitation(1, canManageApps="maybe")])
    assert rejects(r) == [("document", "invalid_type", str(oid(1)), None)]


# --------------------------------------------------------------------------- appSettings
def test_settings_a_document_does_not_have_stay_null_for_the_app_default():
    r = run("appSettings", [setting(1)])
    (row,) = rows(r, "app_settings")
    assert (row["id"], row["registration_enabled"], row["maintenance_mode"]) == ("global", True, False)
    assert row["password_reset_enabled"] is None and row["social_login_enabled"] is None
    assert rows(r, "app_setting_email_domains") == [{"app_setting_id": "global", "domain": "example.com"}]


def test_two_documents_for_one_settings_key_the_newest_update_wins():
    r = run("appSettings", [setting(1, registrationEnabled=False), setting(2, updatedAt=T1)])
    assert rejects(r) == [("document", "duplicate_key", str(oid(1)), None)]
    assert rows(r, "app_settings")[0]["registration_enabled"] is True


@pytest.mark.parametrize("value,code", [("maybe", "invalid_type"), (2, "invalid_type"), ({"on": True}, "invalid_type")])
def test_a_setting_of_the_wrong_type_rejects_the_document(value, code):
    r = run("appSettings", [setting(1, maintenanceMode=value)])
    assert rejects(r) == [("document", code, str(oid(1)), None)]


def test_settings_without_a_key_are_rejected():
    r = run("appSettings", [setting(1, key=ABSENT)])
    assert rejects(r) == [("document", "missing_key", str(oid(1)), None)]


def test_allowed_domains_as_a_lone_string_are_one_domain():
    r = run("appSettings", [setting(1, allowedEmailDomains="example.com")])
    assert rows(r, "app_setting_email_domains") == [{"app_setting_id": "global", "domain": "example.com"}]


# --------------------------------------------------------------------------- shared
@pytest.mark.parametrize("collection", ["userAppConsents", "invitations", "appSettings"])
def test_every_table_has_its_declared_columns_and_an_empty_batch_is_empty(collection):
    spec = COLLECTIONS[collection]
    r = run(collection, [])
    assert list(r.tables) == [t.name for t in spec.tables]
    for table in spec.tables:
        assert list(r.tables[table.name].columns) == list(table.columns)
    assert r.counts["source_documents"] == 0 and r.rejects.empty


def test_a_collection_without_a_declaration_is_refused():
    with pytest.raises(KeyError):
        tf.transform("auditLog", tf.documents_frame([], ()), {})
