"""
### mongo_to_postgres — the identity provider's MongoDB into a normalized PostgreSQL schema

Per collection (`users`, `oauthClientApps`, `oauthRoles`, `userAppConsents`, `invitations`,
`appSettings`; each declared once in `plugins/authmigrate/registry.py`): **plan** fixes the
export's chunks (`_id` ranges of `chunk_size` documents, or the whole collection); **export**, one
mapped task per chunk, streams the documents in batches into run-scoped Parquet; **transform**
coerces types, de-duplicates, explodes arrays (`providerRoles`, `oauthUserIds`,
`consentedScopes`, `allowedEmailDomains`) into join tables, back-fills app owners, and turns
every bad document or element into a reject with a reason; **load** COPYs into staging and
merges set-based in one transaction (the target equals the source again, deletions included);
**verify** (param *verify*) then compares every loaded row's fields with the transform's output,
while the other collections still load.
The last three collections are optional: a source without them (under their default or Mongoose
names) gets a line in the report, their tables are left as they are. **validate** fails the run on orphan
rows, on a constraint or index missing from the catalog, on counts that do not reconcile, or on
too many rejects.

**Reading the result**: the `validate` task's log holds the report (rows per table, changes,
rejects per reason with examples, time per task, every check); the same report is in
`authmigrate.runs` and in `report.md` / `report.html` / `chart.png` under
`$AUTHMIGRATE_REPORT_DIR/<run id>/`. Each reject, with the redacted document, is in
`authmigrate.rejects` (filter by `run_id`). Optional at the end: `invalidate_cache` and
`cutover` (Redis switch `authmigrate:datastore`; rollback: `redis-cli SET authmigrate:datastore mongo`).
Tick *dry run* to export and transform only: the report lists what would be rejected.

**Assets**: each load emits an asset event per target table it committed (asset alias
`authmigrate:<table>`, asset `postgres://host:port/database/schema/table`), so downstream DAGs
can be scheduled on the migrated data. The report's **census** lists what the source holds
that this run does not take (param *unmapped* = fail makes that a failed validation).
"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, AssetAlias, Param, TaskGroup, task

from authmigrate import tasks
from authmigrate.config import (DAG_ID, DEFAULT_CONN_IDS, DEFAULT_SOURCE_COLLECTIONS, SCHEMA_PATTERN,
                                default_cache_keys, export_parallelism, schedule, task_defaults)
from authmigrate.registry import COLLECTIONS, SESSIONS_SOURCE, asset_alias

WHAT, HOW, SAFETY, CONNECTIONS = "What to migrate", "How", "Safety", "Connections"
# Airflow resolves, and JSON-schema-checks, every param many times per task (serialising the task,
# building its context): checking a schema against the 2020-12 meta-schema takes ~0.6 ms, against
# draft-07's ~0.14 ms. The params use nothing newer than draft-07.
DRAFT_07 = {"$schema": "http://json-schema.org/draft-07/schema#"}


def param(default, **schema) -> Param:
    return Param(default, **schema, **DRAFT_07)


def step(**kwargs):
    """A task whose dict result is one XCom (the TaskFlow default for a ``-> dict`` function is
    one XCom per key: a push, an API call, for each)."""
    return task(multiple_outputs=False, **kwargs)


with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=schedule(),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={**task_defaults(), "on_failure_callback": tasks.mark_failed},
    tags=["authmigrate", "mongo", "postgres"],
    params={
        "collections": param(
            list(DEFAULT_SOURCE_COLLECTIONS), type="array",
            items={"type": "string", "enum": list(DEFAULT_SOURCE_COLLECTIONS)}, minItems=1,
            examples=list(DEFAULT_SOURCE_COLLECTIONS),  # the trigger form shows a multi-select
            title="Collections", section=WHAT,
            description="Which source collections to migrate. A collection left out keeps its target "
                        "rows; references to it are checked against the target table.",
        ),
        **{
            f"source_{logical}": param(
                default, type="string", minLength=1, maxLength=120, pattern=r"^[^$\x00]+$",
                title=f"MongoDB collection for {logical}", section=WHAT,
                description="The collection's real name in MongoDB. Apps using Mongoose store "
                            "lower-cased plural names (e.g. oauthclientapps): check yours.",
            )
            for logical, default in DEFAULT_SOURCE_COLLECTIONS.items()
        },
        "source": param(
            "mongodb", type="string", enum=["mongodb", "files"], title="Source", section=WHAT,
            description="mongodb: read the live server (the Mongo connection). files: read a mongodump folder "
                        "(.bson, .bson.gz), a mongodump --archive file, or mongoexport JSON files from source_path.",
        ),
        "source_path": param(  # null when empty: the trigger form sends an empty field as null
            None, type=["null", "string"], maxLength=1000, title="Dump location (source=files)", section=WHAT,
            description="A folder or file, local or an object-storage URL (s3://, gs://, ... where the provider is "
                        "installed). Only paths under AUTHMIGRATE_SOURCE_ROOTS are read.",
        ),
        "source_database": param(
            None, type=["null", "string"], maxLength=64, title="Database in the dump (source=files)", section=WHAT,
            description="The database subfolder of a mongodump folder, or the database of an archive that holds "
                        "several. Empty: source_path is the collections' folder, or the archive's only database.",
        ),
        "sessions": param(
            True, type="boolean", title="Sync session metadata", section=WHAT,
            description="Read the app's session keys from Redis (read-only) into the sessions audit table.",
        ),
        "target_schema": param(
            "public", type="string", pattern=SCHEMA_PATTERN, title="Target schema", section=WHAT,
            description="PostgreSQL schema of the app's tables (created if missing). Bookkeeping always "
                        "goes to the separate schema authmigrate.",
        ),
        "mode": param(
            "full", type="string", enum=["full", "incremental"], title="Mode", section=HOW,
            description="full: read every document. incremental: read documents whose updatedAt is newer than "
                        "the collection's watermark (minus the overlap) plus a cheap key-only pass that "
                        "propagates deletions. Watermarks advance only after a passing validation.",
        ),
        "overlap_seconds": param(
            300, type="integer", minimum=0, maximum=7 * 86400, title="Incremental overlap (s)", section=HOW,
            description="Safety overlap subtracted from the watermark, for clocks and in-flight writes.",
        ),
        "batch_size": param(
            5000, type="integer", minimum=1, maximum=1_000_000, title="Batch size", section=HOW,
            description="Documents per MongoDB batch and per Parquet row group.",
        ),
        "chunk_size": param(
            0, type="integer", minimum=0, maximum=100_000_000, title="Chunk size", section=HOW,
            description="Split a collection larger than this into ObjectId _id ranges of about this many "
                        "documents, each exported by its own task (retried alone, run in parallel up to "
                        "AUTHMIGRATE_EXPORT_PARALLELISM). 0: one export per collection.",
        ),
        "dry_run": param(
            False, type="boolean", title="Dry run", section=SAFETY,
            description="Export and transform only, and report the rejects. Nothing is written to PostgreSQL.",
        ),
        "cutover": param(
            False, type="boolean", title="Cut over", section=SAFETY,
            description="After a passing validation, set the Redis key authmigrate:datastore to 'postgres' "
                        "(the app's switch). Rollback: redis-cli SET authmigrate:datastore mongo",
        ),
        "cache_keys": param(
            default_cache_keys(), type="object", title="Cache keys to invalidate", section=HOW,
            description='Per table, the app\'s cache-key patterns, e.g. {"users": ["cache:user:{id}"]}. '
                        "Keys of rows this run changed or deleted are UNLINKed after validation.",
        ),
        "verify": param(
            True, type="boolean", title="Verify content", section=SAFETY,
            description="Compare a hash of every loaded row's mapped fields, computed in PostgreSQL, with the "
                        "same hash computed from the export. Any mismatch fails the run.",
        ),
        "unmapped": param(
            "report", type="string", enum=["report", "fail"], title="Unmapped source data", section=SAFETY,
            description="The report's census lists every source collection and field this run does not take. "
                        "fail: any unmapped collection or field fails the validation (a hard guarantee "
                        "before cutover).",
        ),
        "max_reject_ratio": param(
            0.05, type="number", minimum=0, maximum=1, title="Max reject ratio", section=SAFETY,
            description="Fail the run when more than this share of source documents is rejected.",
        ),
        **{
            f"{kind}_conn_id": param(
                conn_id, type="string", minLength=1, title=f"{kind.title()} connection id", section=CONNECTIONS,
                description=f"Airflow connection of the {kind} server.",
            )
            for kind, conn_id in DEFAULT_CONN_IDS.items()
        },
    },
) as dag:
    prepare = step(task_id="prepare")(tasks.prepare)()
    validate = step(task_id="validate", trigger_rule="none_failed")(tasks.validate)()
    invalidate_cache = step(task_id="invalidate_cache")(tasks.invalidate_cache)()
    cutover = step(task_id="cutover", trigger_rule="none_failed")(tasks.cutover)()
    validate >> invalidate_cache >> cutover
    groups = {}
    for name, spec in COLLECTIONS.items():
        with TaskGroup(group_id=name) as group:
            chunks = step(task_id="plan")(tasks.plan)(name)
            export = step(task_id="export", max_active_tis_per_dag=export_parallelism())(tasks.export).expand(
                chunk=chunks)
            transform = step(task_id="transform", trigger_rule="none_failed")(tasks.transform)(name)
            load = step(task_id="load", trigger_rule="none_failed",
                        outlets=[AssetAlias(asset_alias(t.name)) for t in spec.tables])(tasks.load)(name)
            verify = step(task_id="verify", trigger_rule="none_failed")(tasks.verify)(name)
            export >> transform >> load >> verify
        groups[name] = (transform, load)
        prepare >> load
        verify >> validate
        for dependency in spec.depends_on:
            groups[dependency][0] >> transform
            groups[dependency][1] >> load

    with TaskGroup(group_id="sessions"):
        sessions_export = step(task_id="export")(tasks.sessions_export)()
        sessions_transform = step(task_id="transform", trigger_rule="none_failed")(tasks.sessions_transform)()
        sessions_load = step(task_id="load", trigger_rule="none_failed",
                             outlets=[AssetAlias(asset_alias(t.name)) for t in SESSIONS_SOURCE.tables]
                             )(tasks.sessions_load)()
        sessions_verify = step(task_id="verify", trigger_rule="none_failed")(tasks.verify)("sessions")
        sessions_export >> sessions_transform >> sessions_load >> sessions_verify
    for name in SESSIONS_SOURCE.depends_on:
        groups[name][0] >> sessions_transform
        groups[name][1] >> sessions_load
    prepare >> sessions_export  # read Redis once the run holds the lock
    sessions_verify >> validate
    # a teardown after the last task that needs the lock (cutover flips the app's switch while this
    # run still holds the target): releases it however the run ended (ignored for the run's state)
    cutover >> step(task_id="release_lock")(tasks.release_lock)().as_teardown()
