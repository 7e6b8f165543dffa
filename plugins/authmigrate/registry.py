"""Each source collection declared once: its key, its fields (source name, target column,
kind, required or default, secret), uniqueness rules, references to other collections, arrays
that become join tables, and the named hooks of its own logic. Everything else derives from
the declaration: the export's projection, the target tables' columns (COPY, verification
hashing), the transform's rules and uniqueness passes, the incremental key and collision
columns, the reconciliation lists, the trigger form's choices, the secrets redacted in rejects
and the field tables of docs/data-contract.md (``python -m tools.contract_doc``).

Adding a collection: its declaration here, its module if it needs logic of its own, its tables
in include/sql/schema.sql (tests/unit/test_schema_declarations.py keeps the two in step).
Imported at DAG parse time: standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

#: field kind -> target column type (Table.columns). ``key``: an application id (numbers become
#: zero-padded digits); ``int32``: an integer column of 32 bits; ``array``: becomes join rows.
COLUMN_TYPES = {"key": "text", "text": "text", "int": "int", "int32": "int", "bool": "bool",
                "timestamp": "timestamp", "inet": "inet"}
KIND_DEFAULT = object()  # a field's default when none is declared: false for bool, NULL otherwise


@dataclass(frozen=True)
class Table:
    """A target table fed by a collection's transform.

    sync:
      ``mirror``   the table equals the source: rows missing from staging are deleted (full runs).
      ``upsert``   rows are inserted or updated, never deleted by the merge (reference data).
      ``children`` join rows of a parent table: the rows of every re-loaded parent are replaced.
    """

    name: str
    key: tuple[str, ...]
    columns: dict[str, str]  # column -> type: text | bool | int | timestamp | inet
    sync: str = "mirror"
    parent: str | None = None  # for children: parent table name
    parent_column: str | None = None  # for children: the column referencing the parent key
    change_fields: tuple[str, ...] = ()  # columns cache-key patterns may use ({id}, {client_id})

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    @property
    def child_column(self) -> str | None:
        """For children: the key column that is not the parent's (the array element)."""
        return next((c for c in self.key if c != self.parent_column), None) if self.sync == "children" else None


@dataclass(frozen=True)
class Field:
    """One source field. ``column``: its target column; a name starting with ``_`` is read for
    the collection's logic or an array's join rows, never stored as a column. ``source`` None:
    a column the collection's own logic derives (no source field)."""

    source: str | None
    column: str
    kind: str  # a COLUMN_TYPES key, or "array"
    required: bool = False  # missing or empty → the document is rejected (missing_required / missing_key)
    default: Any = KIND_DEFAULT  # the value of a missing field (bool: false unless declared None)
    secret: bool = False  # its values never appear in rejects, logs, XCom or reports
    width: int = 0  # key kind: a number becomes its digits, zero-padded to this width


@dataclass(frozen=True)
class Unique:
    """A uniqueness rule over main-table columns: of the documents sharing a value, the earliest
    ``createdAt`` (then the smallest ``_id``) wins, the others are rejected with ``code``; in an
    incremental run a target row that stays wins. NULLs never collide."""

    columns: tuple[str, ...]
    code: str
    what: str  # how the reason names it
    casefold: bool = False  # compared case-insensitively (as the app compares it)


@dataclass(frozen=True)
class Reference:
    """A main-table column holding another collection's key. A value that collection does not
    have (or rejected): ``dangling="reject"`` rejects the document; ``"null"`` keeps it with the
    column set to NULL and a field-scope reject."""

    column: str
    collection: str
    dangling: str  # reject | null
    code: str
    what: str  # how the reason names the referenced row ("user", "app", "owner")


@dataclass(frozen=True)
class JoinArray:
    """An array field (its Field has kind "array" and column ``column``) that becomes join rows
    ``(parent_column, element_column)`` in ``table``, one per valid, distinct element.
    ``element``: ``name`` (a non-blank string, kept as stored) or ``key`` (an id by the key rule,
    zero-padded to ``width``). ``references``: the collection whose keys the elements must be
    (a dangling element is rejected, the document kept)."""

    column: str
    table: str
    parent_column: str
    element_column: str
    element: str  # name | key
    what: str  # how a reject names an element ("role", "user id", "scope")
    width: int = 0
    wildcard: bool = False  # "*" is a flag of the document, not an element (hook grant_all_wildcard)
    references: str | None = None
    dangling_code: str = "dangling_reference"
    dangling_what: str = "row"  # how a dangling element's reject names what is missing ("user")


