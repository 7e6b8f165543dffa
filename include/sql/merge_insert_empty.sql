-- an empty target (the first full load): every staged row is new; a plain INSERT, its
-- secondary indexes and constraints dropped before and built again after, in this transaction.
-- {log_changes} is empty, or log_changes.sql recording the inserted rows' keys.
WITH changed AS (
    INSERT INTO {target} AS t ({columns})
    SELECT {columns} FROM {staging}
    RETURNING 'insert' AS op, {row_key} AS row_key
){log_changes}
SELECT count(*) FROM changed
