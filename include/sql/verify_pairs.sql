-- parents with a (parent, child) pair on one side only, or exported twice: the loaded set of
-- join rows differs from the exported set (a loaded pair cannot repeat: the table's primary
-- key, which validate's catalog check requires, is the pair). One hash join of the pairs, no
-- per-parent sort and aggregate on either side.
SELECT DISTINCT coalesce(e.key, t.{parent})
FROM (SELECT key, part, count(*) AS n FROM {expected} GROUP BY 1, 2) AS e
FULL JOIN {target} AS t ON t.{parent} = e.key AND t.{child} = e.part
WHERE (e.key IS NULL OR t.{parent} IS NULL OR e.n > 1) {scope}
ORDER BY 1
LIMIT 20
