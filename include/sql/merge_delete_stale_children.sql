-- join rows: for every re-loaded parent, rows no longer in the source are deleted.
DELETE FROM {target} AS t
WHERE t.{parent_column} IN (SELECT {parent_key} FROM {parent_staging})
  AND NOT EXISTS (SELECT 1 FROM {staging} AS s WHERE ({s_key}) = ({t_key}))
