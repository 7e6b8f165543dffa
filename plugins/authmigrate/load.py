"""Load: prepare the target, then per collection COPY into staging and merge set-based,
in one transaction, so a failed or killed load leaves the target as it was."""
from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import pyarrow as pa
import yaml
from psycopg import sql

from authmigrate import sqlfiles
from authmigrate.config import BOOKKEEPING_SCHEMA, DAG_ID, RunConfig, include_dir
from authmigrate.db import connect, q, qualified, use_schema
from authmigrate.registry import SOURCES, TABLES, Table
from authmigrate.staging import iter_batches, read_frame

log = logging.getLogger("authmigrate")
COPY_BATCH = 50_000


# --------------------------------------------------------------------------- prepare
def apply_schema(conn, cfg: RunConfig) -> list[str]:
    """Create what schema.sql declares; re-add any named constraint that is missing.
    Returns the constraints (re)added."""
    added = []
    with conn.transaction():
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists:
        # look first, so a least-privilege role owning both schemas needs nothing more
        schemas = {r[0] for r in conn.execute(q("schema_names"))}
        for stmt in sqlfiles.statements("bookkeeping"):
            if stmt.upper().startswith("CREATE SCHEMA") and BOOKKEEPING_SCHEMA in schemas:
                continue
            conn.execute(stmt)
        if cfg.target_schema not in schemas:
            conn.execute(q("create_schema", schema=cfg.target_schema))
        use_schema(conn, cfg)
        present = {r[0] for r in conn.execute(q("constraint_names"), {"schema": cfg.target_schema})}
        constraints = {c.statement: c for c in sqlfiles.declared_constraints()}
        for stmt in sqlfiles.statements("schema"):
            c = constraints.get(stmt)
            if c is not None:
                if c.name in present:
                    continue
                added.append(c.name)
            conn.execute(stmt)
    return added


def load_permissions(path: Path | None = None) -> dict:
    path = path or include_dir() / "permissions.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    perms, roles = data.get("permissions") or {}, data.get("roles") or {}
    for role, granted in roles.items():
        unknown = [p for p in granted or [] if p not in perms]
        if unknown:
            raise ValueError(f"{path}: role {role!r} grants undeclared permissions {unknown}")
    return {"permissions": perms, "roles": {r: list(g or []) for r, g in roles.items()}}


def seed_permissions(conn, cfg: RunConfig) -> dict:
    """permissions and role_permissions become exactly what the mapping file says."""
    mapping = load_permissions()
    pairs = [(r, p) for r, granted in mapping["roles"].items() for p in granted]
    with conn.transaction():
        use_schema(conn, cfg)
        with conn.cursor() as cur:
            cur.executemany(q("permissions_upsert"),
                            [{"id": k, "name": k, "description": v} for k, v in mapping["permissions"].items()])
            cur.executemany(q("roles_insert"), [{"id": r} for r in mapping["roles"]])
            cur.executemany(q("role_permissions_insert"), [{"role_id": r, "permission_id": p} for r, p in pairs])
        conn.execute(q("role_permissions_prune"), {"pairs": [f"{r}/{p}" for r, p in pairs]})
        conn.execute(q("permissions_prune"), {"ids": list(mapping["permissions"])})
    return {"permissions": len(mapping["permissions"]), "role_permissions": len(pairs)}


def prepare(cfg: RunConfig, params: dict) -> dict:
    with connect(cfg) as conn:
        added = apply_schema(conn, cfg)
        if added:
            log.warning("prepare: re-added missing constraints %s", added)
        seeded = seed_permissions(conn, cfg)
        conn.execute(q("run_start"), {
            "run_id": cfg.run_id, "dag_id": DAG_ID, "target_schema": cfg.target_schema,
            "params": json.dumps(params, default=str),
        })
    return {"constraints_added": added, **seeded}


# --------------------------------------------------------------------------- load
#: schema.sql column type -> the Arrow type whose PostgreSQL binary COPY encoding (pgpq) it receives
BINARY_COPY_TYPES = {"text": pa.large_string(), "boolean": pa.bool_(), "bigint": pa.int64(), "integer": pa.int32(),
                     "timestamptz": pa.timestamp("us", tz="UTC")}


