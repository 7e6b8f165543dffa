-- the foreign keys, of any table, that reference the table: its primary key can be dropped
-- only with them
SELECT con.conname
FROM pg_constraint AS con
JOIN pg_class AS rel ON rel.oid = con.confrelid
JOIN pg_namespace AS n ON n.oid = rel.relnamespace
WHERE con.contype = 'f' AND n.nspname = %(schema)s AND rel.relname = %(table)s
