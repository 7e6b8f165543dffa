-- the keys of every row of a table the load filled from empty, into the change log
INSERT INTO authmigrate.changed_rows (run_id, table_name, op, row_key)
SELECT %(run_id)s, %(table)s, 'insert', {row_key} FROM {target} AS t
