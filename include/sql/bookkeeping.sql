-- Pipeline bookkeeping, in its own schema beside (never inside) the app's tables.
CREATE SCHEMA IF NOT EXISTS authmigrate;

CREATE TABLE IF NOT EXISTS authmigrate.runs (
    run_id         text        PRIMARY KEY,
    dag_id         text        NOT NULL,
    target_schema  text        NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    status         text        NOT NULL DEFAULT 'running',
    params         jsonb,
    counts         jsonb,
    report         text
);

CREATE TABLE IF NOT EXISTS authmigrate.rejects (
    run_id       text        NOT NULL,
    collection   text        NOT NULL,
    source_id    text,
    scope        text        NOT NULL CHECK (scope IN ('document', 'element', 'field')),
    element      text,
    reason_code  text        NOT NULL,
    reason       text        NOT NULL,
    document     jsonb,
    rejected_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS rejects_run_collection_idx ON authmigrate.rejects (run_id, collection);

-- keys of the rows each run inserted, updated or deleted, for tables whose cache keys are
-- configured (cache invalidation reads them; a retried load appends, never loses them)
CREATE TABLE IF NOT EXISTS authmigrate.changed_rows (
    run_id      text        NOT NULL,
    table_name  text        NOT NULL,
    op          text        NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    row_key     jsonb       NOT NULL
);

CREATE INDEX IF NOT EXISTS changed_rows_run_idx ON authmigrate.changed_rows (run_id, table_name);

-- incremental re-syncs read documents whose updatedAt is newer than the watermark (minus an
-- overlap); a watermark advances only after the run's validation passed
CREATE TABLE IF NOT EXISTS authmigrate.watermarks (
    target_schema  text        NOT NULL,
    collection     text        NOT NULL,
    watermark      timestamptz NOT NULL,
    run_id         text        NOT NULL,
    advanced_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, collection)
);
