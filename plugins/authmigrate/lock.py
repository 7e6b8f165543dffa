"""The migration lock: one run at a time writes a given target.

A Redis key ``authmigrate:lock:<target>`` set with ``SET NX PX`` to a value naming the holder
(run id, host, pid, random token), with a short TTL (``AUTHMIGRATE_LOCK_TTL_SECONDS``, default
60). Every task of the holding run renews it in the background every third of the TTL; it is
released with a compare-and-delete. A holder that dies (SIGKILL, OOM killer, a lost worker, in
any executor) stops renewing, so its lock is gone within one TTL; ``prepare`` of the next run
watches a lock it finds: one that is not renewed it waits out (at most a TTL) and takes, one
that is renewed belongs to a live run and is refused at once, naming the holder. A second run —
of this or of another Airflow installation sharing the app's Redis — never writes meanwhile,
and a run that lost its lock never commits. ``python -m authmigrate.lock unlock <token|run id>``
(``make unlock LOCK=…``) is the operator's deliberate override.
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

from authmigrate.config import Permanent, RunConfig

log = logging.getLogger("authmigrate")
KEY_PREFIX = "authmigrate:lock:"

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
# Lua: a new holder. The target's epoch (a counter beside the lock, never expiring) goes up by
# one with every run that takes the lock: a run may later take back its own expired lock only
# while the epoch is still its own, i.e. no other run has held the target since (fencing).
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local epoch = redis.call('INCR', KEYS[2])
local v = cjson.decode(ARGV[1])
v['epoch'] = epoch
redis.call('SET', KEYS[1], cjson.encode(v), 'PX', ARGV[2])
return epoch
"""
_REACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if tostring(redis.call('GET', KEYS[2])) ~= ARGV[3] then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# Lua: the operator's override deletes the key only if it still holds exactly the value shown.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockHeld(RuntimeError):
    """This run does not hold the target's lock (lost it, or cannot check): the message names
    the holder. A retry may help (the lock may be free again)."""


class LockBusy(LockHeld, Permanent):
    """Another run holds the target and is alive (or its lock outlives our wait): fail at once."""

    what_to_do = ("wait for that run to finish and trigger again; if you know its worker is dead, remove "
                  "its lock with: make unlock LOCK=<its run id>  (own Airflow: python -m authmigrate.lock "
                  "unlock <run id>)")


def ttl_ms() -> int:
    return int(float(os.environ.get("AUTHMIGRATE_LOCK_TTL_SECONDS", "60")) * 1000)


def redis_client(cfg: RunConfig):
    """The app's Redis (the lock, the session scan, cache invalidation, the cutover switch). One quick retry of a failed command
    instead of redis-py's default ten with backoff (3.5 s per call on a dead server): a renewal
    that fails is tried again at the next beat, and a task that needs Redis has Airflow's retries."""
    from airflow.providers.redis.hooks.redis import RedisHook
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    client = RedisHook(redis_conn_id=cfg.redis_conn_id).get_conn()
    client.set_retry(Retry(ExponentialBackoff(cap=0.5, base=0.05), 1))
    return client


