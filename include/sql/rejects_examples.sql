-- a few examples per reason (documents are stored redacted)
SELECT collection, reason_code, source_id, element, reason, left(document::text, 240)
FROM (
    SELECT r.*, row_number() OVER (PARTITION BY collection, reason_code ORDER BY source_id, element) AS n
    FROM authmigrate.rejects AS r
    WHERE run_id = %(run_id)s
) AS ranked
WHERE n <= %(per_reason)s
ORDER BY collection, reason_code, source_id
