-- incremental runs: delete rows whose key is gone from the source (the key-only pass), rows
-- of documents this batch rejected, and rows of documents whose key changed.
WITH changed AS (
    DELETE FROM {target} AS t
    WHERE NOT EXISTS (SELECT 1 FROM {source_keys} AS k WHERE k.key = t.{key})
       OR t.mongo_id IN (SELECT key FROM {rejected_docs})
       OR EXISTS (SELECT 1 FROM {staging} AS s WHERE s.mongo_id = t.mongo_id AND s.{key} <> t.{key})
    RETURNING 'delete' AS op, {row_key} AS row_key
){log_changes}
SELECT count(*) FROM changed
