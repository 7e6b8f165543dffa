"""Deterministic, realistic source documents for the identity provider's MongoDB, and a seeder.

``generate(n)`` builds the collections the way the app writes them (``users``,
``oauthClientApps``, ``oauthRoles``, ``userAppConsents``, ``invitations``, ``appSettings``;
volumes N, N // 20, N // 10, N // 10, N // 100 and 1) from ``random.Random(seed)``
alone: the same arguments always give the same documents, on any machine and whatever
``PYTHONHASHSEED`` is. A share ``dirty_ratio`` of each collection's documents is made dirty in
one of the ways listed in :data:`DIRTY_KINDS` (duplicates, ids stored as numbers, odd arrays,
dates as strings or numbers, dangling references, ...). Everything else is valid and
referentially consistent: owners, ``bannedBy`` users, role apps and role members exist and are
themselves clean documents, old apps without an ``owner`` are listed in exactly one clean
user's legacy ``oauthClientAppIds``.

``generate_labeled(n)`` returns the same documents plus, per collection, the index and kind
of each dirty document (for tests and for checking a migration's reject counts).

Dates are naive UTC ``datetime`` objects rounded to the millisecond (what pymongo gives back
with its default codec options, so a round trip compares equal). No ``_id`` is set (the
server assigns it) and no ``Decimal128`` is used.

CLI::

    python -m tools.seed_mongo --uri mongodb://127.0.0.1:27017 --db idp --users 5000 \\
        [--seed 42] [--dirty-ratio 0.03] [--no-drop] [--collection oauthRoles=oauthroles]

prints a one-line JSON summary. ``--format bson|bson.gz|archive|jsonl|jsonarray --out DIR`` writes
the same documents as mongodump / mongoexport files instead (tools/write_dump.py).
"""
from __future__ import annotations

import argparse
import base64
import gc
import json
import sys
import time
import uuid
from bisect import bisect_left
from datetime import datetime, timedelta
from random import Random
from typing import Any

COLLECTIONS = ("users", "oauthClientApps", "oauthRoles", "userAppConsents", "invitations", "appSettings")
KEY_FIELDS = {"users": "userId", "oauthClientApps": "oauthClientAppId", "oauthRoles": "oauthRoleId",
              "userAppConsents": "consentId", "invitations": "inviteId", "appSettings": "key"}

#: Every kind of dirty document, per collection. Dirty documents are spread evenly over the
#: kinds (shuffled round-robin), so each kind is about ``dirty_ratio / len(kinds)`` of its
#: collection and every kind appears once a collection has at least ``len(kinds)`` dirty docs.
DIRTY_KINDS: dict[str, tuple[str, ...]] = {
    "users": (
        "duplicate_user_id",  # a copy of a clean user (same userId) with a later updatedAt
        "duplicate_username",  # another userId, the username of an older clean user
        "email_case_duplicate",  # the email of an older clean user in another case
        "missing_user_id",
        "user_id_int",  # userId stored as a number (leading zeros lost)
        "provider_roles_string",  # "standardUser" instead of ["standardUser"]
        "provider_roles_null",
        "provider_roles_nested",  # an array inside the array
        "provider_roles_duplicates",  # the same role twice
        "provider_roles_number",  # a number among the roles
        "provider_roles_empty_string",  # "" among the roles
        "email_empty",  # email: ""
        "created_at_iso_string",  # "2019-03-04T10:11:12.345Z"
        "created_at_epoch_ms",  # 1551694272345
        "created_at_garbage",  # "not-a-date"
        "unknown_field",  # a field the schema does not know
    ),
    "oauthClientApps": (
        "dangling_owner",  # owner is a userId no user has
        "missing_client_id",
        "duplicate_client_id",  # the clientId of an older clean app
        "created_at_iso_string",
        "created_at_epoch_ms",
        "created_at_garbage",
        "unknown_field",
    ),
    "oauthRoles": (
        "dangling_app",  # oauthClientAppId of an app that does not exist (deleted app)
        "dangling_members",  # 1-2 member ids no user has, among real ones
        "wildcard_mixed",  # "*" together with explicit member ids
        "member_ids_int",  # member ids stored as numbers
        "created_at_iso_string",
        "created_at_epoch_ms",
        "created_at_garbage",
        "unknown_field",
    ),
    "userAppConsents": (
        "dangling_user",  # the user was deleted, the consent stayed
        "dangling_app",  # the app was deleted, the consent stayed
        "duplicate_consent",  # a second consent of a clean consent's (user, app), created later
        "missing_consent_id",
        "scopes_string",  # "openid profile" instead of an array (one element)
        "scopes_duplicates",  # a scope twice
        "created_at_iso_string",
        "created_at_garbage",
        "unknown_field",
    ),
    "invitations": (
        "missing_email",
        "dangling_accepted_user",  # accepted by a user who no longer exists
        "expires_at_garbage",
        "roles_empty_string",
        "unknown_field",
    ),
    "appSettings": (),  # one document: always clean
}

