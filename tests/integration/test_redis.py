"""Redis: session metadata into `sessions`, the migration lock, cache invalidation, cutover."""
from __future__ import annotations

import json
import time

import pytest

from tests.data import documents
from tools.seed_redis import seed_sessions

pytestmark = pytest.mark.integration

USERS = ["000000000001", "000000000002", "000000000003", "000000000004", "000000000010"]
APPS = {"100001": 3600, "3f0c1c5e-8d1e-4c7b-9a53-2f9a3c4b5d6e": 7200}


def redis_snapshot(client) -> dict:
    """Every key with its type, value and remaining TTL (ms)."""
    out = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value = {"hash": client.hgetall, "string": client.get, "list": lambda k: client.lrange(k, 0, -1)}[kind](key)
        out[key] = (kind, value, client.pttl(key))
    return out


@pytest.fixture
def seeded(migration):
    migration.seed(documents())
    expected = seed_sessions(migration.redis, USERS, APPS, n=3000, flush=True)
    yield migration, expected
    migration.redis.flushdb()


def test_sessions_are_synced_and_redis_is_left_untouched(seeded):
    migration, expected = seeded
    before = redis_snapshot(migration.redis)
    dr = migration.run(sessions=True)
    after = redis_snapshot(migration.redis)
    # the pipeline's own keys: the lock is gone again, only the target's epoch counter stays
    own = {k for k in after if k.startswith(b"authmigrate:")}
    assert len(own) == 1 and next(iter(own)).endswith(b":epoch") and not any(k.startswith(b"authmigrate:") for k in before)
    after = {k: v for k, v in after.items() if k not in own}
    assert set(after) == set(before), "the run added or removed Redis keys"
    for key, (kind, value, pttl) in before.items():
        assert after[key][:2] == (kind, value), key
        assert (after[key][2] == -1) == (pttl == -1) and after[key][2] <= pttl, f"TTL of {key} changed"

    assert migration.last_states["sessions.load"] == "success"
    assert migration.sql("SELECT count(*) FROM sessions")[0][0] == expected["valid"]
    kinds = dict(migration.sql("SELECT kind, count(*) FROM sessions GROUP BY kind"))
    assert set(kinds) == {"login", "oauth_access", "oauth_refresh"}
    rejects = dict(((r[0], r[1]), r[2]) for r in migration.sql(
        "SELECT reason_code, scope, count(*) FROM authmigrate.rejects WHERE run_id = %s AND collection = 'sessions' "
        "GROUP BY 1, 2", (dr.run_id,)))
    assert rejects == {**{(code, "document"): n for code, n in expected["rejects"].items()},
                       ("invalid_ip", "field"): expected["invalid_ip"]}
    assert migration.sql("SELECT count(*) FROM sessions WHERE ip_address IS NULL AND kind = 'login'")[0][0] == \
        expected["invalid_ip"]
    # expiry comes from the TTL at read time; OAuth access sessions follow the app's token validity
    # (compared with each key's absolute expiry in Redis: how long the run took does not matter)
    from authmigrate.collections.sessions import session_id

    deadlines = {session_id(k.decode()): migration.redis.pexpiretime(k) / 1000 for k, v in before.items()
                 if k.startswith(b"osid:") and v[0] == "hash" and v[1].get(b"oauthClientAppId") == b"100001"}
    rows = migration.sql("SELECT id, extract(epoch FROM expires_at)::float8 FROM sessions "
                         "WHERE oauth_client_app_id = '100001' AND kind = 'oauth_access'")
    assert rows and all(abs(expires - deadlines[sid]) < 5 for sid, expires in rows), rows[:3]
    assert migration.sql("SELECT count(*) FROM sessions WHERE ip_address = '2001:db8::1'")[0][0] > 0

    # a session key that disappeared from Redis is gone from the table on the next run
    gone = next(k for k in before if k.startswith(b"psid:000000000001:") and before[k][0] == "hash"
                and b"badip" not in k)

    assert migration.sql("SELECT count(*) FROM sessions WHERE id = %s", (session_id(gone.decode()),))[0][0] == 1
    # the raw session ids (possibly bearer tokens) never reach PostgreSQL
    raw_sids = [k.decode().split(":", 2)[2] for k in before if k.startswith((b"psid:", b"osid:", b"orsid:"))
                and k.count(b":") == 2]
    stored = "\n".join(r[0] for r in migration.sql(
        "SELECT id FROM sessions UNION ALL SELECT source_id || coalesce(document::text, '') "
        "FROM authmigrate.rejects WHERE collection = 'sessions'"))
    assert not [sid for sid in raw_sids if len(sid) >= 8 and sid in stored]
    migration.redis.delete(gone)
    migration.run(sessions=True)
    assert migration.sql("SELECT count(*) FROM sessions WHERE id = %s", (session_id(gone.decode()),))[0][0] == 0
    assert migration.sql("SELECT count(*) FROM sessions")[0][0] == expected["valid"] - 1


