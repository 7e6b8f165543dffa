-- the load transaction commits without waiting for the WAL flush: a PostgreSQL crash right
-- after the commit can lose that load (never half of it); the next run converges the target again
SET LOCAL synchronous_commit = off
