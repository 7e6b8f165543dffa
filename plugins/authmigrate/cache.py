"""Cache invalidation: UNLINK the app's cached copies of the rows this run changed or deleted.

The keys come from the merge itself (authmigrate.changed_rows, filled in the load's
transaction), never from a scan of Redis. Patterns are configuration: the ``cache_keys``
param or AUTHMIGRATE_CACHE_KEYS, e.g. {"users": ["cache:user:{id}"]}; empty by default.
"""
from __future__ import annotations

import logging

from authmigrate.config import RunConfig
from authmigrate.db import connect, q

log = logging.getLogger("authmigrate")
UNLINK_BATCH = 500


def keys_to_invalidate(cfg: RunConfig) -> list[str]:
    keys: set[str] = set()
    with connect(cfg) as conn:
        for table, patterns in cfg.cache_keys.items():
            for (row_key,) in conn.execute(q("changed_keys"), {"run_id": cfg.run_id, "table": table}):
                for pattern in patterns:
                    try:
                        keys.add(pattern.format(**row_key))
                    except (KeyError, ValueError):
                        log.warning("cache key pattern %r does not fit a changed %s row; skipped", pattern, table)
    return sorted(keys)


def invalidate(cfg: RunConfig) -> dict:
    if not cfg.cache_keys:
        return {"patterns": 0, "keys": 0, "unlinked": 0}
    from authmigrate.lock import redis_client

    keys = keys_to_invalidate(cfg)
    client = redis_client(cfg)
    unlinked = 0
    for i in range(0, len(keys), UNLINK_BATCH):
        unlinked += client.unlink(*keys[i:i + UNLINK_BATCH])
    log.info("cache invalidation: %d keys from changed rows, %d were cached and are now unlinked",
             len(keys), unlinked)
    return {"patterns": sum(len(p) for p in cfg.cache_keys.values()), "keys": len(keys), "unlinked": unlinked}
