-- the loaded rows' count and the sum of the first 60 bits of each row's md5 (a multiset
-- checksum, as data-diff compares segments): equal to the file's when both hold the same rows
SELECT count(*), coalesce(sum(('x' || substr(md5({row_text}), 1, 15))::bit(60)::bigint), 0)
FROM {target}