# ----------------------------------------------------------------------------- time line
START = datetime(2017, 1, 1)  # naive UTC
SPAN_MS = int((datetime(2025, 6, 30) - START).total_seconds() * 1000)
CUTOVER_MS = int((datetime(2020, 7, 1) - START).total_seconds() * 1000)  # apps get `owner`
START_EPOCH_MS = int((START - datetime(1970, 1, 1)).total_seconds() * 1000)
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# ----------------------------------------------------------------------------- vocabularies
# (display name, ascii slug used for usernames)
FIRST_NAMES = (
    ("James", "james"), ("Mary", "mary"), ("John", "john"), ("Patricia", "patricia"),
    ("Robert", "robert"), ("Jennifer", "jennifer"), ("Michael", "michael"), ("Linda", "linda"),
    ("William", "william"), ("Elizabeth", "elizabeth"), ("David", "david"), ("Barbara", "barbara"),
    ("Richard", "richard"), ("Susan", "susan"), ("Joseph", "joseph"), ("Jessica", "jessica"),
    ("Thomas", "thomas"), ("Sarah", "sarah"), ("Charles", "charles"), ("Karen", "karen"),
    ("Wei", "wei"), ("Mei", "mei"), ("Hiroshi", "hiroshi"), ("Yuki", "yuki"), ("Aarav", "aarav"),
    ("Priya", "priya"), ("Mohammed", "mohammed"), ("Fatima", "fatima"), ("Olga", "olga"),
    ("Ivan", "ivan"), ("José", "jose"), ("María", "maria"), ("Zoë", "zoe"), ("Søren", "soren"),
    ("Łukasz", "lukasz"), ("Chloé", "chloe"), ("Björn", "bjorn"), ("Ana", "ana"), ("Luca", "luca"),
    ("Giulia", "giulia"), ("Noah", "noah"), ("Emma", "emma"), ("Liam", "liam"), ("Olivia", "olivia"),
    ("Kwame", "kwame"), ("Amara", "amara"), ("Sven", "sven"), ("Ingrid", "ingrid"), ("Mateo", "mateo"),
    ("Sofía", "sofia"),
)
LAST_NAMES = (
    ("Smith", "smith"), ("Johnson", "johnson"), ("Williams", "williams"), ("Brown", "brown"),
    ("Jones", "jones"), ("Garcia", "garcia"), ("Miller", "miller"), ("Davis", "davis"),
    ("Rodriguez", "rodriguez"), ("Martinez", "martinez"), ("Hernandez", "hernandez"),
    ("Lopez", "lopez"), ("Wilson", "wilson"), ("Anderson", "anderson"), ("Taylor", "taylor"),
    ("Thomas", "thomas"), ("Moore", "moore"), ("Martin", "martin"), ("Lee", "lee"),
    ("Wang", "wang"), ("Li", "li"), ("Zhang", "zhang"), ("Tanaka", "tanaka"), ("Sato", "sato"),
    ("Patel", "patel"), ("Sharma", "sharma"), ("Khan", "khan"), ("Ivanov", "ivanov"),
    ("Müller", "muller"), ("Schmidt", "schmidt"), ("Dubois", "dubois"), ("Rossi", "rossi"),
    ("Nowak", "nowak"), ("Kowalski", "kowalski"), ("Jensen", "jensen"), ("Nielsen", "nielsen"),
    ("O'Brien", "obrien"), ("García Márquez", "garciamarquez"), ("Okafor", "okafor"),
    ("Mensah", "mensah"), ("Silva", "silva"), ("Santos", "santos"), ("Novak", "novak"),
    ("Horvat", "horvat"), ("Andersson", "andersson"), ("Larsen", "larsen"), ("Cohen", "cohen"),
    ("Nguyen", "nguyen"), ("Kim", "kim"), ("Park", "park"),
)
EMAIL_DOMAINS = (
    "gmail.com", "gmail.com", "gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com",
    "example.com", "acme-corp.com", "globex.io", "initech.net", "uni-example.edu",
)
APP_ADJECTIVES = (
    "Blue", "Rapid", "Smart", "Open", "Secure", "Bright", "Cloud", "Urban", "Green", "Quantum",
    "Nimble", "Silent", "Golden", "Pixel", "Atlas", "Nova", "Polar", "Solar", "Iron", "Lucid",
)
APP_NOUNS = (
    "Portal", "Dashboard", "Tracker", "Wiki", "CRM", "Helpdesk", "Analytics", "Shop", "Payroll",
    "Scheduler", "Inventory", "Chat", "Docs", "Monitor", "Gateway", "Studio", "Forms", "Billing",
    "Timesheet", "Notes",
)
APP_DOMAINS = ("example.com", "acme-corp.com", "globex.io", "initech.net", "apps.example.org", "localhost.dev")
CALLBACK_PATHS = ("/oauth/callback", "/auth/callback", "/signin-oidc", "/api/auth/callback/oneidp", "/callback")
TOKEN_VALIDITIES = (900, 1800, 3600, 3600, 3600, 3600, 7200, 28800, 86400)
ROLE_NAMES = (
    "reader", "writer", "admin", "auditor", "editor", "viewer", "billing", "support", "developer",
    "operator", "manager", "maintainer", "analyst", "guest", "moderator", "publisher", "reviewer",
    "approver", "contributor", "tester", "deployer", "finance", "hr", "sales", "security",
)
BAN_REASONS = (
    "spam", "abuse of service", "credential stuffing", "terms of service violation",
    "fraudulent payment", "requested by security team",
)
DISABLE_REASONS = ("owner request", "inactive for 12 months", "security review", "abuse reports", None)
UNKNOWN_FIELDS = (
    ("importedFrom", "auth0"),
    ("legacyLoginCount", 17),
    ("tmpMigrationFlag", True),
    ("profile", {"locale": "en-US", "theme": "dark"}),
    ("notes", "created by support script"),
    ("tags", ["beta", "internal"]),
)
_B64_TO_BCRYPT = bytes.maketrans(b"+", b".")


