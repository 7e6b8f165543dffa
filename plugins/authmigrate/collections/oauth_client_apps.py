"""oauthClientApps' own logic (hook ``legacy_owner_backfill``): an app without an owner takes
the one user whose legacy ``oauthClientAppIds`` lists it. Rules and uniqueness come from the
declaration."""
from __future__ import annotations

from itertools import chain
from typing import Container

import pandas as pd

from authmigrate.registry import COLLECTIONS
from authmigrate.transform import RULES, Result, _coerce, _finish, _reject_row, _typed, _unique, known_among


def transform_apps(docs: pd.DataFrame, known_users: Container[str], legacy_owners: pd.DataFrame,
                   existing: pd.DataFrame | None = None) -> Result:
    """oauthClientApps → oauth_client_apps. A missing owner is back-filled from the user whose
    legacy ``oauthClientAppIds`` lists the app; an owner that cannot be resolved becomes NULL
    with a field-level reject explaining why (the app itself is kept)."""
    frame, rejects = _coerce(docs, RULES["oauthClientApps"])
    known_users = known_among(known_users, chain(frame["owner_user_id"], legacy_owners["user_id"]))
    frame, rejects = _unique(COLLECTIONS["oauthClientApps"], frame, docs, existing, rejects)
    claims = legacy_owners.groupby("app_id")["user_id"].agg(lambda s: sorted(set(s))).to_dict() \
        if len(legacy_owners) else {}
    owners, backfilled = [], 0
    sources = docs["_doc"]
    for app, owner, row in zip(frame["id"], frame["owner_user_id"], frame["_row"]):
        doc = sources.iat[row]
        if owner is not None:
            if owner not in known_users:
                rejects.append(_reject_row(doc, "field", owner, "dangling_owner",
                                           f"owner {owner} does not exist (or was rejected); owner set to NULL"))
                owner = None
        else:
            claimants = [u for u in claims.get(app, []) if u in known_users]
            if len(claimants) == 1:
                owner = claimants[0]
                backfilled += 1
            elif claimants:
                rejects.append(_reject_row(doc, "field", ",".join(claimants), "ambiguous_owner",
                                           f"{len(claimants)} users list this app in oauthClientAppIds; owner left NULL"))
            else:
                rejects.append(_reject_row(doc, "field", None, "missing_owner",
                                           "no owner and no user lists this app in oauthClientAppIds; owner left NULL"))
        owners.append(owner)
    frame["owner_user_id"] = pd.Series(owners, index=frame.index, dtype=object)
    frame = frame.sort_values("id", kind="stable")
    tables = {"oauth_client_apps": _typed(frame, "oauth_client_apps")}
    return _finish(docs, rejects, tables, {"owners_backfilled": backfilled})


def transform(docs, known, existing, extras) -> Result:
    legacy = extras.get("legacy_owners")
    if legacy is None:
        legacy = pd.DataFrame({"app_id": pd.Series(dtype="string"), "user_id": pd.Series(dtype="string")})
    return transform_apps(docs, known["users"], legacy, existing)