@functools.cache
def _binary_schema(table: str) -> pa.Schema | None:
    """The Arrow schema a table's staging COPY is encoded from, or None when a column has a type
    the binary encoder does not write (``inet``: that table is copied as text)."""
    columns = sqlfiles.declared_tables()[table]
    types = [BINARY_COPY_TYPES.get(columns[c][0]) for c in TABLES[table].column_names]
    return None if None in types else pa.schema(list(zip(TABLES[table].column_names, types)))


def _copy_file(conn, staging: str, table: Table, path: Path, freeze: bool = False) -> int:
    """COPY a Parquet file into a staging table (or, for an empty target, the target itself),
    streaming record batches: as PostgreSQL's binary COPY, encoded from the Arrow columns in Rust
    (pgpq; no Python object per value), or, for a table with a column type it does not encode,
    as text, row by row. ``freeze``: ``COPY ... FREEZE`` (the table was truncated in this
    transaction), its rows written frozen, so no later scan rewrites every page to set hint bits."""
    cols = table.column_names
    schema = _binary_schema(table.name)
    batches = iter_batches(path, COPY_BATCH, list(cols))
    options = sql.SQL(", FREEZE" if freeze else "")
    n = 0
    if schema is not None:
        from pgpq import ArrowToPostgresBinaryEncoder

        encoder = ArrowToPostgresBinaryEncoder(schema)
        with conn.cursor() as cur, cur.copy(q("staging_copy_binary", staging=staging, columns=cols,
                                              options=options)) as copy:
            copy.write(encoder.write_header())
            for batch in batches:
                # safe casts: an int32 column's values were range-checked by the transform
                copy.write(encoder.write_batch(pa.RecordBatch.from_arrays(
                    [batch.column(c).cast(schema.field(c).type) for c in cols], schema=schema)))
                n += batch.num_rows
            copy.write(encoder.finish())
        return n
    with conn.cursor() as cur, cur.copy(q("staging_copy", staging=staging, columns=cols, options=options)) as copy:
        for batch in batches:
            columns = [batch.column(c).to_pylist() for c in cols]
            for row in zip(*columns):
                copy.write_row(row)
            n += batch.num_rows
    return n


def _copy_keys(conn, staging: str, keys) -> None:
    conn.execute(q("source_keys_create", staging=staging))
    with conn.cursor() as cur, cur.copy(q("source_keys_copy", staging=staging)) as copy:
        for k in keys:
            copy.write_row((k,))


def _key_match(table: Table) -> dict:
    return {"s_key": qualified("s", table.key), "t_key": qualified("t", table.key)}


def _change_log(cfg: RunConfig, table: Table) -> tuple[dict, dict | None]:
    """Template parts recording changed rows' keys when the table has cache keys configured."""
    if table.name not in cfg.cache_keys:
        return {"row_key": sql.SQL("NULL::jsonb"), "log_changes": sql.SQL("")}, None
    row_key = sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(f), sql.Identifier("t", f)) for f in table.change_fields))
    return {"row_key": row_key, "log_changes": q("log_changes")}, {"run_id": cfg.run_id, "table": table.name}


def _secondary(table: str) -> tuple[list, list]:
    """A table's declared indexes and its unique and foreign-key constraints (not its primary
    key, which other tables' foreign keys need), foreign keys ordered by the table they
    reference: loads running side by side then lock referenced tables in one order."""
    indexes = [i for i in sqlfiles.declared_indexes() if i.table == table]
    constraints = [c for c in sqlfiles.declared_constraints() if c.table == table and c.kind in ("u", "f")]
    return indexes, sorted(constraints, key=lambda c: (c.kind == "f", c.ref_table or "", c.name))


def _rebuilt_keys(conn, cfg: RunConfig, table: str) -> tuple[list, list]:
    """What an empty table's bulk insert drops and builds again besides its secondary indexes and
    constraints: its primary key, and the foreign keys of other tables that reference it
    (PostgreSQL drops a key only with them). ``([], [])`` (the key stays, maintained row by row)
    when a foreign key in the catalog references the table that schema.sql does not declare,
    say one of the app's own tables: the load would not know how to build it again."""
    declared = {c.name: c for c in sqlfiles.declared_constraints()}
    primary = [c for c in declared.values() if c.table == table and c.kind == "p"]
    present = [r[0] for r in conn.execute(q("referencing_constraints"), {"schema": cfg.target_schema, "table": table})]
    if not primary or any(name not in declared for name in present):
        return [], []
    incoming = [declared[name] for name in present if declared[name].table != table]
    return primary, sorted(incoming, key=lambda c: (c.table, c.name))


