-- keys whose loaded row does not hash like the exported row (or exists on one side only)
SELECT coalesce(e.key, t.key)
FROM {expected} AS e
FULL JOIN (SELECT {key} AS key, md5({row_text}) AS hash FROM {target}) AS t ON t.key = e.key
WHERE e.hash IS DISTINCT FROM t.hash {scope}
ORDER BY 1
LIMIT 20
