"""users' own logic (hooks ``roles_from_user_roles``, ``legacy_owner_claims``): the roles
table from the distinct providerRoles, and the legacy ``oauthClientAppIds`` kept as ownership
claims for the apps' back-fill. Rules, uniqueness and arrays come from the declaration."""
from __future__ import annotations

import pandas as pd

from authmigrate.registry import COLLECTIONS
from authmigrate.transform import (USER_RULES, Result, _coerce, _drop_clashes, _explode, _finish, _legacy_app_id,
                                   _reject_row, _role_name, _typed, duplicate_plan)


USERS = COLLECTIONS["users"]
USER_CLASHES = USERS.clash_rules  # incremental runs: target rows that stay win these
USER_DUPLICATES = USERS.duplicate_passes  # (subset, order, ascending, code, what, casefold), in order
USER_KEY_COLUMNS = list(dict.fromkeys(["id", *(c for u in USERS.unique for c in u.columns), "created_at", "updated_at"]))


def users_accept(docs: pd.DataFrame, existing: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """The per-document part of the users rules: coercion, and (incremental runs) collisions with
    target rows that stay. Any batch of documents can be accepted on its own."""
    frame, rejects = _coerce(docs, USER_RULES)
    for subset, code, what, fold in USER_CLASHES:
        frame, dropped = _drop_clashes(frame, docs, existing, subset, code, what, fold)
        rejects += dropped
    return frame, rejects


def users_explode(frame: pd.DataFrame, docs: pd.DataFrame) -> tuple[pd.DataFrame, list[dict], dict, pd.DataFrame]:
    """Accepted users → user_roles rows, element rejects, element counts and legacy app claims;
    every row and reject keeps the ``_row`` of its document, so a later step can drop the
    documents that lose a uniqueness contest."""
    user_roles, rejects, counts = _explode(frame, docs, "_roles", "id", "role_id", _role_name)
    legacy = [
        (app, user, row)
        for user, apps, row in zip(frame["id"], frame["_legacy_apps"], frame["_row"])
        for app in {a for a in map(_legacy_app_id, apps) if a is not None}
    ]
    legacy = pd.DataFrame(legacy, columns=["app_id", "user_id", "_row"]).astype(
        {"app_id": "string", "user_id": "string", "_row": "int64"})
    return user_roles.rename(columns={"id": "user_id"}), rejects, counts, legacy


def users_result(users: pd.DataFrame, user_roles: pd.DataFrame, legacy: pd.DataFrame, docs: pd.DataFrame,
                 rejects: list[dict], el_counts: dict) -> Result:
    """The surviving users' row sets in their final order, with roles derived from user_roles."""
    user_roles = user_roles.sort_values(["user_id", "role_id"], kind="stable")
    tables = {
        "users": _typed(users.sort_values("id", kind="stable"), "users"),
        "roles": roles_table(set(user_roles["role_id"])),
        "user_roles": _typed(user_roles, "user_roles"),
    }
    counts = {k: v for k, v in el_counts.items() if not k.startswith("_")}
    return _finish(docs, rejects, tables, {"arrays": {"user_roles": counts}}, legacy_owners_extra(legacy))


def roles_table(role_ids) -> pd.DataFrame:
    """The roles row set: one row per distinct provider role, named after itself."""
    roles = sorted(role_ids)
    return _typed(pd.DataFrame({"id": roles, "name": roles}), "roles")


def legacy_owners_extra(legacy: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The distinct (app, user) ownership claims of the surviving users, sorted."""
    pairs = legacy[["app_id", "user_id"]].drop_duplicates().sort_values(["app_id", "user_id"])
    return {"legacy_owners": pairs.reset_index(drop=True).astype("string")}


def transform_users(docs: pd.DataFrame, existing: pd.DataFrame | None = None) -> Result:
    """users → users, roles (distinct providerRoles), user_roles; plus the legacy
    app ownership claims (``extras['legacy_owners']``) used to back-fill app owners.
    ``existing``: target rows outside this batch (incremental runs); they win collisions.
    The same steps as the batched file transform (transform_task), on one frame."""
    frame, rejects = users_accept(docs, existing)
    losers = duplicate_plan(frame[[*USER_KEY_COLUMNS, "mongo_id", "_row"]], USER_DUPLICATES)
    rejects += [_reject_row(docs["_doc"].iat[row], "document", None, code, reason) for row, code, reason in losers]
    frame = frame[~frame["_row"].isin({row for row, _, _ in losers})]
    user_roles, el_rejects, el_counts, legacy = users_explode(frame, docs)
    return users_result(frame, user_roles, legacy, docs, rejects + el_rejects, el_counts)


def transform(docs, known, existing, extras) -> Result:
    return transform_users(docs, existing)
