"""Each source collection described once: its key, projection, target tables and transform.

Adding a collection is one entry here, one transform function, and its tables in schema.sql.
Imported at DAG parse time: standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class Collection:
    name: str  # logical name (and the default MongoDB collection name)
    key_field: str  # the app's id field (never _id)
    projection: tuple[str, ...]  # source fields read by export
    tables: tuple[Table, ...]  # in merge order
    depends_on: tuple[str, ...] = ()  # collections whose accepted keys this transform needs
    arrays: dict[str, str] | None = None  # source array field -> join table it becomes
    cleanup: tuple[str, ...] = ()  # SQL files run after the merge, in the same transaction
    ignored: tuple[str, ...] = ("__v",)  # source fields deliberately not migrated (the census marks them)

    @property
    def main_table(self) -> Table:
        return self.tables[0]


USERS = Table(
    "users",
    key=("id",),
    columns={
        "id": "text",
        "mongo_id": "text",
        "username": "text",
        "email": "text",
        "password_hash": "text",
        "first_name": "text",
        "last_name": "text",
        "identity_provider": "text",
        "identity_provider_user_id": "text",
        "passkey_id": "text",
        "passkey_public_key": "text",
        "mfa_secret": "text",
        "mfa_enabled": "bool",
        "email_verified": "bool",
        "sign_count": "int",
        "can_manage_apps": "bool",
        "banned": "bool",
        "banned_at": "timestamp",
        "banned_reason": "text",
        "banned_by": "text",
        "created_at": "timestamp",
        "updated_at": "timestamp",
    },
    change_fields=("id", "username", "email"),
)
ROLES = Table("roles", key=("id",), columns={"id": "text", "name": "text"}, sync="upsert")
USER_ROLES = Table(
    "user_roles",
    key=("user_id", "role_id"),
    columns={"user_id": "text", "role_id": "text"},
    sync="children",
    parent="users",
    parent_column="user_id",
)
OAUTH_CLIENT_APPS = Table(
    "oauth_client_apps",
    key=("id",),
    columns={
        "id": "text",
        "mongo_id": "text",
        "client_id": "text",
        "client_secret": "text",
        "name": "text",
        "redirect_uri": "text",
        "access_token_validity": "int",
        "is_public_client": "bool",
        "owner_user_id": "text",
        "disabled": "bool",
        "disabled_at": "timestamp",
        "disabled_reason": "text",
        "created_at": "timestamp",
        "updated_at": "timestamp",
    },
    change_fields=("id", "client_id"),
)
CLIENT_ROLES = Table(
    "client_roles",
    key=("id",),
    columns={
        "id": "text",
        "mongo_id": "text",
        "oauth_client_app_id": "text",
        "oauth_client_id": "text",
        "name": "text",
        "owner_user_id": "text",
        "grants_all_users": "bool",
        "created_at": "timestamp",
        "updated_at": "timestamp",
    },
    change_fields=("id", "oauth_client_app_id"),
)
CLIENT_ROLE_USERS = Table(
    "client_role_users",
    key=("client_role_id", "user_id"),
    columns={"client_role_id": "text", "user_id": "text"},
    sync="children",
    parent="client_roles",
    parent_column="client_role_id",
)

SESSIONS = Table(
    "sessions",
    key=("id",),
    columns={
        "id": "text",
        "user_id": "text",
        "kind": "text",
        "oauth_client_app_id": "text",
        "ip_address": "inet",
        "user_agent": "text",
        "scope": "text",
        "created_at": "timestamp",
        "expires_at": "timestamp",
    },
)

SECRET_FIELDS = ("password", "clientSecret", "mfaSecret", "passkeyPublicKey")

COLLECTIONS: dict[str, Collection] = {
    c.name: c
    for c in (
        Collection(
            name="users",
            key_field="userId",
            projection=(
                "userId", "username", "email", "password", "firstName", "lastName",
                "identityProvider", "identityProviderUserId", "passkeyId", "passkeyPublicKey",
                "mfaSecret", "mfaEnabled", "emailVerified", "signCount", "providerRoles",
                "canManageApps", "banned", "bannedAt", "bannedReason", "bannedBy",
                "createdAt", "updatedAt", "oauthClientAppIds",
            ),
            tables=(USERS, ROLES, USER_ROLES),
            arrays={"providerRoles": "user_roles"},
            cleanup=("delete_unused_roles",),
        ),
        Collection(
            name="oauthClientApps",
            key_field="oauthClientAppId",
            projection=(
                "oauthClientAppId", "clientId", "clientSecret", "oauthAppName", "redirectUri",
                "accessTokenValidity", "isPublicClient", "owner", "disabled", "disabledAt",
                "disabledReason", "createdAt", "updatedAt",
            ),
            tables=(OAUTH_CLIENT_APPS,),
            depends_on=("users",),
        ),
        Collection(
            name="oauthRoles",
            key_field="oauthRoleId",
            projection=(
                "oauthRoleId", "oauthClientAppId", "oauthClientId", "oauthRoleName", "owner",
                "oauthUserIds", "createdAt", "updatedAt",
            ),
            tables=(CLIENT_ROLES, CLIENT_ROLE_USERS),
            depends_on=("users", "oauthClientApps"),
            arrays={"oauthUserIds": "client_role_users"},
        ),
    )
}

TABLES: dict[str, Table] = {t.name: t for c in COLLECTIONS.values() for t in c.tables}
TABLES["sessions"] = SESSIONS

# Redis session keys the app writes: prefix -> (kind, hash fields read). Everything else in
# Redis (pmfa:, pev:, ppr:, ac:, webauthn:, r:, settings:global, admin:audit) is never touched.
SESSION_KINDS = {
    "psid": ("login", ("deviceType", "ipAddr", "createdAt")),
    "osid": ("oauth_access", ("oauthClientAppId", "createdAt")),
    "orsid": ("oauth_refresh", ("oauthClientAppId", "createdAt", "scope")),
}


def asset_alias(table: str) -> str:
    """The Airflow asset alias a load task emits its target table's asset events through (the
    table's real URI, host and schema included, is known only at run time)."""
    return f"authmigrate:{table}"
