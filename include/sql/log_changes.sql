-- appended to a merge statement's CTE `changed`: record the changed rows' keys
, logged AS (
    INSERT INTO authmigrate.changed_rows (run_id, table_name, op, row_key)
    SELECT %(run_id)s, %(table)s, op, row_key FROM changed
)
