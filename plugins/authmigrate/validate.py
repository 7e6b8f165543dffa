"""Validate: prove the run's result from the database itself, then report it.

Checks: no orphan rows on any declared foreign key; every constraint and index schema.sql
declares exists and is valid in the catalog; counts reconcile exactly per collection
(source documents = loaded rows + rejected documents; array elements = join rows +
rejected elements + "*" grants); the reject ratio stays under ``max_reject_ratio``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from authmigrate import sqlfiles
from authmigrate.config import Permanent, RunConfig
from authmigrate.db import connect, q, use_schema
from authmigrate.registry import COLLECTIONS, TABLES

log = logging.getLogger("authmigrate")


class ValidationFailed(Permanent):
    """A check found the target wrong: the same data gives the same finding on every try."""

    what_to_do = ("read the report in this task's log (or authmigrate.runs.report); rejects are in "
                  "authmigrate.rejects for this run_id. Fix the source or the cause, or raise "
                  "max_reject_ratio if the rejects are acceptable, then trigger again")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"[{'ok' if self.ok else 'FAILED'}] {self.name}: {self.detail}"


def orphan_checks(conn) -> list[Check]:
    checks = []
    for fk in sqlfiles.foreign_keys():
        (column,), (ref,) = fk.columns, fk.ref_columns
        n = conn.execute(q("orphan_count", child=fk.table, column=column, parent=fk.ref_table,
                           ref_column=ref)).fetchone()[0]
        checks.append(Check(f"orphans {fk.table}.{column} → {fk.ref_table}.{ref}", n == 0, f"{n} orphan rows"))
    return checks


def catalog_checks(conn, schema: str) -> list[Check]:
    constraints = {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(q("catalog_constraints"), {"schema": schema})}
    indexes = {(r[0], r[1]): r[2] for r in conn.execute(q("catalog_indexes"), {"schema": schema})}
    problems = []
    declared = sqlfiles.declared_constraints()
    for c in declared:
        found = constraints.get((c.table, c.name))
        if found is None:
            problems.append(f"constraint {c.name} on {c.table} is missing")
        elif found[0] != c.kind or not found[1]:
            problems.append(f"constraint {c.name} on {c.table} is {'not validated' if not found[1] else 'of another kind'}")
        elif c.kind in "pu" and not indexes.get((c.table, c.name), False):
            problems.append(f"index behind constraint {c.name} on {c.table} is missing or invalid")
    for ix in sqlfiles.declared_indexes():
        valid = indexes.get((ix.table, ix.name))
        if valid is None:
            problems.append(f"index {ix.name} on {ix.table} is missing")
        elif not valid:
            problems.append(f"index {ix.name} on {ix.table} is invalid (a failed concurrent build?)")
    total = len(declared) + len(sqlfiles.declared_indexes())
    return [Check("catalog matches schema.sql", not problems,
                  "; ".join(problems) if problems else f"{total} constraints and indexes present and valid")]


def table_counts(conn) -> dict[str, int]:
    """Rows of every table schema.sql creates, in its order."""
    return {name: conn.execute(q("table_count", table=name)).fetchone()[0] for name in sqlfiles.declared_tables()}


def batch_child_counts(conn, results: dict[str, dict]) -> dict[str, int]:
    """Join rows of the parents an incremental batch loaded."""
    from authmigrate.staging import read_frame

    out = {}
    for collection, r in results.items():
        if collection not in COLLECTIONS or r["transform"].get("mode") != "incremental":
            continue
        spec = COLLECTIONS[collection]
        parents = read_frame(r["transform"]["tables"][spec.main_table.name], ["id"])["id"].tolist()
        for join_table in spec.array_tables.values():
            t = TABLES[join_table]
            out[join_table] = conn.execute(q("count_children_of", table=join_table, parent_column=t.parent_column),
                                           {"parents": parents}).fetchone()[0]
    return out


def advance_watermarks(conn, cfg: RunConfig, results: dict[str, dict]) -> dict[str, str]:
    advanced = {}
    for collection, r in results.items():
        mark = r["transform"].get("watermark_candidate") if collection in COLLECTIONS else None
        if mark:
            conn.execute(q("watermark_advance"), {"schema": cfg.target_schema, "collection": collection,
                                                  "watermark": mark, "run_id": cfg.run_id})
            advanced[collection] = mark
    return advanced


def change_summary(results: dict[str, dict]) -> tuple[bool, list[str]]:
    lines, any_change = [], False
    for source, r in results.items():
        for table, c in ((r.get("load") or {}).get("changes") or {}).items():
            any_change |= any(c.values())
            lines.append(f"| {table} | {c['inserted']} | {c['updated']} | {c['deleted']} |")
    return any_change, lines


def reject_summary(conn, run_id: str) -> list[tuple[str, str, str, int]]:
    return [tuple(r) for r in conn.execute(q("rejects_summary"), {"run_id": run_id})]


def reconcile(results: dict[str, dict], counts: dict[str, int], rejects: list[tuple],
              batch_children: dict[str, int] | None = None) -> list[Check]:
    checks = []
    for collection, r in results.items():
        exported = r["export"]["documents"]
        t = r["transform"]["counts"]
        doc_rejects = sum(n for c, scope, _, n in rejects if c == collection and scope == "document")
        if collection == "sessions":
            loaded, expired = counts["sessions"], t["expired_during_read"]
            checks.append(Check(
                "reconcile sessions keys", exported == t["source_documents"] == loaded + doc_rejects + expired,
                f"session keys read {exported} = sessions rows {loaded} + rejected {doc_rejects}"
                f" + expired while reading {expired}",
            ))
            continue
        if r["transform"].get("absent"):
            checks.append(Check(f"reconcile {collection}", exported == 0,
                                f"the source has no collection {r['transform']['source']!r} (optional): nothing "
                                f"read, its tables left as they were"))
            continue
        spec = COLLECTIONS[collection]
        incremental = r["transform"].get("mode") == "incremental"
        # an incremental batch: its accepted rows (each proven present by the content check)
        loaded = t["rows"][spec.main_table.name] if incremental else counts[spec.main_table.name]
        what = "changed documents" if incremental else "documents"
        crc = r["export"].get("archive_crc")
        if crc is not None:
            checks.append(Check(f"archive CRC {collection}", crc["ok"] is True,
                                f"the CRC-64-ECMA of {crc['namespace']} in the archive's EOF header "
                                + ("matches its documents" if crc["ok"] else "does NOT match its documents: the "
                                   "archive is damaged, take a new dump" if crc["ok"] is False else "is missing: the archive ends "
                                   "before this collection is complete, take a new dump")))
        checks.append(Check(
            f"reconcile {collection} {what}", exported == t["source_documents"] == loaded + doc_rejects,
            f"exported {exported} = transformed {t['source_documents']} = loaded {loaded} + rejected {doc_rejects}",
        ))
        for field, join_table in spec.array_tables.items():
            a = t["arrays"][join_table]
            el_rejects = sum(n for c, scope, _, n in rejects if c == collection and scope == "element")
            rows = batch_children[join_table] if incremental else counts[join_table]
            checks.append(Check(
                f"reconcile {collection}.{field} elements",
                a["array_elements"] == rows + el_rejects + a["wildcard_elements"],
                f"elements {a['array_elements']} = {join_table} rows {rows} + rejected {el_rejects}"
                f" + '*' grants {a['wildcard_elements']}",
            ))
    return checks


VERIFY_CONNECTIONS = 2  # tables verified side by side: one's md5s in Python overlap the other's SQL


def content_checks(cfg: RunConfig, results: dict[str, dict]) -> list[Check]:
    """Field-level verification of every table this run loaded (see verify.py), on
    ``VERIFY_CONNECTIONS`` connections of their own, the largest files first; the checks in
    the run's table order."""
    import os
    import queue
    import threading

    from authmigrate.verify import verify_table, whole_table

    jobs = [(name, path, whole_table(name, r["transform"]))
            for r in results.values() for name, path in r["transform"]["tables"].items()]
    todo: queue.Queue = queue.Queue()
    for job in sorted(jobs, key=lambda j: -os.path.getsize(j[1])):
        todo.put(job)
    found: dict[str, Check] = {}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with connect(cfg) as own, own.transaction():
                use_schema(own, cfg)
                while True:
                    try:
                        name, path, full = todo.get_nowait()
                    except queue.Empty:
                        return
                    ok, detail = verify_table(own, name, path, full=full)
                    found[name] = Check(f"content {name}", ok, detail)
        except BaseException as exc:  # raised below, in the task's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"verify-{i}") for i in range(min(VERIFY_CONNECTIONS, len(jobs)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [found[name] for name, _, _ in jobs]


