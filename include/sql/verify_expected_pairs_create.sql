-- the exported (parent, child) pairs of a join table (verify_pairs compares them per parent)
CREATE TEMP TABLE {expected} (key text NOT NULL, part text NOT NULL) ON COMMIT DROP
