"""Session metadata: Redis session hashes → the ``sessions`` audit table (the declaration
``registry.SESSIONS_SOURCE``: its keys, fields, references; this module is its own logic, hook
``session_keys``, behind the one transform signature).

Reads only the app's session keys (``psid:``, ``osid:``, ``orsid:``) with SCAN (never KEYS),
HGETALL and PTTL in pipelined batches; writes nothing to Redis. Session bodies stay in Redis;
PostgreSQL keeps who, from where, with which app, and until when — and a hash of the session
id, never the id itself (it may be a bearer token). A key that vanished from Redis since the
last run is deleted from the table (``sessions`` is mirrored).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import time
from collections import Counter
from typing import Container

import pandas as pd
import pyarrow as pa

from authmigrate.config import RunConfig
from authmigrate.progress import Progress
from authmigrate.registry import COLLECTIONS, SESSION_KINDS, SESSIONS_SOURCE
from authmigrate.staging import collection_dir, read_frame, write_frame, write_table
from authmigrate.transform import Reject, Result, _typed, known_among, rejects_frame

log = logging.getLogger("authmigrate")
UTC = dt.timezone.utc
SOURCE = SESSIONS_SOURCE.name
COLUMNS = list(SESSIONS_SOURCE.main_table.columns)
EXPORT_SCHEMA = pa.schema([("key", pa.string()), ("status", pa.string()), ("fields", pa.string()),
                           ("unknown_fields", pa.int32()), ("pttl", pa.int64()), ("read_at", pa.float64())])


# --------------------------------------------------------------------------- export (Redis)
def _read_batch(client, keys: list[bytes]) -> list[tuple]:
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k)
        pipe.pttl(k)
    results = pipe.execute(raise_on_error=False)
    rows = []
    for i, k in enumerate(keys):
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
        kind_fields = SESSION_KINDS[key.split(":", 1)[0]][1]
        body, pttl = results[2 * i], results[2 * i + 1]
        if isinstance(body, Exception):
            status, fields, unknown = ("wrong_type" if "WRONGTYPE" in str(body) else "error"), {}, 0
        elif not body and pttl == -2:
            status, fields, unknown = "expired", {}, 0
        else:
            decoded = {(f.decode("utf-8", "replace") if isinstance(f, bytes) else f):
                       (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) for f, v in body.items()}
            status = "ok"
            fields = {f: decoded[f] for f in kind_fields if f in decoded}
            unknown = len(decoded) - len(fields)
        rows.append((key, status, json.dumps(fields), unknown, pttl if isinstance(pttl, int) else None))
    return rows


def export_sessions(cfg: RunConfig) -> dict:
    from authmigrate.lock import redis_client

    client = redis_client(cfg)
    read_at = time.time()
    progress = Progress("export sessions (keys scanned)", client.dbsize())
    prefixes = tuple(f"{p}:".encode() for p in SESSION_KINDS)
    rows: list[tuple] = []
    batch: list[bytes] = []
    for key in client.scan_iter(count=max(cfg.batch_size, 100)):
        progress.advance(1)
        k = key if isinstance(key, bytes) else key.encode()
        if k.startswith(prefixes):
            batch.append(k)
            if len(batch) >= cfg.batch_size:
                rows += _read_batch(client, batch)
                batch = []
    if batch:
        rows += _read_batch(client, batch)
    progress.log(final=True)
    table = pa.Table.from_pylist([dict(zip(EXPORT_SCHEMA.names, (*r, read_at))) for r in rows], schema=EXPORT_SCHEMA)
    out = write_table(table, collection_dir(cfg, SOURCE, "export") / "sessions.parquet")
    return {"path": str(out), "documents": len(rows)}  # the read time travels in the frame


# --------------------------------------------------------------------------- transform (pure)
def session_id(key: str) -> str:
    """The stored session id: ``<prefix>:<userId>:<sha256 of the session id, 32 hex>``. The raw
    session id may be the cookie's bearer token, so it never reaches PostgreSQL or a reject."""
    prefix, _, rest = key.partition(":")
    user, _, sid = rest.partition(":")
    if not user or not sid or "\x00" in user:
        return f"{prefix}:~{hashlib.sha256(rest.encode('utf-8', 'replace')).hexdigest()[:32]}"
    return f"{prefix}:{user}:{hashlib.sha256(sid.encode('utf-8', 'replace')).hexdigest()[:32]}"