@dataclass(frozen=True)
class RedisHash:
    """A Redis source's keys: ``<prefix>:<userId>:<session id>`` hashes of one ``kind``, of
    which the export reads ``fields`` (HGETALL) and the remaining TTL (PTTL)."""

    prefix: str
    kind: str
    fields: tuple[str, ...]


#: The named hooks a declaration may list: special semantics, each documented in
#: docs/data-contract.md. A frame hook (transform.FRAME_HOOKS) is applied by the declared
#: transform; the others live in the collection's own module (``module``).
HOOKS = {
    "roles_from_user_roles": "the roles table holds one row per distinct providerRoles element",
    "legacy_owner_claims": "the legacy oauthClientAppIds arrays are kept as ownership claims for the apps",
    "legacy_owner_backfill": "an app without owner takes the one user whose legacy oauthClientAppIds lists it",
    "grant_all_wildcard": 'a "*" member sets grants_all_users (kept alongside explicit members)',
    "session_keys": "a session's id, user and kind come from its Redis key; the stored id hashes the "
                    "session id (a bearer token), and expires_at is the read time plus the key's TTL",
}


@dataclass(frozen=True)
class Collection:
    name: str  # logical name (and the default MongoDB collection name)
    table: str  # the main target table: one row per accepted document, keyed by the app key as ``id``
    key: Field  # the app's id field (never _id); its column is ``id``
    fields: tuple[Field, ...]  # in rule order: a document's first failing field names its reject
    unique: tuple[Unique, ...] = ()  # applied in this order, after the key's own uniqueness
    references: tuple[Reference, ...] = ()
    arrays: tuple[JoinArray, ...] = ()
    extra_tables: tuple[Table, ...] = ()  # tables its own logic fills (merged after the main table)
    hooks: tuple[str, ...] = ()  # names from HOOKS
    change_fields: tuple[str, ...] = ("id",)  # columns cache-key patterns may use
    cleanup: tuple[str, ...] = ()  # SQL files run after the merge, in the same transaction
    ignored: tuple[str, ...] = ("__v",)  # source fields deliberately not migrated (the census marks them)
    optional: bool = False  # absent from the source (under its default name): reported, not a failure
    mongoose_name: str | None = None  # the lower-cased plural name a Mongoose app stores it under
    module: str | None = None  # its own logic, if any: authmigrate.collections.<module> (its hooks live there)
    description: str = ""
    store: str = "mongodb"  # mongodb (or its dump files) | redis (read from the live Redis: hashes)
    redis_hashes: tuple[RedisHash, ...] = ()  # store redis: the keys it reads

    def __post_init__(self):
        columns = {f.column for f in self.all_fields}
        problems = [f"unknown hook {h!r}" for h in self.hooks if h not in HOOKS]
        problems += [f"unique column {c!r} is not a field" for u in self.unique for c in u.columns
                     if c not in columns]
        problems += [f"reference column {r.column!r} is not a field" for r in self.references if r.column not in columns]
        problems += [f"array column {a.column!r} is not an array field" for a in self.arrays
                     if a.column not in {f.column for f in self.fields if f.kind == "array"}]
        problems += [f"field {f.source!r} has unknown kind {f.kind!r}" for f in self.all_fields
                     if f.kind not in COLUMN_TYPES and f.kind != "array"]
        if self.key.column != "id":
            problems.append("the key's column must be 'id'")
        if self.store not in ("mongodb", "redis") or (self.store == "redis") != bool(self.redis_hashes):
            problems.append("store redis needs its redis_hashes (and only it has them)")
        if problems:
            raise ValueError(f"collection {self.name}: " + "; ".join(problems))

    @property
    def all_fields(self) -> tuple[Field, ...]:
        return (self.key, *self.fields)

    @property
    def key_field(self) -> str:
        return self.key.source

    @cached_property
    def projection(self) -> tuple[str, ...]:
        """The source fields the export reads and the transform decodes."""
        return tuple(f.source for f in self.all_fields if f.source)

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        return tuple(f.source for f in self.all_fields if f.secret)

    @cached_property
    def main_table(self) -> Table:
        columns = {"id": "text", "mongo_id": "text"} if self.store == "mongodb" else {"id": "text"}
        columns.update({f.column: COLUMN_TYPES[f.kind] for f in self.fields if not f.column.startswith("_")})
        return Table(self.table, key=("id",), columns=columns, change_fields=self.change_fields)

    @cached_property
    def join_tables(self) -> tuple[Table, ...]:
        return tuple(Table(a.table, key=(a.parent_column, a.element_column),
                           columns={a.parent_column: "text", a.element_column: "text"},
                           sync="children", parent=self.table, parent_column=a.parent_column)
                     for a in self.arrays)

    @cached_property
    def tables(self) -> tuple[Table, ...]:
        """In merge order: the main table, the tables its logic fills, the join tables."""
        return (self.main_table, *self.extra_tables, *self.join_tables)

    @cached_property
    def array_tables(self) -> dict[str, str]:
        """Source array field -> the join table it becomes."""
        by_column = {f.column: f.source for f in self.fields}
        return {by_column[a.column]: a.table for a in self.arrays}

    @cached_property
    def depends_on(self) -> tuple[str, ...]:
        """Collections whose accepted keys this transform needs (its transform and load wait)."""
        names = [r.collection for r in self.references] + [a.references for a in self.arrays if a.references]
        return tuple(dict.fromkeys(n for n in names if n != self.name))

    @cached_property
    def duplicate_passes(self) -> tuple[tuple, ...]:
        """(subset, order, ascending, code, what, casefold), in order: the key (the newest
        ``updatedAt`` wins), then each Unique (the earliest ``createdAt`` wins)."""
        return ((["id"], ["updated_at"], [False], "duplicate_key", self.key.source, False),
                *((list(u.columns), ["created_at"], [True], u.code, u.what, u.casefold) for u in self.unique))

    @cached_property
    def clash_rules(self) -> tuple[tuple, ...]:
        """Incremental runs: (subset, code, what, casefold) a batch row must not share with a
        target row that stays."""
        return tuple((list(u.columns), u.code, u.what, u.casefold) for u in self.unique)

    @cached_property
    def competitor_columns(self) -> tuple[str, ...]:
        """The target columns an incremental batch is checked against."""
        return tuple(dict.fromkeys(("id", "mongo_id", *(c for u in self.unique for c in u.columns))))


