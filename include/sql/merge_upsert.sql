-- mirror tables: insert new rows; rewrite an existing row only when a mapped column changed.
-- {log_changes} is empty, or log_changes.sql recording the changed rows' keys (cache invalidation).
WITH changed AS (
    INSERT INTO {target} AS t ({columns})
    SELECT {columns} FROM {staging}
    ON CONFLICT ({key}) DO UPDATE
        SET ({columns}, synced_at) = ROW({excluded}, now())
        WHERE ({t_columns}) IS DISTINCT FROM ({excluded})
    RETURNING CASE WHEN xmax = 0 THEN 'insert' ELSE 'update' END AS op, {row_key} AS row_key
){log_changes}
SELECT count(*) FILTER (WHERE op = 'insert'), count(*) FILTER (WHERE op = 'update') FROM changed