def verify_loaded(cfg: RunConfig, source: str, transformed: dict) -> dict:
    """The content checks of one source's tables, run by its verify task once its load
    committed: they overlap the other collections' loads instead of waiting for the final
    validate. No later load of the run changes these tables (a table is written by its own
    source's load, and by cascades from the loads it depends on, which ran before). Returns the
    checks as XCom-safe dicts (their details name keys and fields, never values)."""
    checks = content_checks(cfg, {source: {"transform": transformed}})
    for c in checks:
        (log.info if c.ok else log.error)("verify %s: %s", source, c.line())
    return {"checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]}


def loaded_content_checks(cfg: RunConfig, results: dict[str, dict]) -> list[Check]:
    """The content checks of every source this run loaded: those its verify task ran
    (:func:`verify_loaded`), and, for a source without them (a run started before the verify
    tasks existed), run here."""
    found, pending = {}, {}
    for source, r in results.items():
        verified = r.get("verify")
        if verified is not None:
            found[source] = [Check(**c) for c in verified["checks"]]
        else:
            pending[source] = r
    if pending:
        late = {c.name: c for c in content_checks(cfg, pending)}
        for source, r in pending.items():
            found[source] = [late[f"content {name}"] for name in r["transform"]["tables"]]
    return [c for source in results for c in found[source]]


def reject_ratio(results: dict[str, dict]) -> tuple[int, int, float]:
    """Rejected / source documents over the MongoDB collections (sessions are reported apart).
    In an incremental run the rejects are the batch's and the source is every document."""
    mongo = [r for c, r in results.items() if c in COLLECTIONS]
    # an incremental batch is measured against the whole source (its key-only pass)
    source = sum((r["export"].get("keys") or {}).get("documents", r["transform"]["counts"]["source_documents"])
                 for r in mongo)
    rejected = sum(r["transform"]["counts"]["rejected_documents"] for r in mongo)
    return rejected, source, (rejected / source if source else 0.0)


def reject_ratio_check(results: dict[str, dict], cfg: RunConfig) -> Check:
    rejected, source, ratio = reject_ratio(results)
    return Check("reject ratio", ratio <= cfg.max_reject_ratio,
                 f"{rejected}/{source} = {ratio:.2%} (max {cfg.max_reject_ratio:.2%})")


def timings(results: dict[str, dict], extra: dict[str, float] | None = None) -> dict[str, float]:
    out = dict(extra or {})
    for source, r in results.items():
        for stage in ("export", "transform", "load", "verify"):
            seconds = (r.get(stage) or {}).get("seconds")
            if seconds is not None:
                out[f"{source}.{stage}"] = round(seconds, 2)
    return out


def render_report(cfg: RunConfig, results: dict[str, dict], checks: list[Check], counts: dict[str, int] | None,
                  rejects: list[tuple], examples: list[tuple] = (), task_times: dict[str, float] | None = None,
                  census: dict | None = None) -> str:
    passed = all(c.ok for c in checks)
    lines = [
        f"# authmigrate run {cfg.run_id}",
        f"target schema `{cfg.target_schema}` — {'DRY RUN — ' if cfg.dry_run else ''}"
        f"{'PASSED' if passed else 'FAILED'}",
        "",
        "| collection | source | loaded | rejected |",
        "|---|---:|---:|---:|",
    ]
    for collection, r in results.items():
        t = r["transform"]["counts"]
        loaded = t["source_documents"] - t["rejected_documents"] - t.get("expired_during_read", 0)
        name = "sessions (Redis keys)" if collection == "sessions" else collection
        if r["transform"].get("absent"):
            lines.append(f"| {name} | absent from the source (`{r['transform']['source']}`): not migrated, "
                         f"its tables left as they were | — | — |")
            continue
        lines.append(f"| {name} | {t['source_documents']} | {loaded} | {t['rejected_documents']} |")
    if counts:
        lines += ["", "| table | rows |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in counts.items()]
    any_change, change_lines = change_summary(results)
    if change_lines:
        lines += ["", "Changes made by this run:", "", "| table | inserted | updated | deleted |", "|---|---:|---:|---:|"]
        lines += change_lines
        if not any_change:
            lines += ["", "No changes: the target already matched the source (no row rewritten)."]
    modes = {c: r["transform"].get("mode", "full") for c, r in results.items() if c in COLLECTIONS}
    if any(m == "incremental" for m in modes.values()):
        lines += ["", "Mode: " + ", ".join(f"{c} {m}" for c, m in modes.items())]
    lines += ["", "| collection | scope | reason | count |", "|---|---|---|---:|"]
    lines += [f"| {c} | {s} | {code} | {n} |" for c, s, code, n in rejects] or ["| — | — | none | 0 |"]
    if examples:
        lines += ["", "Examples (documents redacted):", ""]
        for collection, code, source_id, element, reason, _ in examples:
            lines.append(f"- `{collection}` **{code}** `{source_id}`"
                         + (f" element `{element}`" if element else "") + f": {reason}")
    if task_times:
        lines += ["", "| task | seconds |", "|---|---:|"] + [f"| {t} | {s:.2f} |" for t, s in task_times.items()]
    if census:
        from authmigrate.census import report_lines

        lines += [""] + report_lines(census)
    lines += ["", "Checks:", ""] + [f"- {c.line()}" for c in checks]
    return "\n".join(lines)


def source_census(cfg: RunConfig, results: dict[str, dict]) -> dict:
    """The census of this run: every source collection no declaration maps (read from MongoDB
    now), and each transformed collection's field census (counted while it decoded)."""
    from authmigrate.census import source_collections

    collections = {c: r["transform"]["census"] for c, r in results.items()
                   if c in COLLECTIONS and (r.get("transform") or {}).get("census")}
    try:
        return {"unmapped_collections": source_collections(cfg), "collections": collections}
    except Exception as exc:  # noqa: BLE001 - with unmapped=report, the census never fails a run
        if cfg.unmapped == "fail":
            raise
        log.warning("census: could not list the source's collections (%s)", type(exc).__name__)
        return {"unmapped_collections": {}, "collections": collections, "error": type(exc).__name__}


def census_check(cfg: RunConfig, census: dict) -> list[Check]:
    """With ``unmapped=fail``, anything in the source the run does not take fails validation."""
    if cfg.unmapped != "fail":
        return []
    from authmigrate.census import findings

    found = findings(census)
    return [Check("census (unmapped=fail)", not found, "; ".join(found) if found else
                  "every source collection and field is mapped")]


def dry_run_rejects(results: dict[str, dict]) -> list[tuple]:
    import pyarrow.parquet as pq

    out = []
    for collection, r in results.items():
        table = pq.read_table(r["transform"]["rejects"], columns=["scope", "reason_code"]).to_pandas()
        for (scope, code), n in table.groupby(["scope", "reason_code"]).size().items():
            out.append((collection, scope, code, int(n)))
    return sorted(out)


def validate_run(cfg: RunConfig, results: dict[str, dict], task_times: dict[str, float] | None = None) -> dict:
    """Run every check, write the report to the log, to authmigrate.runs and to report files;
    raise when a check fails."""
    from authmigrate import report as report_files

    started = time.monotonic()
    census = source_census(cfg, results)
    log.info("validate: the source's census read in %.2fs", time.monotonic() - started)
    if cfg.dry_run:
        rejects = dry_run_rejects(results)
        checks = [reject_ratio_check(results, cfg)] + census_check(cfg, census)
        report = render_report(cfg, results, checks, None, rejects, task_times=timings(results, task_times),
                               census=census)
        files = report_files.write(cfg.run_id, report, timings(results, task_times), None)
        log.info("dry run, nothing written to the target:\n%s\nreport files: %s", report, files)
        return {"passed": all(c.ok for c in checks), "report": report, "reject_ratio": reject_ratio(results)[2],
                "files": files, "failed": [c.line() for c in checks if not c.ok]}
    with connect(cfg) as conn:
        with conn.transaction():
            use_schema(conn, cfg)
            counts = table_counts(conn)
            rejects = reject_summary(conn, cfg.run_id)
            checks = orphan_checks(conn) + catalog_checks(conn, cfg.target_schema)
            children = batch_child_counts(conn, results)
        log.info("validate: counts, orphans and catalog checked in %.2fs", time.monotonic() - started)
        checks += reconcile(results, counts, rejects, children) + [reject_ratio_check(results, cfg)]
        checks += census_check(cfg, census)
        if cfg.verify:
            checks += loaded_content_checks(cfg, results)
        passed = all(c.ok for c in checks)
        examples = [tuple(r) for r in conn.execute(q("rejects_examples"), {"run_id": cfg.run_id, "per_reason": 2})]
        all_times = timings(results, {**(task_times or {}), "validate": time.monotonic() - started})
        report = render_report(cfg, results, checks, counts, rejects, examples, all_times, census)
        summary = {
            "tables": counts,
            "collections": {c: {k: r["transform"]["counts"][k] for k in ("source_documents", "rejected_documents")}
                            for c, r in results.items()},
            "changes": {c: r["load"]["changes"] for c, r in results.items() if r.get("load")},
            "checks": {c.name: c.ok for c in checks},
            "census": census,
        }
        if passed:
            summary["watermarks"] = advance_watermarks(conn, cfg, results)
        conn.execute(q("run_finish"), {"run_id": cfg.run_id, "status": "success" if passed else "failed",
                                       "counts": json.dumps(summary), "report": report})
    log.info("validate: checks reconciled and the run recorded in %.2fs", time.monotonic() - started)
    files = report_files.write(cfg.run_id, report, all_times, counts)
    log.info("validate: report files written in %.2fs", time.monotonic() - started)
    log.info("validation report:\n%s\nreport files: %s", report, files)
    if not passed:
        failed = [c.line() for c in checks if not c.ok]
        raise ValidationFailed("validation failed:\n" + "\n".join(failed))
    return {"passed": True, "tables": counts, "report": report, "reject_ratio": reject_ratio(results)[2],
            "files": files}
