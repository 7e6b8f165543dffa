"""The transform task's file side: read the export, call the pure transform, write row sets."""
from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import pyarrow.parquet as pq

from authmigrate import transform as tf
from authmigrate.config import RunConfig
from authmigrate.db import connect, fetch_keys
from authmigrate.progress import Progress
from authmigrate.registry import COLLECTIONS
from authmigrate.staging import collection_dir, read_frame, write_frame

log = logging.getLogger("authmigrate")


def read_documents(path: str, collection: str) -> tuple[list[dict], list[dict]]:
    parquet = pq.ParquetFile(path)
    progress = Progress(f"decode {collection}", parquet.metadata.num_rows)
    docs, rejects = [], []
    for batch in parquet.iter_batches(batch_size=10_000, columns=["bson"]):
        d, r = tf.decode_documents(batch.column(0).to_pylist())
        docs += d
        rejects += r
        progress.advance(batch.num_rows)
    progress.log(final=True)
    return docs, rejects


KEY_RULES = {"users": tf.USER_RULES["id"][1], "oauthClientApps": tf.APP_RULES["id"][1],
             "oauthRoles": tf.ROLE_RULES["id"][1]}
COMPETITOR_COLUMNS = {
    "users": ("id", "mongo_id", "username", "email", "identity_provider", "identity_provider_user_id"),
    "oauthClientApps": ("id", "mongo_id", "client_id"),
    "oauthRoles": ("id", "mongo_id", "oauth_client_app_id", "name"),
}


def _key_list(collection: str, values) -> list[str]:
    coerce, out = KEY_RULES[collection], []
    for v in values:
        try:
            out.append(coerce(v))
        except tf.Reject:
            pass
    return out


def _read_keys(path: str | None) -> set[str]:
    return set(read_frame(path)["key"].dropna()) if path else set()


def _keys(cfg: RunConfig, dependency: str, upstream: dict | None) -> set[str]:
    """Keys of a collection this transform references. From this run's transform output when
    that collection ran in full; else from the target table — in an incremental run minus
    what the source no longer has or this batch re-read, plus what this batch accepted."""
    table = COLLECTIONS[dependency].main_table
    accepted = set(read_frame(upstream["tables"][table.name])["id"].dropna()) if upstream else set()
    if upstream and upstream.get("mode") != "incremental":
        return accepted
    log.info("transform: reading %s keys from the target table %s", dependency, table.name)
    with connect(cfg) as conn:
        in_target = fetch_keys(conn, cfg, table.name, "id")
    if not upstream:
        return in_target
    return accepted | ((in_target & _read_keys(upstream["source_keys"])) - _read_keys(upstream["batch_keys"]))


def _competitors(cfg: RunConfig, collection: str, source_keys: set[str], batch_keys: set[str],
                 batch_mongo_ids: set[str]) -> pd.DataFrame:
    """Target rows that stay and that batch rows must not collide with (incremental runs)."""
    from authmigrate.db import q, use_schema

    cols = COMPETITOR_COLUMNS[collection]
    with connect(cfg) as conn, conn.transaction():
        use_schema(conn, cfg)
        rows = conn.execute(q("competitors", columns=cols, table=COLLECTIONS[collection].main_table.name)).fetchall()
    frame = pd.DataFrame(rows, columns=list(cols), dtype=object)
    keep = frame["id"].isin(source_keys) & ~frame["id"].isin(batch_keys) & ~frame["mongo_id"].isin(batch_mongo_ids)
    return frame[keep].reset_index(drop=True)


def transform_collection(cfg: RunConfig, collection: str, exported: dict, upstream: dict[str, dict | None]) -> dict:
    spec = COLLECTIONS[collection]
    docs, undecodable = read_documents(exported["path"], collection)
    frame = tf.documents_frame(docs, spec.projection)
    out = collection_dir(cfg, collection, "transform")
    incremental = exported.get("mode") == "incremental"
    existing = None
    source_keys_path = batch_keys_path = None
    if incremental:
        key_docs, _ = read_documents(exported["keys"]["path"], f"{collection} keys")
        source_keys = set(_key_list(collection, (d.get(spec.key_field) for d in key_docs)))
        batch_keys = set(_key_list(collection, frame[spec.key_field]))
        existing = _competitors(cfg, collection, source_keys, batch_keys, set(frame["_id"].dropna()))
        source_keys_path = str(write_frame(pd.DataFrame({"key": sorted(source_keys)}, dtype="string"),
                                           out / "source_keys.parquet"))
        batch_keys_path = str(write_frame(pd.DataFrame({"key": sorted(batch_keys)}, dtype="string"),
                                          out / "batch_keys.parquet"))
        log.info("transform %s: incremental batch of %d documents; %d keys in the source; %d target rows "
                 "checked for collisions", collection, len(docs), len(source_keys), len(existing))
    if collection == "users":
        result = tf.transform_users(frame, existing)
    elif collection == "oauthClientApps":
        users = upstream.get("users")
        legacy = read_frame(users["extras"]["legacy_owners"]) if users else pd.DataFrame(columns=["app_id", "user_id"])
        result = tf.transform_apps(frame, _keys(cfg, "users", users), legacy, existing)
    else:
        result = tf.transform_roles(frame, _keys(cfg, "users", upstream.get("users")),
                                    _keys(cfg, "oauthClientApps", upstream.get("oauthClientApps")), existing)
    if undecodable:
        result.rejects = pd.concat([tf.rejects_frame(undecodable), result.rejects], ignore_index=True)
        result.counts["source_documents"] += len(undecodable)
        result.counts["rejected_documents"] += len(undecodable)
        by = result.counts["rejects_by_reason"]
        by["undecodable_document"] = by.get("undecodable_document", 0) + len(undecodable)
    tables = {name: str(write_frame(df, out / f"{name}.parquet")) for name, df in result.tables.items()}
    extras = {name: str(write_frame(df, out / f"{name}.parquet")) for name, df in result.extras.items()}
    rejects = str(write_frame(result.rejects, out / "rejects.parquet"))
    counts = result.counts
    stamps = [d.get("updatedAt") for d in docs]
    stamps = [t for t in stamps if isinstance(t, dt.datetime)]
    log.info("transform %s: %d documents → rows %s; %d documents rejected; rejects by reason %s",
             collection, counts["source_documents"], counts["rows"], counts["rejected_documents"],
             counts["rejects_by_reason"])
    return {"path": str(out), "tables": tables, "extras": extras, "rejects": rejects, "counts": counts,
            "mode": "incremental" if incremental else "full", "source_keys": source_keys_path,
            "batch_keys": batch_keys_path, "watermark_candidate": max(stamps).isoformat() if stamps else None}