def lock_key(cfg: RunConfig) -> str:
    """Names the target: the PostgreSQL server, database and schema of the run."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(cfg.postgres_conn_id)
    return f"{KEY_PREFIX}{conn.host}:{conn.port or 5432}/{conn.schema}/{cfg.target_schema}"


def describe(value: bytes | str | None) -> str:
    if not value:
        return "nobody"
    try:
        h = json.loads(value)
    except ValueError:
        return repr(value)
    since = f" (since {h['acquired_at']})" if h.get("acquired_at") else ""
    return f"run {h.get('run_id')} on host {h.get('host')}{since}"


def _holder_value(run_id: str, token: str, epoch: int | None = None) -> str:
    value = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "token": token,
             "acquired_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return json.dumps(value if epoch is None else {**value, "epoch": epoch})


def epoch_key(key: str) -> str:
    return f"{key}:epoch"


def epoch_of(client, key: str) -> int | None:
    """The epoch recorded in the lock's value (which run of the target's history holds it)."""
    value = client.get(key)
    return json.loads(value).get("epoch") if value else None


def acquire(client, key: str, run_id: str) -> str:
    """Take the lock for ``run_id`` and return its token; the target's epoch goes up by one. A
    retry of the same run takes over its own lock (same epoch); any other holder makes this
    raise LockBusy."""
    token = secrets.token_hex(16)
    if client.eval(_ACQUIRE, 2, key, epoch_key(key), _holder_value(run_id, token), ttl_ms()):
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
                    pipe.set(key, _holder_value(run_id, token, holder.get("epoch")), px=ttl_ms())
                    pipe.execute()
                    return token
            except Exception:  # noqa: BLE001 - WatchError: somebody changed it; report below
                pass
    pttl = client.pttl(key)
    raise LockBusy(
        f"the target is locked by {describe(client.get(key))}; lock key {key!r} expires in "
        f"{max(pttl, 0) / 1000:.0f}s unless renewed. Nothing was written."
    )


def acquire_waiting(client, key: str, run_id: str, max_wait: float | None = None, poll: float = 0.25) -> str:
    """``acquire``, but a lock whose holder has stopped renewing it (a dead run) is waited out
    and taken: at most ``max_wait`` seconds (default: one TTL and 5 s). A lock that is renewed
    while we watch belongs to a live run, and one that would outlive the wait (no expiry, or a
    longer TTL than ours) cannot be waited out: both raise LockBusy at once."""
    max_wait = ttl_ms() / 1000 + 5 if max_wait is None else max_wait
    deadline = time.monotonic() + max_wait
    seen: tuple[bytes, int, float] | None = None  # value, PTTL, monotonic time right after reading it
    while True:
        try:
            return acquire(client, key, run_id)
        except LockBusy as exc:
            refused = exc
        before = time.monotonic()
        value, pttl = client.get(key), client.pttl(key)
        after = time.monotonic()
        if value is None or pttl == -2:
            continue  # expired between the two calls: try again
        holder = describe(value)
        if pttl == -1 or pttl > max_wait * 1000:
            why = "never expires" if pttl == -1 else f"outlives this run's wait of {max_wait:.0f}s"
            raise LockBusy(f"{refused} It {why} (set by hand, or by a run with a longer "
                           f"AUTHMIGRATE_LOCK_TTL_SECONDS).")
        # renewed: the TTL is longer than the last reading less the least time that can have passed
        if seen is not None and (value != seen[0] or pttl > seen[1] - (before - seen[2]) * 1000 + 50):
            raise LockBusy(f"the target is locked by {holder}, which is alive: it renewed the lock while this "
                           f"run waited. Nothing was written.")
        if time.monotonic() > deadline:
            raise LockBusy(f"{refused} It was not released within {max_wait:.0f}s.")
        if seen is None:
            log.warning("the target is locked by %s, expiring in %.1fs; waiting (up to %.0fs): a dead run's lock "
                        "is not renewed and will expire, a live run's is renewed and is refused",
                        holder, pttl / 1000, max_wait)
        seen = (value, pttl, after)
        time.sleep(min(poll, pttl / 1000 + 0.01))


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


def reacquire(client, key: str, run_id: str, epoch: int) -> str:
    """Take back this run's lock after it ran out (a long pause between two of its tasks, e.g. a
    retry's backoff) — only while no other run has taken the target since (the epoch is still
    ours). Otherwise the run must not write: another run may have written newer data."""
    token = secrets.token_hex(16)
    taken = client.eval(_REACQUIRE, 2, key, epoch_key(key), _holder_value(run_id, token, epoch), ttl_ms(), epoch)
    if taken == 1:
        log.warning("the migration lock %s had run out; taken back (no other run held the target since)", key)
        return token
    if taken == -1:
        raise LockBusy(f"another run took the target after this run's prepare (epoch {client.get(epoch_key(key))!r}, "
                       f"this run's {epoch}): its data may be newer than this run's, so this run does not write. "
                       f"Trigger a new run.")
    ours = token_of(client, key, run_id)  # another task of this run took it back first
    if ours is not None:
        return ours
    raise LockBusy(f"the target is now locked by {describe(client.get(key))}: this run lost its lock "
                   f"and does not write. Trigger a new run once that one is done.")


@contextlib.contextmanager
def held(cfg: RunConfig, acquired_at: float | None = None, epoch: int | None = None) -> Iterator:
    """Inside a task of a run that took the lock in ``prepare`` (at wall-clock ``acquired_at``,
    as the target's ``epoch``-th holder): check that we still hold it (or take it back while no
    other run held it since), and keep renewing it in the background while the body runs.
    Yields a guard to call right before committing: it raises if the lock was lost meanwhile.
    A Redis outage is tolerated while the lock cannot have expired yet."""
    client = redis_client(cfg)
    key = lock_key(cfg)
    last_renewed = [time.monotonic()]
    try:
        token = token_of(client, key, cfg.run_id)
        if token is None:
            # no epoch: prepare did not take the lock (marked success by hand): take it now, as a new holder
            token = acquire(client, key, cfg.run_id) if epoch is None else reacquire(client, key, cfg.run_id, epoch)
        if not renew(client, key, token):
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

    def guard():
        if lost.is_set() or not still_ours():
            raise LockHeld(f"the migration lock {key!r} was lost while the task ran; not committing")

    with _renewing(still_ours, key) as lost:
        yield guard
    if lost.is_set():
        raise LockHeld(f"the migration lock {key!r} was lost while the task ran")


@contextlib.contextmanager
def _renewing(renew_once, key: str) -> Iterator[threading.Event]:
    """Call ``renew_once`` every third of the TTL in a background thread until the block ends;
    the yielded event is set (and renewing stops) once it returns False."""
    stop, lost = threading.Event(), threading.Event()

    def loop():
        while not stop.wait(ttl_ms() / 3000):
            if not renew_once():
                lost.set()
                log.error("lost the migration lock %s", key)
                return

    thread = threading.Thread(target=loop, name="authmigrate-lock", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=5)


@contextlib.contextmanager
def heartbeat(cfg: RunConfig) -> Iterator[None]:
    """Every task of a run that holds the lock keeps it alive while it runs, so the short TTL
    only ever runs out for a run that died. Never fails the task: a task that writes the target
    checks the lock itself (``held``)."""
    try:
        client, key = redis_client(cfg), lock_key(cfg)
    except Exception as exc:  # noqa: BLE001 - no connection: the writing tasks decide
        log.warning("could not reach the migration lock (%s); this task does not renew it", exc)
        yield
        return
    token: list[str | None] = [None]

    def renew_once() -> bool:
        """Renew while this run holds the lock; until it does (a task that started before
        ``prepare`` took it), look again at every beat. Never takes the lock itself."""
        try:
            token[0] = token[0] or token_of(client, key, cfg.run_id)
            if token[0] is not None and not renew(client, key, token[0]):
                token[0] = None  # lost (or taken back under another token): look again
        except Exception as exc:  # noqa: BLE001 - a Redis blip: try again at the next beat
            log.warning("could not renew the migration lock (%s); trying again", exc)
        return True

    renew_once()

    with _renewing(renew_once, key):
        yield


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


def unlock(client, ident: str) -> list[tuple[str, str]]:
    """The operator's override: remove every migration lock whose holder has this token or run
    id, each only if it still holds the value read (compare-and-delete). Returns (key, holder)."""
    removed = []
    for key, value in locks(client).items():
        holder = json.loads(value)
        if ident in (holder.get("token"), holder.get("run_id")) and client.eval(_DELETE_IF, 1, key, value):
            removed.append((key, describe(value)))
    return removed


def locks(client) -> dict[str, bytes]:
    """Every migration lock in this Redis (key -> value); the targets' epoch counters left out."""
    out = {}
    for key in client.scan_iter(match=KEY_PREFIX + "*", count=1000):
        key = key.decode() if isinstance(key, bytes) else key
        value = None if key.endswith(":epoch") else client.get(key)
        try:
            if value and isinstance(json.loads(value), dict):
                out[key] = value
        except ValueError:
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m authmigrate.lock",
                                     description="Remove a migration lock by its holder's token or run id.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("unlock", help="remove the lock held by this token or run id, and only that one")
    cmd.add_argument("ident", help="the holder's token or run id (the refusal message and `list` name them)")
    cmd.add_argument("--redis-conn-id", default="redis_default", help="Airflow connection of the app's Redis")
    listing = sub.add_parser("list", help="show every migration lock and its holder")
    listing.add_argument("--redis-conn-id", default="redis_default")
    args = parser.parse_args(argv)
    from airflow.providers.redis.hooks.redis import RedisHook

    client = RedisHook(redis_conn_id=args.redis_conn_id).get_conn()
    present = locks(client)
    if args.command == "list":
        for key, value in sorted(present.items()):
            print(f"{key}: {describe(value)}, token {json.loads(value).get('token')}, "
                  f"expires in {max(client.pttl(key), 0) / 1000:.0f}s")
        print(f"{len(present)} migration lock(s)")
        return 0
    removed = unlock(client, args.ident)
    for key, holder in removed:
        print(f"removed {key}: held by {holder}")
    if not removed:
        print(f"no migration lock is held by {args.ident!r}; locks present: "
              + (", ".join(f"{k} ({describe(v)})" for k, v in sorted(present.items())) or "none"))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
