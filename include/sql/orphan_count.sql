-- rows of {child} whose {column} points at no row of {parent}
SELECT count(*) FROM {child} AS c
WHERE c.{column} IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE p.{ref_column} = c.{column})
