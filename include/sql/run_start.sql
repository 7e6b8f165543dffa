INSERT INTO authmigrate.runs (run_id, dag_id, target_schema, params, status)
VALUES (%(run_id)s, %(dag_id)s, %(target_schema)s, %(params)s, 'running')
ON CONFLICT (run_id) DO UPDATE
    SET status = 'running', finished_at = NULL, params = EXCLUDED.params, target_schema = EXCLUDED.target_schema
