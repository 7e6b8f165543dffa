SELECT DISTINCT row_key FROM authmigrate.changed_rows WHERE run_id = %(run_id)s AND table_name = %(table)s
