"""Seed Redis with realistic app keys: sessions for known users/apps, plus the app's other keys.

    python -m tools.seed_redis --db 5 --mongo mongodb://127.0.0.1:27017 --mongo-db idp
Never flushes DB 0; ``seed_sessions(..., flush=True)`` FLUSHDBs only a non-zero DB.
"""
from __future__ import annotations

import argparse
import json
import random
import sys

DAY = 86_400


def seed_sessions(client, users: list[str], apps: dict[str, int], *, n: int = 3000, seed: int = 42,
                  dirty: bool = True, flush: bool = False, now: int = 1_764_000_000) -> dict:
    """``apps`` maps app id → accessTokenValidity seconds. Returns the expected outcome."""
    if flush:
        if client.connection_pool.connection_kwargs.get("db", 0) == 0:
            raise ValueError("refusing to FLUSHDB Redis DB 0")
        client.flushdb()
    rng = random.Random(seed)
    app_ids = sorted(apps)
    pipe = client.pipeline(transaction=False)
    expected = {"valid": 0, "invalid_ip": 0, "rejects": {}}
    for i in range(n):
        user = rng.choice(users)
        kind = rng.choices(["psid", "osid", "orsid"], [5, 3, 2])[0] if app_ids else "psid"
        sid = f"{rng.getrandbits(64):016x}"
        key = f"{kind}:{user}:{sid}"
        created = now - rng.randint(0, 10 * DAY)
        if kind == "psid":
            ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" if i % 7 else "2001:db8::1"
            pipe.hset(key, mapping={"deviceType": rng.choice(["Chrome on macOS", "Firefox on Linux", "iOS app"]),
                                    "ipAddr": ip, "createdAt": str(created)})
            pipe.expire(key, 14 * DAY)
        else:
            app = rng.choice(app_ids)
            fields = {"oauthClientAppId": app, "createdAt": str(created)}
            if kind == "orsid":
                fields["scope"] = "openid profile email"
            pipe.hset(key, mapping=fields)
            pipe.expire(key, apps[app] if kind == "osid" else 20 * DAY)
        expected["valid"] += 1
    if dirty:
        bad = {
            "invalid_ip": [("psid:%s:badip1" % users[0], {"deviceType": "x", "ipAddr": "999.1.1.1", "createdAt": str(now)}),
                           ("psid:%s:badip2" % users[0], {"deviceType": "x", "ipAddr": "not-an-ip", "createdAt": str(now)})],
            "unknown_user": [("psid:999999999999:ghost", {"deviceType": "x", "ipAddr": "10.0.0.1", "createdAt": str(now)})],
            "unknown_app": [(f"osid:{users[0]}:noapp", {"oauthClientAppId": "no-such-app", "createdAt": str(now)})],
            "malformed_hash": [(f"psid:{users[0]}:emptyish", {"somethingElse": "1"}),
                               (f"osid:{users[0]}:noappfield", {"createdAt": str(now)}),
                               (f"psid:{users[0]}:baddate", {"deviceType": "x", "createdAt": "yesterday"})],
            "malformed_key": [("psid:onlyoneid", {"deviceType": "x", "createdAt": str(now)})],
        }
        for code, items in bad.items():
            for key, mapping in items:
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, DAY)
            if code == "invalid_ip":
                expected["valid"] += len(items)
                expected["invalid_ip"] += len(items)
            else:
                expected["rejects"][code] = len(items)
        pipe.set(f"psid:{users[0]}:wrongtype", "not a hash", ex=DAY)
        expected["rejects"]["wrong_type"] = 1
    # the app's other keys, which the pipeline must never touch
    for i in range(50):
        pipe.set(f"r:login:10.0.{i}.1", str(rng.randint(1, 9)), ex=60 + i)
    pipe.hset(f"pmfa:{users[0]}:abc", mapping={"code": "123456"})
    pipe.expire(f"pmfa:{users[0]}:abc", 300)
    pipe.set("pev:token123", users[0], ex=3600)
    pipe.set("ppr:token456", users[0], ex=3600)
    pipe.set("ac:code789", json.dumps({"user": users[0]}), ex=600)
    pipe.set("webauthn:challenge", "xyz", ex=300)
    pipe.set("settings:global", json.dumps({"signup": True}))
    pipe.rpush("admin:audit", "login alice", "ban bob")
    pipe.execute()
    expected["rejected"] = sum(expected["rejects"].values())
    expected["total"] = expected["valid"] + expected["rejected"]
    return expected


def main() -> int:
    import pymongo
    import redis

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--db", type=int, required=True)
    parser.add_argument("--mongo", required=True, help="MongoDB URI to read user and app ids from")
    parser.add_argument("--mongo-db", default="idp")
    parser.add_argument("--sessions", type=int, default=3000)
    args = parser.parse_args()
    with pymongo.MongoClient(args.mongo) as mongo:
        db = mongo[args.mongo_db]
        users = sorted({u for u in db.users.distinct("userId") if isinstance(u, str) and u})
        apps = {a["oauthClientAppId"]: int(a.get("accessTokenValidity") or 3600)
                for a in db.oauthClientApps.find({}, {"oauthClientAppId": 1, "accessTokenValidity": 1})
                if isinstance(a.get("oauthClientAppId"), str) and isinstance(a.get("accessTokenValidity", 0), int)}
    if not users:
        print("no users in MongoDB: seed it first", file=sys.stderr)
        return 1
    client = redis.Redis(host=args.host, port=args.port, db=args.db)
    print(json.dumps(seed_sessions(client, users, apps, n=args.sessions, flush=args.db != 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
