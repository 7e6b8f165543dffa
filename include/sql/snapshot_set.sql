-- first in a repeatable-read transaction: see what the exporting transaction sees
SET TRANSACTION SNAPSHOT {snapshot}
