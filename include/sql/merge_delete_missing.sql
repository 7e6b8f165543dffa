-- mirror tables: rows whose key is no longer in the source are deleted (FKs cascade).
WITH changed AS (
    DELETE FROM {target} AS t
    WHERE NOT EXISTS (SELECT 1 FROM {staging} AS s WHERE ({s_key}) = ({t_key}))
    RETURNING 'delete' AS op, {row_key} AS row_key
){log_changes}
SELECT count(*) FROM changed