def test_read_batch_handles_keys_that_expired_or_have_the_wrong_type(seeded):
    from authmigrate.collections.sessions import _read_batch

    migration, _ = seeded
    migration.redis.set("psid:000000000001:str", "x")
    rows = _read_batch(migration.redis, [b"psid:000000000001:vanished", b"psid:000000000001:str"])
    assert [(r[0], r[1]) for r in rows] == [("psid:000000000001:vanished", "expired"),
                                           ("psid:000000000001:str", "wrong_type")]


def _wait_gone(client, key) -> None:
    deadline = time.monotonic() + 30
    while client.exists(key):
        assert time.monotonic() < deadline, f"{key} is still there"
        time.sleep(0.01)


def test_lock_refuses_a_live_run_at_once_and_goes_through_once_it_expires(migration):
    from authmigrate import lock
    from authmigrate.config import RunConfig

    migration.seed(documents())
    cfg = RunConfig.from_params({"target_schema": migration.schema}, "other-installation-run")
    key = lock.lock_key(cfg)
    # another installation's run holds the lock, with a TTL longer than any wait: refused at once
    migration.redis.set(key, json.dumps({"run_id": "other-installation-run", "host": "worker-7", "token": "t"}),
                        px=3_600_000)
    dr = migration.run(expect="failed")
    assert migration.last_states["prepare"] == "failed"
    assert {ti.task_id: ti.try_number for ti in dr.get_task_instances()}["prepare"] == 1, "a refusal is not retried"
    assert all(s in ("upstream_failed", "skipped", "success") for t, s in migration.last_states.items()
               if t != "prepare")
    assert migration.sql("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s",
                         (migration.schema,)) == [(0,)], "nothing may be written while another run holds the lock"
    assert migration.redis.get(key) is not None, "the refused run must not touch the holder's lock"

    # its lock expires (driven here, not waited for): the next run goes through and releases its own
    migration.redis.pexpire(key, 1)
    _wait_gone(migration.redis, key)
    refused = dr.run_id
    migration.run()
    assert migration.redis.exists(key) == 0, "the lock is released at the end of the run"
    assert migration.sql("SELECT count(*) FROM users")[0][0] == 6
    assert migration.sql("SELECT count(*) FROM authmigrate.runs WHERE run_id = %s", (refused,)) == [(0,)], \
        "the refused run left no trace in authmigrate.runs"
    # a dead run's lock is waited out: test_acquire_waits_out_…, and end to end in test_faults'
    # test_migrate_sigkilled_mid_load_then_an_immediate_rerun_converges


def test_lock_message_names_the_holder(migration):
    from authmigrate import lock

    migration.redis.set("k-test", json.dumps({"run_id": "r1", "host": "h1", "token": "t1"}), px=5000)
    with pytest.raises(lock.LockBusy, match="run r1 on host h1"):
        lock.acquire(migration.redis, "k-test", "r2")
    token = lock.acquire(migration.redis, "k-test", "r1")  # a retry of the holder's own run takes over
    assert lock.release(migration.redis, "k-test", "wrong-token") is False
    assert lock.release(migration.redis, "k-test", token) is True
    assert migration.redis.exists("k-test") == 0


def test_acquire_waits_out_a_lock_nobody_renews_and_refuses_a_renewed_one(migration, monkeypatch):
    import threading

    from authmigrate import lock

    monkeypatch.setenv("AUTHMIGRATE_LOCK_TTL_SECONDS", "20")
    r, prefix = migration.redis, f"k-test-{migration.name}"
    # a dead holder: its lock is not renewed, so it runs out and is taken
    r.set(f"{prefix}-dead", json.dumps({"run_id": "dead", "host": "h", "token": "t"}), px=1500)
    token = lock.acquire_waiting(r, f"{prefix}-dead", "mine")
    holder = json.loads(r.get(f"{prefix}-dead"))
    assert (holder["run_id"], holder["token"]) == ("mine", token)

    # a live holder renews while we watch: refused, naming it, and its lock is left alone
    r.set(f"{prefix}-live", json.dumps({"run_id": "live", "host": "h2", "token": "t"}), px=15_000)
    stop = threading.Event()

    def renew_like_a_live_run():
        while not stop.wait(0.05):
            r.pexpire(f"{prefix}-live", 15_000)

    thread = threading.Thread(target=renew_like_a_live_run, daemon=True)
    thread.start()
    try:
        with pytest.raises(lock.LockBusy, match="run live on host h2, which is alive"):
            lock.acquire_waiting(r, f"{prefix}-live", "mine")
    finally:
        stop.set()
        thread.join()
    assert json.loads(r.get(f"{prefix}-live"))["run_id"] == "live"

    # a lock that never expires cannot be waited out: refused at once
    r.set(f"{prefix}-forever", json.dumps({"run_id": "manual", "host": "h3", "token": "t"}))
    with pytest.raises(lock.LockBusy, match="never expires"):
        lock.acquire_waiting(r, f"{prefix}-forever", "mine")
    r.delete(f"{prefix}-dead", f"{prefix}-live", f"{prefix}-forever")


