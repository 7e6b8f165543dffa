-- parents whose set of join rows does not hash like the exported set
SELECT coalesce(e.key, t.key)
FROM {expected} AS e
FULL JOIN (
    SELECT {parent} AS key,
           md5(string_agg(length({child})::text || ':' || {child}, ',' ORDER BY {child} COLLATE "C")) AS hash
    FROM {target} GROUP BY 1
) AS t ON t.key = e.key
WHERE e.hash IS DISTINCT FROM t.hash {scope}
ORDER BY 1
LIMIT 20
