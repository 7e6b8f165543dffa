UPDATE authmigrate.runs
SET status = %(status)s, finished_at = now(), counts = %(counts)s, report = %(report)s
WHERE run_id = %(run_id)s