def _created_at(value: str | None) -> dt.datetime | None:
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
        return dt.datetime.fromtimestamp(seconds / 1000 if seconds > 1e11 else seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise Reject("malformed_hash", f"createdAt {value[:40]!r} is not Unix seconds") from None


def transform(docs: pd.DataFrame, known: dict[str, Container[str]], existing: pd.DataFrame | None = None,
              extras: dict[str, pd.DataFrame] | None = None) -> Result:
    """The one transform signature (transform.transform("sessions", ...)): the exported keys (with
    the time they were read), the accepted keys of the collections the declaration references."""
    read_at = float(docs["read_at"].iat[0]) if len(docs) else 0.0
    return transform_sessions(docs, known.get("users", ()), known.get("oauthClientApps", ()), read_at)


def transform_sessions(exported: pd.DataFrame, known_users: Container[str], known_apps: Container[str],
                       read_at: float) -> Result:
    """One ``sessions`` row per live session key; rejects for malformed keys or hashes, wrong
    types, unknown users or apps (the declaration's references); invalid IPs become NULL plus a
    field reject."""
    rows, rejects = [], []
    expired = 0
    known_users = known_among(known_users, (k.partition(":")[2].partition(":")[0] for k in exported["key"]))
    known_keys = {"users": known_users, "oauthClientApps": known_apps}
    for key, status, fields_json, pttl in zip(exported["key"], exported["status"], exported["fields"],
                                              exported["pttl"]):
        fields = json.loads(fields_json) if fields_json else {}
        sid = session_id(key)

        def reject(code, reason, scope="document", element=None):
            rejects.append({"source_id": sid, "scope": scope, "element": element, "reason_code": code,
                            "reason": reason,
                            "document": json.dumps({"key": sid, **fields}).replace("\\u0000", "\\u2400")})

        if status == "expired":
            expired += 1
            continue
        if status != "ok":
            reject("wrong_type" if status == "wrong_type" else "unreadable_key",
                   f"{key.split(':', 1)[0]}: key is not a hash ({status})")
            continue
        prefix, _, rest = key.partition(":")
        user_id = rest.partition(":")[0]
        kind = SESSION_KINDS[prefix][0]
        try:
            if not user_id or not rest.partition(":")[2] or "\x00" in key:
                raise Reject("malformed_key", f"key is not {prefix}:<userId>:<session id>")
            if not fields:
                raise Reject("malformed_hash", "the hash has none of the session fields")
            if any("\x00" in v for v in fields.values() if isinstance(v, str)):
                raise Reject("malformed_hash", "a session field holds a NUL byte")
            created = _created_at(fields.get("createdAt"))
            app = fields.get("oauthClientAppId")
            if kind != "login" and not app:
                raise Reject("malformed_hash", "an OAuth session without oauthClientAppId")
            values = {"user_id": user_id, "oauth_client_app_id": app}
            for ref in SESSIONS_SOURCE.references:
                value = values[ref.column]
                if value and value not in known_keys[ref.collection]:
                    raise Reject(ref.code, f"{ref.what} {value} is not in the target "
                                           f"{COLLECTIONS[ref.collection].table} table")
        except Reject as r:
            reject(r.code, r.reason)
            continue
        ip = fields.get("ipAddr")
        if ip is not None:
            try:
                ip = str(ipaddress.ip_address(ip.strip()))
            except ValueError:
                reject("invalid_ip", f"ipAddr {ip[:60]!r} is not an IP address; stored as NULL", "field", ip[:200])
                ip = None
        expires = (dt.datetime.fromtimestamp(round(read_at + pttl / 1000), UTC)
                   if pttl is not None and pttl >= 0 else None)
        rows.append({"id": sid, "user_id": user_id, "kind": kind, "oauth_client_app_id": app,
                     "ip_address": ip, "user_agent": fields.get("deviceType"), "scope": fields.get("scope"),
                     "created_at": created, "expires_at": expires})
    frame = pd.DataFrame(rows, columns=COLUMNS).sort_values("id")
    doc_rejects = sum(1 for r in rejects if r["scope"] == "document")
    counts = {
        "source_documents": len(exported), "rejected_documents": doc_rejects, "expired_during_read": expired,
        "rows": {"sessions": len(frame)},
        "rejects_by_reason": dict(sorted(Counter(r["reason_code"] for r in rejects).items())),
    }
    return Result(tables={SESSIONS_SOURCE.table: _typed(frame, SESSIONS_SOURCE.table)},
                  rejects=rejects_frame(rejects), counts=counts)


# --------------------------------------------------------------------------- task side
def transform_task(cfg: RunConfig, exported: dict, upstream: dict[str, dict | None]) -> dict:
    from authmigrate.transform import transform as transform_source
    from authmigrate.transform_task import _keys

    frame = read_frame(exported["path"])
    known = {dep: _keys(cfg, dep, upstream.get(dep)) for dep in SESSIONS_SOURCE.depends_on}
    result = transform_source(SOURCE, frame, known)
    out = collection_dir(cfg, SOURCE, "transform")
    table = SESSIONS_SOURCE.table
    tables = {table: str(write_frame(result.tables[table], out / f"{table}.parquet"))}
    rejects = str(write_frame(result.rejects, out / "rejects.parquet"))
    log.info("transform sessions: %d keys → %d rows, %d rejected, %d expired while reading; by reason %s",
             result.counts["source_documents"], result.counts["rows"][table],
             result.counts["rejected_documents"], result.counts["expired_during_read"],
             result.counts["rejects_by_reason"])
    return {"path": str(out), "tables": tables, "rejects": rejects, "extras": {}, "counts": result.counts}
