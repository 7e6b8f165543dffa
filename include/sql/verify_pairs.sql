-- parents whose set of loaded join rows differs from the exported set (or exists on one side only)
SELECT coalesce(e.key, t.key)
FROM (
    SELECT key, string_agg(length(part)::text || ':' || part, ',' ORDER BY part COLLATE "C") AS children
    FROM {expected} GROUP BY 1
) AS e
FULL JOIN (
    SELECT {parent} AS key,
           string_agg(length({child})::text || ':' || {child}, ',' ORDER BY {child} COLLATE "C") AS children
    FROM {target} GROUP BY 1
) AS t ON t.key = e.key
WHERE e.children IS DISTINCT FROM t.children {scope}
ORDER BY 1
LIMIT 20