F = Field
_CREATED = (F("createdAt", "created_at", "timestamp"), F("updatedAt", "updated_at", "timestamp"))

ROLES = Table("roles", key=("id",), columns={"id": "text", "name": "text"}, sync="upsert")

USERS = Collection(
    name="users",
    table="users",
    key=F("userId", "id", "key", required=True, width=12),
    fields=(
        F("username", "username", "text", required=True),
        F("email", "email", "text"),
        F("password", "password_hash", "text", secret=True),
        F("firstName", "first_name", "text"),
        F("lastName", "last_name", "text"),
        F("identityProvider", "identity_provider", "text"),
        F("identityProviderUserId", "identity_provider_user_id", "key"),
        F("passkeyId", "passkey_id", "text"),
        F("passkeyPublicKey", "passkey_public_key", "text", secret=True),
        F("mfaSecret", "mfa_secret", "text", secret=True),
        F("mfaEnabled", "mfa_enabled", "bool"),
        F("emailVerified", "email_verified", "bool"),
        F("signCount", "sign_count", "int", default=0),
        F("canManageApps", "can_manage_apps", "bool"),
        F("banned", "banned", "bool"),
        F("bannedAt", "banned_at", "timestamp"),
        F("bannedReason", "banned_reason", "text"),
        F("bannedBy", "banned_by", "key", width=12),
        *_CREATED,
        F("providerRoles", "_roles", "array"),
        F("oauthClientAppIds", "_legacy_apps", "array"),  # legacy ownership, read by the apps' back-fill
    ),
    unique=(
        Unique(("username",), "duplicate_username", "username"),
        Unique(("email",), "duplicate_email", "email (compared case-insensitively)", casefold=True),
        Unique(("identity_provider", "identity_provider_user_id"), "duplicate_identity",
               "identity (provider, provider user id)"),
    ),
    arrays=(JoinArray("_roles", "user_roles", "user_id", "role_id", element="name", what="role"),),
    extra_tables=(ROLES,),
    hooks=("roles_from_user_roles", "legacy_owner_claims"),
    change_fields=("id", "username", "email"),
    cleanup=("delete_unused_roles",),
    module="users",
    description="the app's accounts",
)

