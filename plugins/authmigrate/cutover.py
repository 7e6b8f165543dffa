"""The cutover switch: tell the app to read from PostgreSQL, only after a passing validation.

Sets ``AUTHMIGRATE_CUTOVER_KEY`` (default ``authmigrate:datastore``) to ``postgres`` and
``<key>:meta`` to the run id and time. Rollback, one line:
    redis-cli SET authmigrate:datastore mongo
"""
from __future__ import annotations

import json
import logging
import os
import time

from authmigrate.config import Permanent, RunConfig

log = logging.getLogger("authmigrate")


class CutoverRefused(Permanent, RuntimeError):
    """The datastore switch is not flipped (or a migration after cutover is refused)."""

    what_to_do = "read the reason above; nothing was switched or written"


def cutover_key() -> str:
    return os.environ.get("AUTHMIGRATE_CUTOVER_KEY", "authmigrate:datastore")


def refuse_after_cutover(client) -> None:
    """Once the app reads PostgreSQL, a migration run would overwrite the app's own writes."""
    key = cutover_key()
    value = client.get(key)
    if value in (b"postgres", "postgres"):
        meta = client.get(f"{key}:meta")
        raise CutoverRefused(
            f"the app already reads PostgreSQL ({key} = postgres; {meta.decode() if isinstance(meta, bytes) else meta}). "
            f"A migration now would overwrite the app's writes. To migrate again, roll back first: "
            f"redis-cli SET {key} mongo")


def switch(cfg: RunConfig, validation: dict | None) -> dict:
    if not validation or not validation.get("passed"):
        raise CutoverRefused("validation did not pass: the datastore switch stays as it is")
    ratio = validation.get("reject_ratio", 1.0)
    if ratio > cfg.max_reject_ratio:
        raise CutoverRefused(f"reject ratio {ratio:.2%} is over max_reject_ratio {cfg.max_reject_ratio:.2%}")
    from authmigrate.lock import redis_client

    key = cutover_key()
    meta = {"datastore": "postgres", "run_id": cfg.run_id, "target_schema": cfg.target_schema,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    client = redis_client(cfg)
    previous = client.get(key)
    with client.pipeline(transaction=True) as pipe:
        pipe.set(key, "postgres")
        pipe.set(f"{key}:meta", json.dumps(meta))
        pipe.execute()
    log.info("cutover: %s set to postgres (was %r) by run %s; rollback: redis-cli SET %s mongo",
             key, previous, cfg.run_id, key)
    return {"key": key, "previous": previous.decode() if isinstance(previous, bytes) else previous, **meta}
