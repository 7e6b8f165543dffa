UPDATE authmigrate.runs SET status = 'failed', finished_at = now()
WHERE run_id = %(run_id)s AND status = 'running'
