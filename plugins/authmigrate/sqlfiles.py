"""SQL lives in include/sql/*.sql. This module reads those files and parses what schema.sql declares."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from authmigrate.config import sql_dir

_ADD_CONSTRAINT = re.compile(
    r"^ALTER TABLE (?P<table>\w+) ADD CONSTRAINT (?P<name>\w+) (?P<body>.+)$", re.S | re.I
)
_CREATE_INDEX = re.compile(
    r"^CREATE (?P<unique>UNIQUE )?INDEX IF NOT EXISTS (?P<name>\w+) ON (?P<table>\w+)", re.I
)
_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (?P<table>\w+) \((?P<body>.*)\)$", re.S | re.I)
_FOREIGN_KEY = re.compile(
    r"FOREIGN KEY \((?P<cols>[^)]+)\) REFERENCES (?P<ref>\w+) \((?P<refcols>[^)]+)\)", re.I
)


@lru_cache(maxsize=None)
def read(name: str) -> str:
    """The text of include/sql/<name>.sql."""
    path = sql_dir() / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"SQL file {path} is missing: the install is incomplete")
    return path.read_text()


def statements(name: str) -> list[str]:
    """Statements of a file, comments dropped, split on a semicolon that ends a line."""
    text = "\n".join(line for line in read(name).splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*$", text, flags=re.M) if s.strip()]


@dataclass(frozen=True)
class Constraint:
    table: str
    name: str
    kind: str  # 'p' primary key, 'u' unique, 'f' foreign key (pg_constraint.contype)
    statement: str
    columns: tuple[str, ...] = ()
    ref_table: str | None = None
    ref_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Index:
    table: str
    name: str
    statement: str


def _cols(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(","))


@lru_cache(maxsize=None)
def declared_constraints() -> tuple[Constraint, ...]:
    found = []
    for stmt in statements("schema"):
        m = _ADD_CONSTRAINT.match(stmt)
        if not m:
            continue
        body = m["body"].upper()
        if body.startswith("PRIMARY KEY"):
            kind = "p"
        elif body.startswith("UNIQUE"):
            kind = "u"
        elif body.startswith("FOREIGN KEY"):
            kind = "f"
        else:
            raise ValueError(f"schema.sql: unsupported constraint kind in {stmt!r}")
        fk = _FOREIGN_KEY.search(m["body"])
        found.append(
            Constraint(
                table=m["table"],
                name=m["name"],
                kind=kind,
                statement=stmt,
                columns=_cols(fk["cols"]) if fk else (),
                ref_table=fk["ref"] if fk else None,
                ref_columns=_cols(fk["refcols"]) if fk else (),
            )
        )
    return tuple(found)


@lru_cache(maxsize=None)
def declared_indexes() -> tuple[Index, ...]:
    found = []
    for stmt in statements("schema"):
        m = _CREATE_INDEX.match(stmt)
        if m:
            found.append(Index(table=m["table"], name=m["name"], statement=stmt))
    return tuple(found)


def foreign_keys() -> tuple[Constraint, ...]:
    return tuple(c for c in declared_constraints() if c.kind == "f")


@lru_cache(maxsize=None)
def declared_tables() -> dict[str, dict[str, tuple[str, bool]]]:
    """What schema.sql creates: {table: {column: (SQL type, NOT NULL)}}."""
    out = {}
    for stmt in statements("schema"):
        m = _CREATE_TABLE.match(stmt)
        if m:
            columns = {}
            for line in m["body"].split(","):
                words = line.split()
                if words:
                    columns[words[0]] = (words[1].lower(), "not null" in line.lower())
            out[m["table"]] = columns
    return out
