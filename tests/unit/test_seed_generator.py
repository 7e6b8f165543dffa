"""The source-data generator (tools/seed_mongo.py): determinism, volumes, the shape and the
referential consistency of clean documents, and the share and kinds of dirty documents.

No server is needed; the whole module runs in a few seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import bson
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools import seed_mongo as sm  # noqa: E402

USER_FIELDS = {
    "userId", "username", "email", "password", "firstName", "lastName", "identityProvider",
    "identityProviderUserId", "passkeyId", "passkeyPublicKey", "mfaSecret", "mfaEnabled",
    "emailVerified", "signCount", "providerRoles", "canManageApps", "banned", "bannedAt",
    "bannedReason", "bannedBy", "createdAt", "updatedAt", "oauthClientAppIds", "__v",
}
APP_FIELDS = {
    "oauthClientAppId", "clientId", "clientSecret", "oauthAppName", "redirectUri",
    "accessTokenValidity", "isPublicClient", "owner", "disabled", "disabledAt", "disabledReason",
    "createdAt", "updatedAt", "__v",
}
ROLE_FIELDS = {
    "oauthRoleId", "oauthClientAppId", "oauthClientId", "oauthRoleName", "owner", "oauthUserIds",
    "createdAt", "updatedAt", "__v",
}
KNOWN_FIELDS = {"users": USER_FIELDS, "oauthClientApps": APP_FIELDS, "oauthRoles": ROLE_FIELDS}

USER_ID = re.compile(r"^\d{12}$")
BCRYPT = re.compile(r"^\$2b\$10\$[./A-Za-z0-9]{53}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
OLD_APP_ID = re.compile(r"^\d{6}$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BASE32 = re.compile(r"^[A-Z2-7]+=*$")

N = 20_000


@pytest.fixture(scope="module")
def labeled():
    return sm.generate_labeled(N, seed=42, dirty_ratio=0.03)


@pytest.fixture(scope="module")
def clean(labeled):
    """Only the clean documents of each collection (index -> doc)."""
    data, labels = labeled
    return {c: {i: d for i, d in enumerate(docs) if i not in labels[c]} for c, docs in data.items()}


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, default=str, sort_keys=False).encode()).hexdigest()


def _norm_app_id(v) -> str:
    return f"{v:06d}" if isinstance(v, int) else v


def _walk(value):
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_documents():
    assert sm.generate(3000, seed=7) == sm.generate(3000, seed=7)
    assert sm.generate_labeled(3000, seed=7)[1] == sm.generate_labeled(3000, seed=7)[1]


def test_other_seed_or_ratio_other_documents():
    base = sm.generate(2000, seed=7)
    assert sm.generate(2000, seed=8) != base
    assert sm.generate(2000, seed=7, dirty_ratio=0.1) != base


def test_independent_of_hash_randomisation():
    """Set iteration order changes with PYTHONHASHSEED: the output must not."""
    code = (
        "import sys, json, hashlib; sys.path.insert(0, sys.argv[1]);"
        "from tools.seed_mongo import generate;"
        "print(hashlib.sha256(json.dumps(generate(1500, seed=3), default=str).encode()).hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, capture_output=True,
                             text=True, check=True)
        digests.add(out.stdout.strip())
    assert digests == {_digest(sm.generate(1500, seed=3))}


# --------------------------------------------------------------------------- volumes / edges
@pytest.mark.parametrize("n", [0, 1, 2, 19, 20, 39, 40, 199, 1000, 4321])
def test_volumes(n):
    data = sm.generate(n)
    assert list(data) == ["users", "oauthClientApps", "oauthRoles", "userAppConsents", "invitations", "appSettings"]
    assert len(data["users"]) == n
    assert len(data["oauthClientApps"]) == n // 20
    assert len(data["oauthRoles"]) == (n // 10 if n >= 20 else 0)  # no app → no role
    assert len(data["userAppConsents"]) == (n // 10 if n >= 20 else 0)  # no app → no consent
    assert len(data["invitations"]) == n // 100
    assert len(data["appSettings"]) == (1 if n else 0)


def test_zero_users_is_empty():
    assert sm.generate(0) == {c: [] for c in sm.COLLECTIONS}
    assert sm.generate_labeled(0)[1] == {c: {} for c in sm.COLLECTIONS}


@pytest.mark.parametrize("kwargs", [{"n_users": -1}, {"n_users": 10, "dirty_ratio": -0.1},
                                    {"n_users": 10, "dirty_ratio": 1.5}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        sm.generate(**kwargs)


def test_full_dirty_ratio_keeps_one_clean_document():
    data, labels = sm.generate_labeled(400, dirty_ratio=1.0)
    assert len(labels["users"]) == 399
    assert len(labels["oauthClientApps"]) == 19
    assert len(labels["oauthRoles"]) == 39
    assert len(data["users"]) == 400


def test_no_dirt_when_ratio_is_zero():
    data, labels = sm.generate_labeled(2000, dirty_ratio=0.0)
    assert labels == {c: {} for c in sm.COLLECTIONS}
    ids = [u["userId"] for u in data["users"]]
    assert len(set(ids)) == len(ids) and all(USER_ID.match(i) for i in ids)


# --------------------------------------------------------------------------- storable
def test_documents_are_bson_without_id_or_decimal(labeled):
    data, _ = labeled
    for name, docs in data.items():
        for doc in docs:
            assert "_id" not in doc
            for v in _walk(doc):
                assert not isinstance(v, (bson.Decimal128, float, bytes)), (name, doc)
                if isinstance(v, datetime):
                    assert v.tzinfo is None and v.microsecond % 1000 == 0, (name, doc)
                if isinstance(v, int) and not isinstance(v, bool):
                    assert -(2**63) <= v < 2**63
            raw = bson.encode(doc)
            assert bson.decode(raw) == doc  # round-trips unchanged (ms dates, naive UTC)


# --------------------------------------------------------------------------- clean shape
def test_clean_users_shape(clean):
    users = list(clean["users"].values())
    assert len(users) > 0.96 * N
    ids, names, emails = Counter(), Counter(), Counter()
    providers = Counter()
    for u in users:
        assert set(u) <= USER_FIELDS, set(u) - USER_FIELDS
        assert USER_ID.match(u["userId"])
        ids[u["userId"]] += 1
        names[u["username"]] += 1
        emails[u["email"].casefold()] += 1
        assert "@" in u["email"] and u["email"] == u["email"].lower()
        providers[u["identityProvider"]] += 1
        if u["identityProvider"] == "local":
            assert BCRYPT.match(u["password"])
            assert u.get("identityProviderUserId") is None
        else:
            assert isinstance(u["identityProviderUserId"], str) and u["identityProviderUserId"].isdigit()
        roles = u["providerRoles"]
        assert isinstance(roles, list) and roles[0] == "standardUser" and len(set(roles)) == len(roles)
        assert set(roles) <= {"standardUser", "oauthUser", "admin"}
        if "mfaSecret" in u:
            assert BASE32.match(u["mfaSecret"]) and len(u["mfaSecret"]) == 32
        else:
            assert u["mfaEnabled"] is False
        for f in ("mfaEnabled", "emailVerified", "canManageApps", "banned"):
            assert isinstance(u[f], bool)
        assert isinstance(u["signCount"], int) and u["signCount"] >= 0
        assert isinstance(u["createdAt"], datetime) and u["createdAt"] <= u["updatedAt"]
        if u["banned"]:
            assert u["createdAt"] <= u["bannedAt"] <= u["updatedAt"] and u["bannedReason"]
        for app_id in u.get("oauthClientAppIds", []):
            assert isinstance(app_id, int) or OLD_APP_ID.match(app_id)
    # a clean userId appears twice only because of a duplicate_user_id copy (dirty), never here
    assert max(ids.values()) == 1 and max(names.values()) == 1 and max(emails.values()) == 1
    share = {k: v / len(users) for k, v in providers.items()}
    assert 0.8 < share["local"] < 0.9 and 0.07 < share["github"] < 0.13 and 0.02 < share["google"] < 0.08
    assert 0.15 < sum("mfaSecret" in u for u in users) / len(users) < 0.25
    assert 0.55 < sum("oauthUser" in u["providerRoles"] for u in users) / len(users) < 0.65
    assert 0.005 < sum(u["banned"] for u in users) / len(users) < 0.02
    assert any("admin" in u["providerRoles"] for u in users)
    assert any(u.get("passkeyPublicKey") for u in users)
    assert any(isinstance(a, int) for u in users for a in u.get("oauthClientAppIds", []))
    assert 0.5 < sum(u.get("__v") == 0 for u in users) / len(users) < 0.95


def test_clean_apps_shape(clean):
    apps = list(clean["oauthClientApps"].values())
    old = [a for a in apps if OLD_APP_ID.match(a["oauthClientAppId"])]
    assert 0.2 < len(old) / len(apps) < 0.4
    for a in apps:
        assert set(a) <= APP_FIELDS
        assert OLD_APP_ID.match(a["oauthClientAppId"]) or UUID4.match(a["oauthClientAppId"])
        assert HEX64.match(a["clientId"])
        if a["isPublicClient"]:
            assert "clientSecret" not in a
        else:
            assert len(a["clientSecret"]) == 64
        assert a["redirectUri"].startswith("https://")
        assert isinstance(a["accessTokenValidity"], int) and a["accessTokenValidity"] > 0
        assert a["createdAt"] <= a["updatedAt"]
        if a["disabled"]:
            assert a["createdAt"] <= a["disabledAt"] <= a["updatedAt"]
        if UUID4.match(a["oauthClientAppId"]):
            assert "owner" in a  # only apps created before owners existed may lack one
    assert any("owner" not in a for a in old) and any("owner" in a for a in old)
    assert len({a["oauthClientAppId"] for a in apps}) == len(apps)
    assert len({a["clientId"] for a in apps}) == len(apps)
    assert any(a["isPublicClient"] for a in apps) and any(a["disabled"] for a in apps)


def test_clean_references_are_consistent(labeled, clean):
    users = {u["userId"]: u for u in clean["users"].values()}
    apps = {a["oauthClientAppId"]: a for a in clean["oauthClientApps"].values()}
    legacy_owners: dict[str, list[str]] = {}
    for u in users.values():
        for app_id in u.get("oauthClientAppIds", []):
            legacy_owners.setdefault(_norm_app_id(app_id), []).append(u["userId"])
    for u in users.values():
        if u["banned"]:
            assert u["bannedBy"] in users and u["bannedBy"] != u["userId"]
    for app_id, a in apps.items():
        owners = legacy_owners.get(app_id, [])
        assert len(owners) <= 1
        if "owner" in a:
            assert a["owner"] in users
            assert users[a["owner"]]["canManageApps"] is True
            if owners:
                assert owners == [a["owner"]]
        else:  # old app: exactly one clean user lists it in the legacy array
            assert owners and owners[0] in users
    # every legacy claim is an app that exists
    all_app_ids = {a["oauthClientAppId"] for a in labeled[0]["oauthClientApps"]}
    assert set(legacy_owners) <= all_app_ids

    names = Counter()
    members_total = stars = 0
    for r in clean["oauthRoles"].values():
        assert set(r) <= ROLE_FIELDS
        app = apps[r["oauthClientAppId"]]  # the app exists and is clean
        assert r["oauthClientId"] == app["clientId"]
        assert r["oauthRoleId"] == f"uri:oneidp:oauth::{r['oauthClientAppId']}:role/{r['oauthRoleName']}"
        names[(r["oauthClientAppId"], r["oauthRoleName"])] += 1
        assert r["owner"] in users
        assert r["createdAt"] <= r["updatedAt"] and r["createdAt"] >= app["createdAt"]
        m = r["oauthUserIds"]
        if m == ["*"]:
            stars += 1
            continue
        assert "*" not in m and len(set(m)) == len(m)
        assert all(isinstance(x, str) and x in users for x in m)
        members_total += len(m)
    roles = clean["oauthRoles"]
    assert max(names.values()) == 1  # role names unique per app
    assert 4 <= members_total / (len(roles) - stars) <= 6.5
    assert 0.02 < stars / len(roles) < 0.09
    # roles mostly owned by their app's owner
    same = sum(r["owner"] == apps[r["oauthClientAppId"]].get("owner", r["owner"]) for r in roles.values())
    assert same / len(roles) > 0.9


# --------------------------------------------------------------------------- dirt
@pytest.mark.parametrize("collection,size", [("users", N), ("oauthClientApps", N // 20), ("oauthRoles", N // 10),
                                             ("userAppConsents", N // 10), ("invitations", N // 100)])
def test_dirty_share_and_kinds(labeled, collection, size):
    _, labels = labeled
    dirty = labels[collection]
    assert len(dirty) == round(size * 0.03)
    kinds = Counter(dirty.values())
    assert set(kinds) == set(sm.DIRTY_KINDS[collection])  # every kind appears
    assert max(kinds.values()) - min(kinds.values()) <= 1  # spread evenly


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.25])
def test_dirty_share_follows_ratio(ratio):
    _, labels = sm.generate_labeled(4000, dirty_ratio=ratio)
    assert len(labels["users"]) == round(4000 * ratio)
    assert len(labels["oauthClientApps"]) == round(200 * ratio)
    assert len(labels["oauthRoles"]) == round(400 * ratio)


def test_each_dirty_document_shows_its_kind(labeled, clean):
    data, labels = labeled
    users, apps, roles = data["users"], data["oauthClientApps"], data["oauthRoles"]
    clean_users = {u["userId"]: u for u in clean["users"].values()}
    clean_by_name = {u["username"]: u for u in clean["users"].values()}
    clean_by_email = {u["email"]: u for u in clean["users"].values()}
    every_user_id = {str(u.get("userId")) for u in users} | {f"{u['userId']:012d}" for u in users
                                                            if isinstance(u.get("userId"), int)}
    clean_client_ids = {a["clientId"]: a for a in clean["oauthClientApps"].values()}
    every_app_id = {a["oauthClientAppId"] for a in apps}

    def common(doc, kind, known):
        if kind == "created_at_iso_string":
            assert isinstance(doc["createdAt"], str)
            assert datetime.fromisoformat(doc["createdAt"]).microsecond % 1000 == 0
        elif kind == "created_at_epoch_ms":
            assert isinstance(doc["createdAt"], int) and doc["createdAt"] > 10**12
        elif kind == "created_at_garbage":
            assert doc["createdAt"] == "not-a-date"
        elif kind == "unknown_field":
            assert set(doc) - known
        else:
            raise AssertionError(f"unchecked kind {kind}")

    for i, kind in labels["users"].items():
        u = users[i]
        if kind == "duplicate_user_id":
            orig = clean_users[u["userId"]]
            assert u["updatedAt"] > orig["updatedAt"] and u["username"] == orig["username"]
        elif kind == "duplicate_username":
            orig = clean_by_name[u["username"]]
            assert u["userId"] != orig["userId"] and u["createdAt"] > orig["createdAt"]
        elif kind == "email_case_duplicate":
            orig = clean_by_email[u["email"].lower()]
            assert u["email"] != orig["email"] and u["userId"] != orig["userId"]
            assert u["createdAt"] > orig["createdAt"]
        elif kind == "missing_user_id":
            assert "userId" not in u
        elif kind == "user_id_int":
            assert isinstance(u["userId"], int) and not isinstance(u["userId"], bool)
        elif kind == "provider_roles_string":
            assert isinstance(u["providerRoles"], str)
        elif kind == "provider_roles_null":
            assert u["providerRoles"] is None
        elif kind == "provider_roles_nested":
            assert any(isinstance(r, list) for r in u["providerRoles"])
        elif kind == "provider_roles_duplicates":
            assert len(set(u["providerRoles"])) < len(u["providerRoles"])
        elif kind == "provider_roles_number":
            assert any(isinstance(r, int) for r in u["providerRoles"])
        elif kind == "provider_roles_empty_string":
            assert "" in u["providerRoles"]
        elif kind == "email_empty":
            assert u["email"] == ""
        else:
            common(u, kind, USER_FIELDS)

    for i, kind in labels["oauthClientApps"].items():
        a = apps[i]
        if kind == "dangling_owner":
            assert a["owner"] not in every_user_id
            assert not any(_norm_app_id(x) == a["oauthClientAppId"]
                           for u in users for x in u.get("oauthClientAppIds", []))
        elif kind == "missing_client_id":
            assert "clientId" not in a
        elif kind == "duplicate_client_id":
            assert clean_client_ids[a["clientId"]]["createdAt"] < a["createdAt"]
        else:
            common(a, kind, APP_FIELDS)

    for i, kind in labels["oauthRoles"].items():
        r = roles[i]
        m = r["oauthUserIds"]
        if kind == "dangling_app":
            assert r["oauthClientAppId"] not in every_app_id
            assert r["oauthRoleId"].startswith(f"uri:oneidp:oauth::{r['oauthClientAppId']}:role/")
        elif kind == "dangling_members":
            assert any(isinstance(x, str) and x not in every_user_id for x in m)
        elif kind == "wildcard_mixed":
            assert "*" in m and len(m) > 1
        elif kind == "member_ids_int":
            assert any(isinstance(x, int) for x in m)
            assert all(f"{x:012d}" in clean_users for x in m if isinstance(x, int))
        else:
            common(r, kind, ROLE_FIELDS)


def test_dirty_documents_are_never_referenced(labeled):
    """Owners, bannedBy and role members only point at clean users; roles at clean apps."""
    data, labels = labeled
    dirty_user_ids = {data["users"][i].get("userId") for i, k in labels["users"].items()
                      if k != "duplicate_user_id"}  # that one carries a clean user's id
    dirty_user_ids |= {f"{x:012d}" for x in dirty_user_ids if isinstance(x, int)}
    dirty_app_ids = {data["oauthClientApps"][i]["oauthClientAppId"] for i in labels["oauthClientApps"]}
    for i, a in enumerate(data["oauthClientApps"]):
        assert a.get("owner") not in dirty_user_ids or a.get("owner") is None
    for i, r in enumerate(data["oauthRoles"]):
        if i in labels["oauthRoles"]:
            continue
        assert r["oauthClientAppId"] not in dirty_app_ids
        assert r["owner"] not in dirty_user_ids
        assert not set(r["oauthUserIds"]) & dirty_user_ids
    for u in data["users"]:
        assert u.get("bannedBy") not in dirty_user_ids or u.get("bannedBy") is None


# --------------------------------------------------------------------------- seed() / CLI
def test_seed_rejects_unknown_collection_before_connecting():
    with pytest.raises(ValueError, match="unknown collection"):
        sm.seed("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100", "idp", 10, collections={"roles": "x"})
    with pytest.raises(ValueError, match="invalid MongoDB collection name"):
        sm.seed("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100", "idp", 10, collections={"users": "a$b"})


def test_cli_rejects_bad_collection_option(capsys):
    with pytest.raises(SystemExit):
        sm.main(["--db", "idp", "--users", "10", "--collection", "oauthRoles"])
    assert "LOGICAL=NAME" in capsys.readouterr().err


def test_the_other_collections_reference_clean_documents_and_show_their_dirt(labeled, clean):
    data, labels = labeled
    user_ids = {u["userId"] for u in clean["users"].values()}
    apps = {a["oauthClientAppId"]: a for a in clean["oauthClientApps"].values()}
    every_user_id = {str(u.get("userId")) for u in data["users"]}
    every_app_id = {a["oauthClientAppId"] for a in data["oauthClientApps"]}
    pairs = set()
    for c in clean["userAppConsents"].values():
        assert c["userId"] in user_ids and c["clientId"] == apps[c["oauthClientAppId"]]["clientId"]
        assert (c["userId"], c["oauthClientAppId"]) not in pairs  # one consent per (user, app)
        pairs.add((c["userId"], c["oauthClientAppId"]))
        assert c["consentedScopes"][0] == "openid" and len(set(c["consentedScopes"])) == len(c["consentedScopes"])
        assert c["firstAuthAt"] <= c["lastAuthAt"]
    for i in clean["invitations"].values():
        assert "@" in i["email"] and re.fullmatch(r"[0-9a-f]{64}", i["tokenHash"])
        assert i.get("acceptedUserId") is None or i["acceptedUserId"] in user_ids
    assert [s["key"] for s in data["appSettings"]] == ["global"]
    for k, kind in labels["userAppConsents"].items():
        c = data["userAppConsents"][k]
        if kind == "dangling_user":
            assert c["userId"] not in every_user_id
        elif kind == "dangling_app":
            assert c["oauthClientAppId"] not in every_app_id
        elif kind == "duplicate_consent":
            assert (c["userId"], c["oauthClientAppId"]) in pairs
        elif kind == "missing_consent_id":
            assert "consentId" not in c
        elif kind == "scopes_string":
            assert isinstance(c["consentedScopes"], str)
        elif kind == "scopes_duplicates":
            assert len(set(c["consentedScopes"])) < len(c["consentedScopes"])
    for k, kind in labels["invitations"].items():
        i = data["invitations"][k]
        if kind == "missing_email":
            assert "email" not in i
        elif kind == "dangling_accepted_user":
            assert i["acceptedUserId"] not in every_user_id
        elif kind == "expires_at_garbage":
            assert isinstance(i["expiresAt"], str)
        elif kind == "roles_empty_string":
            assert "" in i["providerRoles"]