OAUTH_CLIENT_APPS = Collection(
    name="oauthClientApps",
    table="oauth_client_apps",
    key=F("oauthClientAppId", "id", "key", required=True, width=6),
    fields=(
        F("clientId", "client_id", "text", required=True),
        F("clientSecret", "client_secret", "text", secret=True),
        F("oauthAppName", "name", "text"),
        F("redirectUri", "redirect_uri", "text"),
        F("accessTokenValidity", "access_token_validity", "int32"),
        F("isPublicClient", "is_public_client", "bool"),
        F("owner", "owner_user_id", "key", width=12),
        F("disabled", "disabled", "bool"),
        F("disabledAt", "disabled_at", "timestamp"),
        F("disabledReason", "disabled_reason", "text"),
        *_CREATED,
    ),
    unique=(Unique(("client_id",), "duplicate_client_id", "clientId"),),
    references=(Reference("owner_user_id", "users", "null", "dangling_owner", "owner"),),
    hooks=("legacy_owner_backfill",),
    change_fields=("id", "client_id"),
    module="oauth_client_apps",
    mongoose_name="oauthclientapps",
    description="registered OAuth/OIDC client applications",
)

OAUTH_ROLES = Collection(
    name="oauthRoles",
    table="client_roles",
    key=F("oauthRoleId", "id", "key", required=True),
    fields=(
        F("oauthClientAppId", "oauth_client_app_id", "key", required=True, width=6),
        F("oauthClientId", "oauth_client_id", "text"),
        F("oauthRoleName", "name", "text", required=True),
        F("owner", "owner_user_id", "key", width=12),
        F(None, "grants_all_users", "bool"),  # hook grant_all_wildcard
        *_CREATED,
        F("oauthUserIds", "_members", "array"),
    ),
    unique=(Unique(("oauth_client_app_id", "name"), "duplicate_role_name", "(app, role name)"),),
    references=(
        Reference("oauth_client_app_id", "oauthClientApps", "reject", "dangling_app", "app"),
        Reference("owner_user_id", "users", "null", "dangling_owner", "owner"),
    ),
    arrays=(JoinArray("_members", "client_role_users", "client_role_id", "user_id", element="key",
                      what="user id", width=12, wildcard=True, references="users", dangling_code="dangling_user",
                      dangling_what="user"),),
    hooks=("grant_all_wildcard",),
    change_fields=("id", "oauth_client_app_id"),
    mongoose_name="oauthroles",
    description="per-app roles and their members",
)

USER_APP_CONSENTS = Collection(
    name="userAppConsents",
    table="user_app_consents",
    key=F("consentId", "id", "key", required=True),
    fields=(
        F("userId", "user_id", "key", required=True, width=12),
        F("oauthClientAppId", "oauth_client_app_id", "key", required=True, width=6),
        F("clientId", "client_id", "text"),
        F("firstAuthAt", "first_auth_at", "timestamp"),
        F("lastAuthAt", "last_auth_at", "timestamp"),
        *_CREATED,
        F("consentedScopes", "_scopes", "array"),
    ),
    unique=(Unique(("user_id", "oauth_client_app_id"), "duplicate_consent", "(user, app)"),),
    references=(
        Reference("user_id", "users", "reject", "dangling_user", "user"),
        Reference("oauth_client_app_id", "oauthClientApps", "reject", "dangling_app", "app"),
    ),
    arrays=(JoinArray("_scopes", "user_app_consent_scopes", "consent_id", "scope", element="name", what="scope"),),
    optional=True,
    mongoose_name="userappconsents",
    description="the scopes each user granted each app (without them, every user consents again)",
)

INVITATIONS = Collection(
    name="invitations",
    table="invitations",
    key=F("inviteId", "id", "key", required=True),
    fields=(
        F("email", "email", "text", required=True),
        F("tokenHash", "token_hash", "text", secret=True),
        F("invitedBy", "invited_by", "text"),  # an admin's e-mail, not an id
        F("canManageApps", "can_manage_apps", "bool"),
        F("expiresAt", "expires_at", "timestamp"),
        F("acceptedAt", "accepted_at", "timestamp"),
        F("revokedAt", "revoked_at", "timestamp"),
        F("acceptedUserId", "accepted_user_id", "key", width=12),
        *_CREATED,
        F("providerRoles", "_roles", "array"),
    ),
    references=(Reference("accepted_user_id", "users", "null", "dangling_accepted_user", "accepted user"),),
    # the roles an invitation grants may not exist yet (no user has them): no reference to roles
    arrays=(JoinArray("_roles", "invitation_roles", "invitation_id", "role_name", element="name", what="role"),),
    optional=True,
    description="pending, accepted and revoked invitations",
)

