-- a retried load replaces its own rejects
DELETE FROM authmigrate.rejects WHERE run_id = %(run_id)s AND collection = %(collection)s