def test_a_run_that_lost_its_lock_never_writes_and_takes_it_back_only_if_nobody_held_it_since(migration):
    from authmigrate import lock
    from authmigrate.config import RunConfig

    a, b = (RunConfig.from_params({"target_schema": migration.schema}, run) for run in ("run-a", "run-b"))
    key, r = lock.lock_key(a), migration.redis
    r.delete(key, lock.epoch_key(key))
    lock.acquire(r, key, "run-a")
    epoch_a = lock.epoch_of(r, key)

    # a's lock ran out (a long retry backoff) and nobody wanted the target: a takes it back
    r.pexpire(key, 1)
    _wait_gone(r, key)
    with lock.held(a, epoch=epoch_a) as guard:
        guard()
    assert json.loads(r.get(key))["run_id"] == "run-a" and lock.epoch_of(r, key) == epoch_a
    # two of a's tasks at once find it run out: the second one shares what the first took back
    r.pexpire(key, 1)
    _wait_gone(r, key)
    first = lock.reacquire(r, key, "run-a", epoch_a)
    assert lock.reacquire(r, key, "run-a", epoch_a) == first

    # while a's task runs, its lock is taken from it: the guard before the commit refuses
    with pytest.raises(lock.LockHeld, match="lost while the task ran; not committing"):
        with lock.held(a, epoch=epoch_a) as guard:
            r.delete(key)
            lock.acquire(r, key, "run-b")
            guard()
    assert lock.epoch_of(r, key) == epoch_a + 1

    # b holds the target: a refuses to write, for good (not a retry)
    with pytest.raises(lock.LockBusy, match="now locked by run run-b"):
        with lock.held(a, epoch=epoch_a):
            pass
    # b finished: the lock is free, but b may have written newer data: a still refuses
    lock.release(r, key, lock.token_of(r, key, "run-b"))
    with pytest.raises(lock.LockBusy, match="another run took the target after this run's prepare"):
        with lock.held(a, epoch=epoch_a):
            pass
    assert r.exists(key) == 0, "a refusing run takes nothing"
    del b


def test_unlock_removes_only_the_named_holders_lock_and_says_what_it_removed(migration, capsys):
    from authmigrate.lock import KEY_PREFIX, main

    r, suffix = migration.redis, migration.name
    mine, other = f"{KEY_PREFIX}h:5432/db/{suffix}_a", f"{KEY_PREFIX}h:5432/db/{suffix}_b"
    r.set(mine, json.dumps({"run_id": f"dead-{suffix}", "host": "w1", "token": f"tok-{suffix}"}), px=60_000)
    r.set(other, json.dumps({"run_id": f"live-{suffix}", "host": "w2", "token": "x"}), px=60_000)
    r.set(f"{mine}:epoch", 7)  # the target's epoch counter: never a lock, never removed

    def unlock(ident) -> tuple[int, str]:
        """What `python -m authmigrate.lock unlock IDENT` exits with and prints."""
        capsys.readouterr()
        code = main(["unlock", ident])
        return code, capsys.readouterr().out

    code, out = unlock(f"tok-{suffix}")  # by token
    assert code == 0, out
    assert f"removed {mine}: held by run dead-{suffix} on host w1" in out
    assert not r.exists(mine) and r.exists(other)
    code, out = unlock(f"dead-{suffix}")  # already gone: says so, names what is there, removes nothing
    assert code == 1 and f"no migration lock is held by 'dead-{suffix}'" in out
    assert other in out and r.exists(other)
    assert unlock(f"live-{suffix}")[0] == 0 and not r.exists(other)  # by run id
    assert r.get(f"{mine}:epoch") == b"7"
    r.delete(f"{mine}:epoch")


