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


def nullability_mismatches(collections) -> list[str]:
    """A required field, and a boolean that defaults to false, must be NOT NULL in schema.sql; any
    other field may be missing from a document, so its column must allow NULL."""
    from authmigrate.registry import KIND_DEFAULT

    schema, out = declared_tables(), []
    for spec in collections.values():
        columns = schema.get(spec.table, {})
        for f in spec.fields:
            if f.column.startswith("_") or f.column not in columns:
                continue
            not_null = f.required or (f.kind == "bool" and f.default is KIND_DEFAULT) or \
                (f.default not in (None, KIND_DEFAULT))
            if columns[f.column][1] != not_null:
                out.append(f"{spec.table}.{f.column}: declared {'NOT NULL' if not_null else 'nullable'}, "
                           f"schema.sql has it {'NOT NULL' if columns[f.column][1] else 'nullable'}")
    return out


def reference_mismatches(collections) -> list[str]:
    """Every declared reference and join table has its foreign key in schema.sql."""
    from authmigrate.sqlfiles import foreign_keys

    fks = {(fk.table, fk.columns, fk.ref_table, fk.ref_columns) for fk in foreign_keys()}
    out = []
    for spec in collections.values():
        for r in spec.references:
            want = (spec.table, (r.column,), collections[r.collection].table, ("id",))
            if want not in fks:
                out.append(f"{spec.table}.{r.column} → {want[2]}.id: declared, no foreign key in schema.sql")
        for t in spec.join_tables:
            if (t.name, (t.parent_column,), spec.table, ("id",)) not in fks:
                out.append(f"{t.name}.{t.parent_column} → {spec.table}.id: no foreign key in schema.sql")
    return out


def test_nullability_and_references_agree_with_schema_sql():
    from authmigrate.registry import SOURCES

    assert "sessions" in SOURCES  # the Redis source is declared in the same shape, and checked the same way
    assert nullability_mismatches(SOURCES) == []
    assert reference_mismatches(SOURCES) == []


def test_a_nullability_or_reference_disagreement_is_named():
    from authmigrate.registry import COLLECTIONS, Field, Reference

    consents = COLLECTIONS["userAppConsents"]
    broken = replace(consents, fields=tuple(replace(f, required=False) if f.column == "user_id" else f
                                            for f in consents.fields) + (Field("note", "client_id", "text", required=True),),
                     references=consents.references + (Reference("client_id", "oauthClientApps", "null", "x", "app"),))
    found = nullability_mismatches({"userAppConsents": broken})
    assert "user_app_consents.user_id: declared nullable, schema.sql has it NOT NULL" in found
    assert "user_app_consents.client_id: declared NOT NULL, schema.sql has it nullable" in found
    assert reference_mismatches({**COLLECTIONS, "userAppConsents": broken}) == [
        "user_app_consents.client_id → oauth_client_apps.id: declared, no foreign key in schema.sql"]
