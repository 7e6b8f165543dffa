"""PostgreSQL access: psycopg 3 connections from the Postgres hook, SQL files composed safely.

Identifiers go through psycopg.sql.Identifier (after config.validate_identifier); values are
always parameters or COPY data.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from psycopg import sql

from authmigrate import sqlfiles
from authmigrate.config import RunConfig

log = logging.getLogger("authmigrate")


def q(name: str, **parts) -> sql.Composed:
    """include/sql/<name>.sql with ``{placeholders}`` filled by identifiers or composed SQL.
    A plain string becomes an Identifier; a tuple of strings a comma list of Identifiers."""
    fill = {}
    for key, value in parts.items():
        if isinstance(value, str):
            fill[key] = sql.Identifier(value)
        elif isinstance(value, tuple):
            fill[key] = sql.SQL(", ").join(sql.Identifier(v) for v in value)
        else:
            fill[key] = value
    text = "\n".join(l for l in sqlfiles.read(name).splitlines() if not l.lstrip().startswith("--"))
    return sql.SQL(text.strip()).format(**fill)


def qualified(prefix: str, columns: tuple[str, ...]) -> sql.Composed:
    """``prefix.col1, prefix.col2`` for a table alias."""
    return sql.SQL(", ").join(sql.Identifier(prefix, c) for c in columns)


@contextlib.contextmanager
def connect(cfg: RunConfig) -> Iterator:
    """An autocommit psycopg 3 connection; open explicit transactions with ``conn.transaction()``."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=cfg.postgres_conn_id)
    conn = hook.get_conn()
    if not hasattr(conn, "pgconn"):
        raise RuntimeError("authmigrate needs psycopg 3 (install psycopg[binary]); the Postgres hook gave psycopg2")
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def use_schema(conn, cfg: RunConfig) -> None:
    """Inside a transaction: unqualified names resolve to the run's target schema."""
    conn.execute(q("set_search_path", schema=cfg.target_schema))


def fetch_keys(conn, cfg: RunConfig, table: str, key: str) -> set[str]:
    with conn.transaction():
        use_schema(conn, cfg)
        return {row[0] for row in conn.execute(q("known_keys", table=table, key=key))}