# ----------------------------------------------------------------------------- helpers
def _dt(ms: int) -> datetime:
    """Naive UTC datetime ``ms`` milliseconds after START (millisecond precision)."""
    return START + timedelta(milliseconds=ms)


def _iso_z(ms: int) -> str:
    return _dt(ms).isoformat(timespec="milliseconds") + "Z"


def _uuid4(rng: Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _assign_dirty(rng: Random, n: int, ratio: float, kinds: tuple[str, ...]) -> dict[int, str]:
    """index -> kind for round(n * ratio) documents (at least one document stays clean)."""
    n_dirty = min(round(n * ratio), max(n - 1, 0))
    if n_dirty <= 0:
        return {}
    slots = rng.sample(range(n), n_dirty)
    order = list(kinds)
    rng.shuffle(order)
    return {slot: order[k % len(order)] for k, slot in enumerate(slots)}


def _fake_user_id(rng: Random, taken: set[str]) -> str:
    while True:
        uid = f"{int(rng.random() * 999_999_999_999) + 1:012d}"
        if uid not in taken:
            return uid


def _older_clean(rng: Random, clean: list[int], i: int) -> int:
    """A clean index below ``i`` when there is one (created earlier), else any clean index."""
    pos = bisect_left(clean, i)
    return clean[int(rng.random() * pos)] if pos else clean[int(rng.random() * len(clean))]


def _set_dates(doc: dict, created_ms: list[int], updated_ms: list[int], i: int, created: int, updated: int) -> None:
    created_ms[i], updated_ms[i] = created, max(created, updated)
    doc["createdAt"] = _dt(created_ms[i])
    doc["updatedAt"] = _dt(updated_ms[i])


def _make_later(doc: dict, created_ms: list[int], updated_ms: list[int], i: int, j: int, rng: Random) -> None:
    """Make document ``i`` created after document ``j`` (so ``j`` wins a 'first created' tie-break)."""
    if created_ms[i] <= created_ms[j]:
        c = created_ms[j] + HOUR_MS + int(rng.random() * 30 * DAY_MS)
        _set_dates(doc, created_ms, updated_ms, i, c, max(updated_ms[i], c + int(rng.random() * DAY_MS)))


def _common_dirt(doc: dict, kind: str, created: int, rng: Random) -> None:
    """The kinds shared by all collections: odd createdAt values and an unknown field."""
    if kind == "created_at_iso_string":
        doc["createdAt"] = _iso_z(created)
    elif kind == "created_at_epoch_ms":
        doc["createdAt"] = START_EPOCH_MS + created
    elif kind == "created_at_garbage":
        doc["createdAt"] = "not-a-date"
    elif kind == "unknown_field":
        name, value = UNKNOWN_FIELDS[int(rng.random() * len(UNKNOWN_FIELDS))]
        doc[name] = json.loads(json.dumps(value))  # an independent copy of lists / dicts
    else:  # pragma: no cover - DIRTY_KINDS and the dirt code are kept in step by tests
        raise AssertionError(f"unhandled dirty kind {kind}")


# ----------------------------------------------------------------------------- generators
def _users(rng: Random, n: int) -> tuple[list[dict], list[int], list[int], list[int]]:
    """Clean users in creation order; returns docs, created/updated ms offsets and admin indices."""
    rnd = rng.random
    randbytes = rng.randbytes
    b64 = base64.b64encode
    nf, nl, nd = len(FIRST_NAMES), len(LAST_NAMES), len(EMAIL_DOMAINS)
    docs: list[dict] = []
    created_ms: list[int] = []
    updated_ms: list[int] = []
    admins: list[int] = []
    taken: set[str] = set()
    span = SPAN_MS
    for i in range(n):
        while True:
            uid = f"{int(rnd() * 999_999_999_999) + 1:012d}"
            if uid not in taken:
                taken.add(uid)
                break
        first, fslug = FIRST_NAMES[int(rnd() * nf)]
        last, lslug = LAST_NAMES[int(rnd() * nl)]
        style = rnd()
        if style < 0.4:
            username = f"{fslug}.{lslug}{i}"
        elif style < 0.65:
            username = f"{fslug[0]}{lslug}{i}"
        elif style < 0.85:
            username = f"{fslug}_{lslug}{i}"
        else:
            username = f"{lslug}{fslug[0]}{i}"
        created = int(span * (i + rnd()) / n)
        updated = created + int(rnd() ** 3 * (span - created))
        r = rnd()
        provider = "local" if r < 0.85 else ("github" if r < 0.95 else "google")
        doc: dict[str, Any] = {
            "userId": uid,
            "username": username,
            "email": f"{username}@{EMAIL_DOMAINS[int(rnd() * nd)]}",
        }
        if provider == "local":
            doc["password"] = "$2b$10$" + b64(randbytes(40))[:53].translate(_B64_TO_BCRYPT).decode()
        doc["firstName"] = first
        doc["lastName"] = last
        doc["identityProvider"] = provider
        if provider == "github":
            doc["identityProviderUserId"] = str(1_000_000 + i * 37 + int(rnd() * 37))
        elif provider == "google":
            doc["identityProviderUserId"] = str(100_000_000_000_000_000_000 + i * 1000 + int(rnd() * 1000))
        elif rnd() < 0.3:
            doc["identityProviderUserId"] = None
        sign_count = 0
        if rnd() < 0.05:
            doc["passkeyId"] = base64.urlsafe_b64encode(randbytes(16)).rstrip(b"=").decode()
            doc["passkeyPublicKey"] = b64(randbytes(77)).decode()
            sign_count = int(rnd() * 400)
        has_mfa = rnd() < 0.2
        if has_mfa:
            doc["mfaSecret"] = base64.b32encode(randbytes(20)).decode()
        doc["mfaEnabled"] = has_mfa and rnd() < 0.85
        doc["emailVerified"] = provider != "local" or rnd() < 0.85
        doc["signCount"] = sign_count
        roles = ["standardUser"]
        if rnd() < 0.6:
            roles.append("oauthUser")
        is_admin = rnd() < 0.003
        if is_admin:
            roles.append("admin")
            admins.append(i)
        doc["providerRoles"] = roles
        doc["canManageApps"] = is_admin or rnd() < 0.03
        if rnd() < 0.01:
            doc["banned"] = True
            banned_at = created + int(rnd() * (updated - created))
            doc["bannedAt"] = _dt(banned_at)
            doc["bannedReason"] = BAN_REASONS[int(rnd() * len(BAN_REASONS))]
            doc["bannedBy"] = None  # filled in once the admins are known
            updated = banned_at
        else:
            doc["banned"] = False
        if created < CUTOVER_MS and rnd() < 0.4:
            doc["oauthClientAppIds"] = []  # legacy field: present (empty) on many older users
        doc["createdAt"] = _dt(created)
        doc["updatedAt"] = _dt(updated)
        if rnd() < 0.8:
            doc["__v"] = 0
        docs.append(doc)
        created_ms.append(created)
        updated_ms.append(updated)
    return docs, created_ms, updated_ms, admins


def generate_labeled(
    n_users: int, *, seed: int = 42, dirty_ratio: float = 0.03
) -> tuple[dict[str, list[dict]], dict[str, dict[int, str]]]:
    """Like :func:`generate`, plus ``{collection: {document index: dirty kind}}``."""
    # Millions of new dicts/lists trigger many full garbage collections for nothing (no
    # cycles are made here): switching the collector off roughly halves the time.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(n_users, seed=seed, dirty_ratio=dirty_ratio)
    finally:
        if was_enabled:
            gc.enable()


def _generate(
    n_users: int, *, seed: int, dirty_ratio: float
) -> tuple[dict[str, list[dict]], dict[str, dict[int, str]]]:
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    if not 0.0 <= dirty_ratio <= 1.0:
        raise ValueError(f"dirty_ratio must be between 0 and 1, got {dirty_ratio}")
    rng = Random(seed)
    rnd = rng.random
    n = n_users
    n_apps = n // 20
    n_roles = n // 10 if n_apps else 0  # a role needs an app

    # ------------------------------------------------------------------ users
    users, u_created, u_updated, admins = _users(rng, n)
    user_dirty = _assign_dirty(rng, n, dirty_ratio, DIRTY_KINDS["users"])
    clean_users = [i for i in range(n) if i not in user_dirty]  # sorted
    user_ids = [u["userId"] for u in users]
    taken_ids = set(user_ids)
    clean_admins = [a for a in admins if a not in user_dirty] or clean_users
    for i, doc in enumerate(users):
        if doc.get("bannedBy", "") is None:
            by = clean_admins[int(rnd() * len(clean_admins))]
            if by == i and len(clean_users) > 1:
                by = next(c for c in clean_users if c != i)
            doc["bannedBy"] = user_ids[by]

    # ------------------------------------------------------------------ apps
    apps: list[dict] = []
    a_created: list[int] = []
    a_updated: list[int] = []
    app_owner: list[int] = []  # the owning user's index (also for old apps without `owner`)
    app_dirty = _assign_dirty(rng, n_apps, dirty_ratio, DIRTY_KINDS["oauthClientApps"])
    legacy: dict[int, list[str]] = {}
    if n_apps:
        n_devs = min(len(clean_users), max(1, n_apps // 2))
        devs = rng.sample(clean_users, n_devs)
        old_devs = [d for d in devs if u_created[d] < CUTOVER_MS - DAY_MS]
        for d in devs:
            users[d]["canManageApps"] = True
        old_ids: set[str] = set()
        for a in range(n_apps):
            kind = app_dirty.get(a)
            old = bool(old_devs) and len(old_ids) < 500_000 and rnd() < 0.3
            if old:
                owner = old_devs[int(rnd() * len(old_devs))]
                while True:
                    app_id = f"{int(rnd() * 999_999) + 1:06d}"
                    if app_id not in old_ids:
                        old_ids.add(app_id)
                        break
                oc = u_created[owner]
                created = oc + int(rnd() * (CUTOVER_MS - oc))
            else:
                owner = devs[int(rnd() * len(devs))]
                app_id = _uuid4(rng)
                lo = max(u_created[owner], CUTOVER_MS)
                created = lo + int(rnd() * (SPAN_MS - lo))
            updated = created + int(rnd() ** 2 * (SPAN_MS - created))
            name = f"{APP_ADJECTIVES[int(rnd() * len(APP_ADJECTIVES))]} {APP_NOUNS[int(rnd() * len(APP_NOUNS))]}"
            slug = name.lower().replace(" ", "-")
            public = rnd() < 0.2
            doc: dict[str, Any] = {
                "oauthClientAppId": app_id,
                "clientId": rng.randbytes(32).hex(),
            }
            if not public:
                doc["clientSecret"] = base64.urlsafe_b64encode(rng.randbytes(48)).decode()
            doc["oauthAppName"] = name
            doc["redirectUri"] = (
                f"https://{slug}.{APP_DOMAINS[int(rnd() * len(APP_DOMAINS))]}"
                f"{CALLBACK_PATHS[int(rnd() * len(CALLBACK_PATHS))]}"
            )
            doc["accessTokenValidity"] = TOKEN_VALIDITIES[int(rnd() * len(TOKEN_VALIDITIES))]
            doc["isPublicClient"] = public
            if kind == "dangling_owner":
                doc["owner"] = _fake_user_id(rng, taken_ids)
            else:
                if not old or rnd() < 0.3:  # some old apps had their owner back-filled
                    doc["owner"] = user_ids[owner]
                if old:
                    legacy.setdefault(owner, []).append(app_id)
            if rnd() < 0.04:
                doc["disabled"] = True
                disabled_at = created + int(rnd() * (updated - created))
                doc["disabledAt"] = _dt(disabled_at)
                doc["disabledReason"] = DISABLE_REASONS[int(rnd() * len(DISABLE_REASONS))]
                updated = disabled_at
            else:
                doc["disabled"] = False
                if rnd() < 0.3:
                    doc["disabledAt"] = None
                    doc["disabledReason"] = None
            doc["createdAt"] = _dt(created)
            doc["updatedAt"] = _dt(updated)
            if rnd() < 0.8:
                doc["__v"] = 0
            apps.append(doc)
            a_created.append(created)
            a_updated.append(updated)
            app_owner.append(owner)
    # legacy ownership lists (in user order, so dict order never matters); some stored as numbers
    for u in sorted(legacy):
        users[u]["oauthClientAppIds"] = [int(x) if rnd() < 0.25 else x for x in legacy[u]]

    # ------------------------------------------------------------------ roles
    roles: list[dict] = []
    r_created: list[int] = []
    r_updated: list[int] = []
    role_dirty = _assign_dirty(rng, n_roles, dirty_ratio, DIRTY_KINDS["oauthRoles"])
    if n_roles:
        clean_apps = [a for a in range(n_apps) if a not in app_dirty]
        app_ids = {d["oauthClientAppId"] for d in apps}
        devs_all = [d for d in range(n) if users[d]["canManageApps"] and d not in user_dirty] or clean_users
        name_perm: dict[int, list[str]] = {}
        name_count: dict[int, int] = {}
        n_clean = len(clean_users)
        expo = rng.expovariate
        for r in range(n_roles):
            kind = role_dirty.get(r)
            if kind == "dangling_app":
                while True:
                    app_id = _uuid4(rng)
                    if app_id not in app_ids:
                        break
                client_id = rng.randbytes(32).hex()
                role_name = ROLE_NAMES[int(rnd() * len(ROLE_NAMES))]
                owner = clean_users[int(rnd() * n_clean)]
                base_created = int(rnd() * SPAN_MS)
            else:
                a = clean_apps[int(rnd() * len(clean_apps))]
                app_id = apps[a]["oauthClientAppId"]
                client_id = apps[a]["clientId"]
                perm = name_perm.get(a)
                if perm is None:
                    perm = name_perm[a] = rng.sample(ROLE_NAMES, len(ROLE_NAMES))
                c = name_count.get(a, 0)
                name_count[a] = c + 1
                role_name = perm[c % len(perm)] + (f"-{c // len(perm) + 1}" if c >= len(perm) else "")
                owner = app_owner[a] if rnd() < 0.95 else devs_all[int(rnd() * len(devs_all))]
                base_created = a_created[a]
            created = base_created + int(rnd() * 0.5 * (SPAN_MS - base_created))
            updated = created + int(rnd() ** 2 * (SPAN_MS - created))
            if rnd() < 0.05:
                members: list[Any] = ["*"]
            else:
                k = min(int(expo(1 / 5.5)), n_clean)
                members = [user_ids[m] for m in rng.sample(clean_users, k)]
            doc = {
                "oauthRoleId": f"uri:oneidp:oauth::{app_id}:role/{role_name}",
                "oauthClientAppId": app_id,
                "oauthClientId": client_id,
                "oauthRoleName": role_name,
                "owner": user_ids[owner],
                "oauthUserIds": members,
                "createdAt": _dt(created),
                "updatedAt": _dt(updated),
            }
            if rnd() < 0.8:
                doc["__v"] = 0
            roles.append(doc)
            r_created.append(created)
            r_updated.append(updated)

    # ------------------------------------------------------------------ dirt
    for i, kind in sorted(user_dirty.items()):
        doc = users[i]
        if kind == "duplicate_user_id":
            j = clean_users[int(rnd() * len(clean_users))]
            src = users[j]
            doc = {k: (list(v) if isinstance(v, list) else v) for k, v in src.items()}
            doc["emailVerified"] = True  # the newer version of the same user
            upd = u_updated[j] + HOUR_MS + int(rnd() * 30 * DAY_MS)
            u_created[i], u_updated[i] = u_created[j], upd
            doc["updatedAt"] = _dt(upd)
            users[i] = doc
        elif kind == "duplicate_username":
            j = _older_clean(rng, clean_users, i)
            doc["username"] = users[j]["username"]
            _make_later(doc, u_created, u_updated, i, j, rng)
        elif kind == "email_case_duplicate":
            j = _older_clean(rng, clean_users, i)
            email = users[j]["email"]
            doc["email"] = email.upper() if rnd() < 0.5 else email.title()
            _make_later(doc, u_created, u_updated, i, j, rng)
        elif kind == "missing_user_id":
            del doc["userId"]
        elif kind == "user_id_int":
            doc["userId"] = int(doc["userId"])
        elif kind == "provider_roles_string":
            doc["providerRoles"] = doc["providerRoles"][-1]
        elif kind == "provider_roles_null":
            doc["providerRoles"] = None
        elif kind == "provider_roles_nested":
            doc["providerRoles"] = ["standardUser", ["oauthUser"]] if rnd() < 0.5 else [list(doc["providerRoles"])]
        elif kind == "provider_roles_duplicates":
            doc["providerRoles"] = doc["providerRoles"] + ["standardUser"]
        elif kind == "provider_roles_number":
            doc["providerRoles"] = doc["providerRoles"] + [int(rnd() * 3)]
        elif kind == "provider_roles_empty_string":
            doc["providerRoles"] = doc["providerRoles"] + [""]
        elif kind == "email_empty":
            doc["email"] = ""
        else:
            _common_dirt(doc, kind, u_created[i], rng)

    clean_apps = [x for x in range(n_apps) if x not in app_dirty]
    for a, kind in sorted(app_dirty.items()):
        doc = apps[a]
        if kind == "dangling_owner":
            pass  # set while building the app (it is listed in no legacy array)
        elif kind == "missing_client_id":
            del doc["clientId"]
        elif kind == "duplicate_client_id":
            k = _older_clean(rng, clean_apps, a)
            doc["clientId"] = apps[k]["clientId"]
            _make_later(doc, a_created, a_updated, a, k, rng)
        else:
            _common_dirt(doc, kind, a_created[a], rng)

    for r, kind in sorted(role_dirty.items()):
        doc = roles[r]
        members = doc["oauthUserIds"]
        if members == ["*"] and kind in ("dangling_members", "member_ids_int"):
            members = []
        if kind == "dangling_app":
            pass  # built that way
        elif kind == "dangling_members":
            fakes = [_fake_user_id(rng, taken_ids) for _ in range(1 + int(rnd() * 2))]
            members = members + fakes
            rng.shuffle(members)
            doc["oauthUserIds"] = members
        elif kind == "wildcard_mixed":
            if not members or members == ["*"]:
                members = [user_ids[m] for m in rng.sample(clean_users, min(3, len(clean_users)))]
            doc["oauthUserIds"] = ["*"] + members if rnd() < 0.5 else members + ["*"]
        elif kind == "member_ids_int":
            if not members:
                members = [user_ids[m] for m in rng.sample(clean_users, min(3, len(clean_users)))]
            doc["oauthUserIds"] = [int(m) if (rnd() < 0.6 or idx == 0) else m for idx, m in enumerate(members)]
        else:
            _common_dirt(doc, kind, r_created[r], rng)

    data = {"users": users, "oauthClientApps": apps, "oauthRoles": roles}
    labels = {"users": user_dirty, "oauthClientApps": app_dirty, "oauthRoles": role_dirty}
    # the other collections come from a generator of their own: the three above stay exactly
    # what they were before these were added
    other, other_labels = _others(Random(f"{seed}:others"), n, dirty_ratio, users, apps, u_created, a_created,
                                  clean_users, [a for a in range(n_apps) if a not in app_dirty], clean_admins,
                                  taken_ids)
    return {**data, **other}, {**labels, **other_labels}


SCOPES = ("profile", "email", "offline_access", "roles")
INVITE_ROLES = (["standardUser"], ["standardUser"], ["standardUser", "oauthUser"], ["beta-tester"])


def _others(rng: Random, n: int, dirty_ratio: float, users: list[dict], apps: list[dict], u_created: list[int],
            a_created: list[int], clean_users: list[int], clean_apps: list[int], admins: list[int],
            taken_ids: set[str]) -> tuple[dict[str, list[dict]], dict[str, dict[int, str]]]:
    """userAppConsents (N // 10, clean users × clean apps, one per pair), invitations (N // 100)
    and appSettings (the one ``global`` document), referencing only clean users and apps."""
    rnd = rng.random
    consents: list[dict] = []
    c_created: list[int] = []
    pairs: set[tuple[int, int]] = set()
    n_consents = min(n // 10, len(clean_users) * len(clean_apps))  # one consent per (user, app)
    while len(consents) < n_consents:
        u, a = clean_users[int(rnd() * len(clean_users))], clean_apps[int(rnd() * len(clean_apps))]
        if (u, a) in pairs:
            continue
        pairs.add((u, a))
        first = max(u_created[u], a_created[a]) + int(rnd() * 30 * DAY_MS)
        last = first + int(rnd() ** 2 * max(SPAN_MS - first, 0))
        app = apps[a]
        doc = {"consentId": _uuid4(rng), "userId": users[u]["userId"], "oauthClientAppId": app["oauthClientAppId"],
               "clientId": app["clientId"],
               "consentedScopes": ["openid"] + [sc for sc in SCOPES if rnd() < 0.5],
               "firstAuthAt": _dt(first), "lastAuthAt": _dt(last), "createdAt": _dt(first), "updatedAt": _dt(last)}
        if rnd() < 0.8:
            doc["__v"] = 0
        consents.append(doc)
        c_created.append(first)
    consent_dirty = _assign_dirty(rng, len(consents), dirty_ratio, DIRTY_KINDS["userAppConsents"])
    clean_consents = [c for c in range(len(consents)) if c not in consent_dirty]
    app_ids = {a["oauthClientAppId"] for a in apps}
    for c, kind in sorted(consent_dirty.items()):
        doc = consents[c]
        if kind == "dangling_user":
            doc["userId"] = _fake_user_id(rng, taken_ids)
        elif kind == "dangling_app":
            while doc["oauthClientAppId"] in app_ids:
                doc["oauthClientAppId"] = _uuid4(rng)
        elif kind == "duplicate_consent":
            k = clean_consents[int(rnd() * len(clean_consents))]
            doc["userId"], doc["oauthClientAppId"] = consents[k]["userId"], consents[k]["oauthClientAppId"]
            later = max(c_created[c], c_created[k] + HOUR_MS)
            doc["createdAt"] = doc["firstAuthAt"] = _dt(later)
            doc["updatedAt"] = doc["lastAuthAt"] = _dt(later + HOUR_MS)
        elif kind == "missing_consent_id":
            del doc["consentId"]
        elif kind == "scopes_string":
            doc["consentedScopes"] = " ".join(doc["consentedScopes"])
        elif kind == "scopes_duplicates":
            doc["consentedScopes"] = doc["consentedScopes"] + ["openid"]
        else:
            _common_dirt(doc, kind, c_created[c], rng)

    invitations: list[dict] = []
    i_created: list[int] = []
    admins_emails = [users[a]["email"] for a in admins] or [users[u]["email"] for u in clean_users[:1]]
    for i in range(n // 100 if clean_users else 0):
        created = int(rnd() * SPAN_MS)
        doc = {"inviteId": _uuid4(rng), "email": f"invitee{i}@{EMAIL_DOMAINS[int(rnd() * len(EMAIL_DOMAINS))]}",
               "tokenHash": rng.randbytes(32).hex(), "invitedBy": admins_emails[int(rnd() * len(admins_emails))],
               "providerRoles": list(INVITE_ROLES[int(rnd() * len(INVITE_ROLES))]), "canManageApps": rnd() < 0.1,
               "expiresAt": _dt(created + 7 * DAY_MS), "acceptedAt": None, "revokedAt": None}
        updated = created
        r = rnd()
        if r < 0.3:
            u = clean_users[int(rnd() * len(clean_users))]
            updated = created + int(rnd() * 7 * DAY_MS)
            doc["acceptedAt"], doc["acceptedUserId"] = _dt(updated), users[u]["userId"]
        elif r < 0.4:
            updated = created + int(rnd() * 7 * DAY_MS)
            doc["revokedAt"] = _dt(updated)
        doc["createdAt"], doc["updatedAt"] = _dt(created), _dt(updated)
        invitations.append(doc)
        i_created.append(created)
    invite_dirty = _assign_dirty(rng, len(invitations), dirty_ratio, DIRTY_KINDS["invitations"])
    for i, kind in sorted(invite_dirty.items()):
        doc = invitations[i]
        if kind == "missing_email":
            del doc["email"]
        elif kind == "dangling_accepted_user":
            doc["acceptedAt"], doc["acceptedUserId"] = doc["updatedAt"], _fake_user_id(rng, taken_ids)
        elif kind == "expires_at_garbage":
            doc["expiresAt"] = "in a week"
        elif kind == "roles_empty_string":
            doc["providerRoles"] = doc["providerRoles"] + [""]
        else:
            _common_dirt(doc, kind, i_created[i], rng)

    settings = []
    if n:
        settings.append({"key": "global", "registrationEnabled": True, "passwordResetEnabled": True,
                         "appCreationEnabled": rnd() < 0.5, "allowAllUsersManageApps": False, "maintenanceMode": False,
                         "maintenanceMessage": "", "allowedEmailDomains": sorted(set(EMAIL_DOMAINS))[:2],
                         "socialLoginEnabled": True, "updatedBy": admins_emails[0], "createdAt": _dt(0),
                         "updatedAt": _dt(SPAN_MS // 2), "__v": 0})
    return ({"userAppConsents": consents, "invitations": invitations, "appSettings": settings},
            {"userAppConsents": consent_dirty, "invitations": invite_dirty, "appSettings": {}})


def generate(n_users: int, *, seed: int = 42, dirty_ratio: float = 0.03) -> dict[str, list[dict]]:
    """Source documents for ``n_users`` users: ``{"users": [...], "oauthClientApps": [...],
    "oauthRoles": [...], "userAppConsents": [...], "invitations": [...], "appSettings": [...]}``
    with N, N // 20, N // 10, N // 10, N // 100 and 1 documents (no roles and no consents when
    there is no app; nothing at all for N = 0).
    Deterministic in (n_users, seed, dirty_ratio); no ``_id`` fields."""
    return generate_labeled(n_users, seed=seed, dirty_ratio=dirty_ratio)[0]


# ----------------------------------------------------------------------------- seeding
def _resolve_collections(collections: dict[str, str] | None) -> dict[str, str]:
    names = {c: c for c in COLLECTIONS}
    for logical, actual in (collections or {}).items():
        if logical not in names:
            raise ValueError(f"unknown collection {logical!r}; choose from {list(COLLECTIONS)}")
        if not actual or not isinstance(actual, str) or "$" in actual or "\x00" in actual:
            raise ValueError(f"invalid MongoDB collection name for {logical}: {actual!r}")
        names[logical] = actual
    return names


def seed(
    uri: str,
    database: str,
    n_users: int,
    *,
    seed: int = 42,
    dirty_ratio: float = 0.03,
    collections: dict[str, str] | None = None,
    drop: bool = True,
    batch: int = 5000,
) -> dict[str, int]:
    """Generate the documents and insert them (unordered ``insert_many`` in batches of ``batch``).

    ``collections`` maps logical names to the actual collection names (missing ones keep
    their logical name). With ``drop`` the collections are dropped first. A non-unique index
    is created on each collection's app key (dirty data has duplicates). Returns
    ``{actual collection name: documents inserted}``.
    """
    from pymongo import ASCENDING, MongoClient

    if batch < 1:
        raise ValueError("batch must be >= 1")
    names = _resolve_collections(collections)
    data = generate(n_users, seed=seed, dirty_ratio=dirty_ratio)
    counts: dict[str, int] = {}
    client: MongoClient = MongoClient(uri)
    try:
        db = client[database]
        for logical in COLLECTIONS:
            coll = db[names[logical]]
            if drop:
                coll.drop()
            docs = data[logical]
            inserted = 0
            for start in range(0, len(docs), batch):
                result = coll.insert_many(docs[start:start + batch], ordered=False)
                inserted += len(result.inserted_ids)
            coll.create_index([(KEY_FIELDS[logical], ASCENDING)], name=f"{KEY_FIELDS[logical]}_1")
            counts[names[logical]] = inserted
    finally:
        client.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.seed_mongo", description=__doc__.split("\n\n")[0])
    p.add_argument("--uri", default="mongodb://127.0.0.1:27017")
    p.add_argument("--db", required=True, help="database name")
    p.add_argument("--users", type=int, required=True, help="number of users (apps = N/20, roles = N/10)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dirty-ratio", type=float, default=0.03)
    p.add_argument("--no-drop", action="store_true", help="keep existing documents (default: drop first)")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--collection", action="append", default=[], metavar="LOGICAL=NAME",
                   help="actual collection name, e.g. oauthRoles=oauthroles (repeatable)")
    p.add_argument("--format", choices=("bson", "bson.gz", "archive", "jsonl", "jsonarray"),
                   help="write the documents as dump files into --out instead of inserting them")
    p.add_argument("--out", help="the dump folder for --format")
    args = p.parse_args(argv)
    if args.format:
        from pathlib import Path

        from tools.write_dump import write

        if not args.out:
            p.error("--format needs --out")
        files = write(generate(args.users, seed=args.seed, dirty_ratio=args.dirty_ratio), Path(args.out), args.format,
                      db=args.db)
        print(json.dumps({"format": args.format, "files": [str(f) for f in files]}))
        return 0
    mapping = {}
    for item in args.collection:
        logical, sep, actual = item.partition("=")
        if not sep:
            p.error(f"--collection expects LOGICAL=NAME, got {item!r}")
        mapping[logical] = actual
    try:
        _resolve_collections(mapping)
    except ValueError as exc:
        p.error(str(exc))
    t0 = time.perf_counter()
    counts = seed(args.uri, args.db, args.users, seed=args.seed, dirty_ratio=args.dirty_ratio,
                  collections=mapping, drop=not args.no_drop, batch=args.batch)
    print(json.dumps({
        "database": args.db,
        "users": args.users,
        "seed": args.seed,
        "dirty_ratio": args.dirty_ratio,
        "dropped": not args.no_drop,
        "inserted": counts,
        "seconds": round(time.perf_counter() - t0, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
