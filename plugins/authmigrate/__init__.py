"""authmigrate: move an identity provider's MongoDB into a normalized PostgreSQL schema.

One module per stage: ``export`` (Mongo → run-scoped Parquet), ``transform`` (pure pandas:
coercion, de-duplication, arrays exploded into join rows, rejects), ``load`` (COPY into
staging, set-based merge), ``validate`` (orphans, catalog, reconciliation, report).
``registry`` describes each collection once. Nothing here builds a hook at import time.
"""
