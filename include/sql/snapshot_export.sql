-- the open transaction's snapshot, for other connections to see the same data (snapshot_set)
SELECT pg_export_snapshot()