APP_SETTINGS = Collection(
    name="appSettings",
    table="app_settings",
    key=F("key", "id", "key", required=True),
    fields=(
        # a setting the document does not have stays NULL: the app's own default applies
        F("registrationEnabled", "registration_enabled", "bool", default=None),
        F("passwordResetEnabled", "password_reset_enabled", "bool", default=None),
        F("appCreationEnabled", "app_creation_enabled", "bool", default=None),
        F("allowAllUsersManageApps", "allow_all_users_manage_apps", "bool", default=None),
        F("maintenanceMode", "maintenance_mode", "bool", default=None),
        F("maintenanceMessage", "maintenance_message", "text"),
        F("socialLoginEnabled", "social_login_enabled", "bool", default=None),
        F("updatedBy", "updated_by", "text"),
        *_CREATED,
        F("allowedEmailDomains", "_domains", "array"),
    ),
    arrays=(JoinArray("_domains", "app_setting_email_domains", "app_setting_id", "domain", element="name",
                      what="e-mail domain"),),
    optional=True,
    mongoose_name="appsettings",
    description="the admin's global settings (one document per key, e.g. global)",
)

COLLECTIONS: dict[str, Collection] = {
    c.name: c for c in (USERS, OAUTH_CLIENT_APPS, OAUTH_ROLES, USER_APP_CONSENTS, INVITATIONS, APP_SETTINGS)
}

#: Session metadata, from the app's live Redis (sessions are never in a MongoDB dump): one row
#: per session hash; the body stays in Redis. Its own logic: authmigrate.collections.sessions.
SESSIONS_SOURCE = Collection(
    name="sessions",
    table="sessions",
    key=F(None, "id", "key"),  # prefix:userId:sha256(session id), from the Redis key (hook session_keys)
    fields=(
        F(None, "user_id", "key", required=True),  # from the key
        F(None, "kind", "text", required=True),  # from the key's prefix
        F("oauthClientAppId", "oauth_client_app_id", "text"),  # as stored; required for the OAuth kinds
        F("ipAddr", "ip_address", "inet"),  # not an IP address: NULL and a field reject
        F("deviceType", "user_agent", "text"),
        F("scope", "scope", "text"),
        F("createdAt", "created_at", "timestamp"),  # Unix seconds (or milliseconds)
        F(None, "expires_at", "timestamp"),  # the read time plus the key's PTTL
    ),
    references=(
        Reference("user_id", "users", "reject", "unknown_user", "user"),
        Reference("oauth_client_app_id", "oauthClientApps", "reject", "unknown_app", "app"),
    ),
    hooks=("session_keys",),
    ignored=(),
    module="sessions",
    store="redis",
    # Everything else in Redis (pmfa:, pev:, ppr:, ac:, webauthn:, r:, settings:global,
    # admin:audit) is never touched.
    redis_hashes=(
        RedisHash("psid", "login", ("deviceType", "ipAddr", "createdAt")),
        RedisHash("osid", "oauth_access", ("oauthClientAppId", "createdAt")),
        RedisHash("orsid", "oauth_refresh", ("oauthClientAppId", "createdAt", "scope")),
    ),
    description="session audit metadata (who, from where, with which app, until when)",
)
SESSIONS = SESSIONS_SOURCE.main_table

#: every source the DAG reads, by name: the MongoDB collections (param collections) and sessions
SOURCES: dict[str, Collection] = {**COLLECTIONS, SESSIONS_SOURCE.name: SESSIONS_SOURCE}

SECRET_FIELDS = tuple(dict.fromkeys(s for c in SOURCES.values() for s in c.secrets))

TABLES: dict[str, Table] = {t.name: t for c in SOURCES.values() for t in c.tables}


def _check_references() -> None:
    for c in SOURCES.values():
        for name in [r.collection for r in c.references] + [a.references for a in c.arrays if a.references]:
            if name not in COLLECTIONS:
                raise ValueError(f"collection {c.name}: references unknown collection {name!r}")
        order = list(SOURCES)
        late = [d for d in c.depends_on if order.index(d) > order.index(c.name)]
        if late:
            raise ValueError(f"collection {c.name}: declare {late} before it (its transform needs their keys)")


_check_references()

#: Redis session keys the app writes: prefix -> (kind, hash fields read)
SESSION_KINDS = {h.prefix: (h.kind, h.fields) for h in SESSIONS_SOURCE.redis_hashes}


def asset_alias(table: str) -> str:
    """The Airflow asset alias a load task emits its target table's asset events through (the
    table's real URI, host and schema included, is known only at run time)."""
    return f"authmigrate:{table}"