def _bulk_loaded(conn, tables: tuple[Table, ...], incremental: bool) -> set[str]:
    """The tables of a full load that are empty (mirror and join tables): their file is COPYed
    straight into them, with no staging table and no INSERT from it. A table whose join tables
    of this load hold rows is merged through staging instead: their merge deletes stale rows by
    its staged keys."""
    if incremental:
        return set()
    empty = {t.name for t in tables if t.sync in ("mirror", "children")
             and conn.execute(q("table_is_empty", target=t.name)).fetchone()[0]}
    return {n for n in empty if not any(t.parent == n and t.name not in empty for t in tables)}


def _copy_into_empty(conn, cfg: RunConfig, table: Table, path: Path) -> int:
    """The first full load of an empty table: drop its primary key, secondary indexes and
    constraints (and the foreign keys that reference the key), COPY the file straight into it
    (frozen, after a TRUNCATE of the empty table, when nothing the load cannot build again
    references it), then build them again (one sort per index, one set-based check per foreign
    key instead of index maintenance and a trigger per row), all in the load's transaction: a
    failure (a duplicate, a dangling reference) rolls it back as before, and no reader ever sees
    the table without them."""
    indexes, constraints = _secondary(table.name)
    primary, incoming = _rebuilt_keys(conn, cfg, table.name)
    for c in [*incoming, *reversed(constraints), *primary]:
        conn.execute(q("constraint_drop", target=c.table, constraint=c.name))
    for i in indexes:
        conn.execute(q("index_drop", schema=cfg.target_schema, index=i.name))
    # held already when something was dropped; emptiness checked again under it: a row written
    # since the first look would otherwise meet the TRUNCATE
    conn.execute(q("table_lock", target=table.name))
    if not conn.execute(q("table_is_empty", target=table.name)).fetchone()[0]:
        raise RuntimeError(f"{table.name}: rows were written into it while the load prepared its bulk insert "
                           "into the empty table; the load rolled back, and a retry merges instead")
    freeze = bool(primary)  # every foreign key referencing the table was dropped: TRUNCATE may run
    if freeze:
        conn.execute(q("table_truncate", target=table.name))
    inserted = _copy_file(conn, table.name, table, path, freeze=freeze)
    log_parts, params = _change_log(cfg, table)
    if params is not None:
        conn.execute(q("log_inserted", target=table.name, row_key=log_parts["row_key"]), params)
    for c in primary:
        conn.execute(c.statement)
    for i in indexes:
        conn.execute(i.statement)
    for c in [*constraints, *incoming]:
        conn.execute(c.statement)
    log.info("load %s: the table was empty: %d rows copied straight into it%s, then %s%d indexes and %d "
             "constraints built%s", table.name, inserted, " (frozen)" if freeze else "",
             "its primary key, " if primary else "", len(indexes), len(constraints),
             f" and {len(incoming)} referencing foreign keys added again" if incoming else "")
    return inserted


def merge_table(conn, cfg: RunConfig, table: Table, staging: dict[str, str], incremental: bool = False
                ) -> dict[str, int]:
    target, stg = table.name, staging[table.name]
    cols = table.column_names
    if table.sync == "mirror":
        log_parts, params = _change_log(cfg, table)
        if incremental:
            deleted = conn.execute(q(
                "merge_delete_gone_incremental", target=target, staging=stg, key=table.key[0],
                source_keys=staging["source_keys"], rejected_docs=staging["rejected_docs"], **log_parts,
            ), params).fetchone()[0]
        else:
            deleted = conn.execute(q("merge_delete_missing", target=target, staging=stg, **_key_match(table),
                                     **log_parts), params).fetchone()[0]
        inserted, updated = conn.execute(q(
            "merge_upsert", target=target, staging=stg, columns=cols, key=table.key,
            excluded=qualified("excluded", cols), t_columns=qualified("t", cols), **log_parts,
        ), params).fetchone()
        return {"inserted": inserted, "updated": updated, "deleted": deleted}
    deleted = 0
    if table.sync == "children":
        parent = TABLES[table.parent]
        deleted = conn.execute(q(
            "merge_delete_stale_children", target=target, staging=stg, parent_column=table.parent_column,
            parent_key=parent.key[0], parent_staging=staging[parent.name], **_key_match(table),
        )).rowcount
    inserted = conn.execute(q("merge_insert_new", target=target, staging=stg, columns=cols)).rowcount
    return {"inserted": inserted, "updated": 0, "deleted": deleted}


