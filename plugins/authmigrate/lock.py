"""The migration lock: one run at a time writes a given target.

A Redis key ``authmigrate:lock:<target>`` set with ``SET NX PX`` to a value naming the holder
(run id, host, random token). Tasks renew it while they work; it is released with a
compare-and-delete, and expires by itself when a worker dies. A second run — of this or of
another Airflow installation sharing the app's Redis — refuses before writing, naming the holder.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Iterator

from authmigrate.config import RunConfig

log = logging.getLogger("authmigrate")

# Lua: renew / release only while the value still carries our token.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['token'] == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockHeld(RuntimeError):
    """Another run holds the target: the message names it."""


def ttl_ms() -> int:
    return int(float(os.environ.get("AUTHMIGRATE_LOCK_TTL_SECONDS", "600")) * 1000)


def redis_client(cfg: RunConfig):
    from airflow.providers.redis.hooks.redis import RedisHook

    return RedisHook(redis_conn_id=cfg.redis_conn_id).get_conn()


def lock_key(cfg: RunConfig) -> str:
    """Names the target: the PostgreSQL server, database and schema of the run."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(cfg.postgres_conn_id)
    return f"authmigrate:lock:{conn.host}:{conn.port or 5432}/{conn.schema}/{cfg.target_schema}"


def describe(value: bytes | str | None) -> str:
    if not value:
        return "nobody"
    try:
        h = json.loads(value)
    except ValueError:
        return repr(value)
    return f"run {h.get('run_id')} on host {h.get('host')} (since {h.get('acquired_at')})"


def acquire(client, key: str, run_id: str) -> str:
    """Take the lock for ``run_id`` and return its token. A retry of the same run takes over
    its own lock; any other holder makes this raise LockHeld."""
    token = secrets.token_hex(16)
    value = json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "token": token,
                        "acquired_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if client.set(key, value, nx=True, px=ttl_ms()):
        return token
    current = client.get(key)
    try:
        holder = json.loads(current) if current else None
    except ValueError:
        holder = None
    if holder and holder.get("run_id") == run_id:
        # our own run (a retried task): take it over atomically if it is still that holder
        with client.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) == current:
                    pipe.multi()
                    pipe.set(key, value, px=ttl_ms())
                    pipe.execute()
                    return token
            except Exception:  # noqa: BLE001 - WatchError: somebody changed it; report below
                pass
    pttl = client.pttl(key)
    raise LockHeld(
        f"the target is locked by {describe(client.get(key))}; lock key {key!r} expires in "
        f"{max(pttl, 0) / 1000:.0f}s unless renewed. Nothing was written. Wait for that run to finish "
        f"(or, if its worker is dead, for the lock to expire) and trigger again."
    )


def token_of(client, key: str, run_id: str) -> str | None:
    current = client.get(key)
    if not current:
        return None
    holder = json.loads(current)
    return holder["token"] if holder.get("run_id") == run_id else None


def renew(client, key: str, token: str) -> bool:
    return bool(client.eval(_RENEW, 1, key, token, ttl_ms()))


def release(client, key: str, token: str) -> bool:
    return bool(client.eval(_RELEASE, 1, key, token))


@contextlib.contextmanager
def held(cfg: RunConfig, acquired_at: float | None = None) -> Iterator:
    """Inside a task of a run that took the lock in ``prepare`` (at wall-clock ``acquired_at``):
    check that we still hold it, and keep renewing it in the background while the body runs.
    Yields a guard to call right before committing: it raises if the lock was lost meanwhile.
    A Redis outage is tolerated while the lock cannot have expired yet."""
    client = redis_client(cfg)
    key = lock_key(cfg)
    last_renewed = [time.monotonic()]
    try:
        token = token_of(client, key, cfg.run_id)
        if token is None and client.exists(key) == 0:
            token = acquire(client, key, cfg.run_id)  # expired while nobody else wanted it: take it again
        if token is None or not renew(client, key, token):
            raise LockHeld(f"this run no longer holds the lock {key!r} (now held by "
                           f"{describe(client.get(key))}); refusing to write")
    except LockHeld:
        raise
    except Exception as exc:  # noqa: BLE001 - redis ConnectionError/TimeoutError
        age = time.time() - acquired_at if acquired_at else float("inf")
        if age >= ttl_ms() / 1000:
            raise LockHeld(f"Redis is unreachable ({exc}) and this run's lock may have expired; "
                           f"refusing to write") from exc
        log.warning("Redis is unreachable (%s); the lock taken %.0fs ago is still valid, going on", exc, age)
        token = None
        last_renewed[0] = time.monotonic() - age
    stop = threading.Event()
    lost = threading.Event()

    def still_ours() -> bool:
        """Renew; a Redis outage shorter than the lock's TTL is tolerated (the lock cannot have
        expired yet), a lock taken over by another run is not."""
        try:
            if token is None:
                raise ConnectionError("the lock's token could not be read")
            if renew(client, key, token):
                last_renewed[0] = time.monotonic()
                return True
            return False
        except Exception as exc:  # noqa: BLE001 - redis ConnectionError/TimeoutError
            left = ttl_ms() / 1000 - (time.monotonic() - last_renewed[0])
            log.warning("could not renew the migration lock (%s); it stays valid for %.0fs more", exc, left)
            return left > 0

    def keep_alive():
        while not stop.wait(ttl_ms() / 3000):
            if not still_ours():
                lost.set()
                log.error("lost the migration lock %s", key)
                return

    def guard():
        if lost.is_set() or not still_ours():
            raise LockHeld(f"the migration lock {key!r} was lost while the task ran; not committing")

    thread = threading.Thread(target=keep_alive, name="authmigrate-lock", daemon=True)
    thread.start()
    try:
        yield guard
    finally:
        stop.set()
        thread.join(timeout=5)
    if lost.is_set():
        raise LockHeld(f"the migration lock {key!r} was lost while the task ran")


def release_for_run(cfg: RunConfig) -> bool:
    """Release this run's lock; if Redis cannot be reached, the lock expires by itself."""
    try:
        client = redis_client(cfg)
        key = lock_key(cfg)
        token = token_of(client, key, cfg.run_id)
        return release(client, key, token) if token else False
    except Exception:  # noqa: BLE001 - never mask the task's own outcome
        log.warning("could not release the migration lock; it expires in at most %.0fs", ttl_ms() / 1000,
                    exc_info=True)
        return False
