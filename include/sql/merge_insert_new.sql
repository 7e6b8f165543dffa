-- reference and join rows: add what is missing, leave what is there.
INSERT INTO {target} ({columns})
SELECT {columns} FROM {staging}
ON CONFLICT DO NOTHING