def _copy_rejects(conn, cfg: RunConfig, collection: str, path: Path) -> int:
    conn.execute(q("rejects_delete"), {"run_id": cfg.run_id, "collection": collection})
    n = 0
    with conn.cursor() as cur, cur.copy(q("rejects_copy")) as copy:
        for batch in iter_batches(path, COPY_BATCH):
            d = batch.to_pydict()
            for i in range(batch.num_rows):
                copy.write_row((cfg.run_id, collection, d["source_id"][i], d["scope"][i], d["element"][i],
                                d["reason_code"][i], d["reason"][i], d["document"][i]))
            n += batch.num_rows
    return n


def load_collection(cfg: RunConfig, collection: str, transformed: dict, guard=None) -> dict:
    spec = SOURCES[collection]
    return load_tables(cfg, collection, spec.tables, spec.cleanup, transformed, guard)


def load_tables(cfg: RunConfig, source: str, tables: tuple[Table, ...], cleanup: tuple[str, ...],
                transformed: dict, guard=None) -> dict:
    """One transaction: staging tables, COPY, merge every table of the source, its rejects.
    ``guard`` is called right before the commit (the migration lock check)."""
    from concurrent.futures import ThreadPoolExecutor

    from authmigrate.verify import save_file_checksums, whole_table

    started = time.monotonic()
    changes: dict[str, dict[str, int]] = {}
    # the verify task's side of the content check, hashed while PostgreSQL copies and indexes
    # (this process mostly waits for it then): that task then only sums the loaded rows
    full = {name: path for name, path in transformed["tables"].items() if whole_table(name, transformed)}
    with ThreadPoolExecutor(1, thread_name_prefix="checksums") as hashing:  # its end waits for the hashing
        hashed = hashing.submit(save_file_checksums, full) if cfg.verify and full else None
        rejects = _load_tables(cfg, source, tables, cleanup, transformed, guard, changes)
    if hashed is not None:
        try:
            log.info("load %s: checksums of %s for its verify task in %.1fs", source, sorted(full), hashed.result())
        except Exception as exc:  # noqa: BLE001 - the verify task hashes the files itself then
            log.warning("load %s: could not checksum the transform files for the verify task (%s: %s); it "
                        "will hash them itself", source, type(exc).__name__, exc)
    log.info("load %s: committed in %.1fs, %d rejects recorded", source, time.monotonic() - started, rejects)
    return {"changes": changes, "rejects": rejects}


def _load_tables(cfg: RunConfig, source: str, tables: tuple[Table, ...], cleanup: tuple[str, ...],
                 transformed: dict, guard, changes: dict) -> int:
    """:func:`load_tables`' transaction; fills ``changes``, returns the rejects recorded."""
    with connect(cfg) as conn, conn.transaction():
        use_schema(conn, cfg)
        conn.execute(q("load_session_settings"))
        incremental = transformed.get("mode") == "incremental"
        direct = _bulk_loaded(conn, tables, incremental)
        staging = {}
        for table in tables:
            if table.name in direct:
                continue
            staging[table.name] = f"stg_{table.name}"
            conn.execute(q("staging_create", staging=staging[table.name], target=table.name))
            n = _copy_file(conn, staging[table.name], table, Path(transformed["tables"][table.name]))
            log.info("load %s: copied %d rows into staging for %s", source, n, table.name)
        if incremental:
            staging["source_keys"], staging["rejected_docs"] = "stg_source_keys", "stg_rejected_docs"
            _copy_keys(conn, "stg_source_keys", read_frame(transformed["source_keys"])["key"])
            doc_rejects = read_frame(transformed["rejects"])
            _copy_keys(conn, "stg_rejected_docs",
                       doc_rejects.loc[doc_rejects["scope"] == "document", "source_id"].dropna().drop_duplicates())
        for table in tables:
            if table.name in direct:
                n = _copy_into_empty(conn, cfg, table, Path(transformed["tables"][table.name]))
                changes[table.name] = {"inserted": n, "updated": 0, "deleted": 0}
            else:
                changes[table.name] = merge_table(conn, cfg, table, staging, incremental)
            log.info("load %s: merged %s %s", source, table.name, changes[table.name])
        for name in cleanup:
            conn.execute(q(name))
        rejects = _copy_rejects(conn, cfg, source, Path(transformed["rejects"]))
        if guard:
            guard()
    return rejects
