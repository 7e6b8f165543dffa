"""The collections' declarations (registry.py) and schema.sql describe the same tables: a
column missing on either side, or of another kind, fails here before any run does."""
from __future__ import annotations

from dataclasses import replace

from authmigrate.registry import TABLES
from authmigrate.sqlfiles import declared_tables

SQL_TYPES = {"text": {"text"}, "bool": {"boolean"}, "int": {"bigint", "integer"}, "timestamp": {"timestamptz"},
             "inet": {"inet"}}
BOOKKEEPING_COLUMNS = {"synced_at"}  # set by the merge, not by a declaration


def mismatches(tables) -> list[str]:
    schema, out = declared_tables(), []
    for name, table in tables.items():
        columns = schema.get(name)
        if columns is None:
            out.append(f"{name}: declared, but schema.sql does not create it")
            continue
        for column, kind in table.columns.items():
            if column not in columns:
                out.append(f"{name}.{column}: declared, missing from schema.sql")
            elif columns[column][0] not in SQL_TYPES[kind]:
                out.append(f"{name}.{column}: declared {kind}, schema.sql has {columns[column][0]}")
        for column in set(columns) - set(table.columns) - BOOKKEEPING_COLUMNS:
            out.append(f"{name}.{column}: in schema.sql, not declared")
        for column in table.key:
            if column in columns and not columns[column][1]:
                out.append(f"{name}.{column}: a key column that schema.sql lets be NULL")
    return out


def test_the_declarations_and_schema_sql_agree():
    assert mismatches(TABLES) == []


def test_a_disagreement_is_named():
    users = TABLES["users"]
    broken = {"users": replace(users, columns={**{k: v for k, v in users.columns.items() if k != "email"},
                                               "sign_count": "text", "nickname": "text"})}
    assert sorted(mismatches(broken)) == ["users.email: in schema.sql, not declared",
                                          "users.nickname: declared, missing from schema.sql",
                                          "users.sign_count: declared text, schema.sql has bigint"]
    assert mismatches({"user_prefs": users}) == ["user_prefs: declared, but schema.sql does not create it"]
