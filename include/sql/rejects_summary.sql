SELECT collection, scope, reason_code, count(*)
FROM authmigrate.rejects
WHERE run_id = %(run_id)s
GROUP BY collection, scope, reason_code
ORDER BY collection, scope, reason_code