def test_cache_invalidation_deletes_exactly_the_changed_rows_keys(migration):
    migration.seed(documents())
    patterns = {"users": ["cache:user:{id}"], "oauth_client_apps": ["cache:oauth_app:{client_id}"]}
    migration.redis.flushdb()
    migration.run(cache_keys=patterns)
    assert migration.last_states["invalidate_cache"] == "success"

    users = [r[0] for r in migration.sql("SELECT id FROM users ORDER BY id")]
    apps = {r[0]: r[1] for r in migration.sql("SELECT id, client_id FROM oauth_client_apps")}
    for u in users:
        migration.redis.set(f"cache:user:{u}", "cached")
    for client_id in apps.values():
        migration.redis.set(f"cache:oauth_app:{client_id}", "cached")
    migration.redis.set("cache:other:thing", "cached")

    alice = migration.db.users.find_one({"userId": "000000000001"})
    alice["firstName"] = "Alicia"
    migration.db.users.replace_one({"_id": alice["_id"]}, alice)
    migration.db.oauthClientApps.delete_one({"oauthClientAppId": "100005"})
    migration.run(cache_keys=patterns)

    remaining = {k.decode() for k in migration.redis.scan_iter(match="cache:*")}
    expected_gone = {"cache:user:000000000001", f"cache:oauth_app:{apps['100005']}"}
    assert remaining == ({f"cache:user:{u}" for u in users} | {f"cache:oauth_app:{c}" for c in apps.values()}
                         | {"cache:other:thing"}) - expected_gone
    migration.redis.flushdb()


def test_cutover_flips_only_after_a_passing_validation(migration):
    migration.seed(documents())
    migration.redis.flushdb()
    migration.redis.set("authmigrate:datastore", "mongo")
    migration.run(expect="failed", cutover=True, max_reject_ratio=0.01)
    assert migration.last_states["cutover"] == "upstream_failed"
    assert migration.redis.get("authmigrate:datastore") == b"mongo"

    dr = migration.run(cutover=True)
    assert migration.last_states["cutover"] == "success"
    assert migration.redis.get("authmigrate:datastore") == b"postgres"
    meta = json.loads(migration.redis.get("authmigrate:datastore:meta"))
    assert meta["run_id"] == dr.run_id and meta["datastore"] == "postgres"

    # after cutover the app writes to PostgreSQL: a new migration run refuses before writing
    before = migration.snapshot()
    migration.run(expect="failed")
    assert migration.last_states["prepare"] == "failed"
    assert migration.snapshot() == before

    migration.redis.set("authmigrate:datastore", "mongo")  # the documented rollback
    migration.run(cutover=False)
    assert migration.last_states["cutover"] == "skipped"
    assert migration.redis.get("authmigrate:datastore") == b"mongo"
    migration.redis.flushdb()


def test_a_redis_outage_fails_and_retries_only_the_sessions_branch(migration, monkeypatch):
    """A private redis-server process, killed right after `prepare` took the lock."""
    import subprocess

    import redis as redis_lib

    from tools.mongo_server import free_port

    port = free_port()

    def start_redis():
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL)
        client = redis_lib.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                return proc, client
            except redis_lib.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    proc, client = start_redis()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_REDIS_DEFAULT", f"redis://127.0.0.1:{port}?db=0")
        # the loads go on while the lock cannot have expired (an outage shorter than its TTL): a TTL
        # longer than any run here, so the outcome does not depend on how fast the machine is
        monkeypatch.setenv("AUTHMIGRATE_LOCK_TTL_SECONDS", "600")
        seed_sessions(client, USERS, APPS, n=50, dirty=False)
        migration.seed(documents())
        import authmigrate.load as load_module

        real_prepare = load_module.prepare

        def prepare_then_outage(*args, **kwargs):
            result = real_prepare(*args, **kwargs)
            proc.kill()
            proc.wait()
            return result

        monkeypatch.setattr(load_module, "prepare", prepare_then_outage)
        dr = migration.run(expect="failed", sessions=True)
        states = migration.last_states
        assert states["sessions.export"] == "failed"
        tries = {ti.task_id: ti.try_number for ti in dr.get_task_instances()}
        assert tries["sessions.export"] == 2, "the branch was retried"
        assert states["sessions.transform"] == states["sessions.load"] == "upstream_failed"
        assert all(states[f"{c}.{s}"] == "success" for c in ("users", "oauthClientApps", "oauthRoles")
                   for s in ("export", "transform", "load")), sorted(states.items())
        assert migration.counts()["users"] == 6, "the collection branches loaded despite the outage"

        monkeypatch.setattr(load_module, "prepare", real_prepare)
        proc, client = start_redis()
        seed_sessions(client, USERS, APPS, n=50, dirty=False)
        migration.run(sessions=True)
        assert migration.counts()["sessions"] == 50
    finally:
        proc.kill()
        proc.wait()
