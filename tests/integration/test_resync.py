"""Scheduled re-syncs: incremental mode, key-only deletion pass, watermarks."""
from __future__ import annotations

import datetime as dt

import pytest

from authmigrate.registry import COLLECTIONS

from tests.data import EXPECTED_ROWS, documents, user

pytestmark = pytest.mark.integration


def synced(migration, table="users") -> dict:
    return dict(migration.sql(f'SELECT id, synced_at FROM "{table}"'))


def watermarks(migration) -> dict:
    return dict(migration.sql("SELECT collection, watermark FROM authmigrate.watermarks WHERE target_schema = %s",
                              (migration.schema,)))


def test_incremental_resync_touches_only_changed_rows_and_propagates_deletions(migration):
    migration.seed(documents())
    migration.run()
    marks = watermarks(migration)
    assert set(marks) == set(COLLECTIONS)

    # an unchanged source: nothing is rewritten, and the report says so
    before, stamps = migration.snapshot(), synced(migration)
    dr = migration.run(mode="incremental", overlap_seconds=0)
    assert migration.snapshot() == before
    report = migration.sql("SELECT report FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))[0][0]
    assert "No changes: the target already matched the source" in report
    exported = migration.sql("SELECT counts FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))[0][0]
    # with no overlap, only the document without updatedAt (always treated as changed) was read again
    assert exported["collections"]["users"]["source_documents"] == 1
    assert exported["collections"]["oauthClientApps"]["source_documents"] == 0

    # N changed documents, one new, one deleted, a member removed from a role
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
    for uid, last in (("000000000003", "Changed3"), ("000000000004", "Changed4")):
        doc = migration.db.users.find_one({"userId": uid})
        doc.update(lastName=last, updatedAt=now)
        migration.db.users.replace_one({"_id": doc["_id"]}, doc)
    migration.db.users.insert_one(user(50, "000000000050", "henry", "henry@example.com", updatedAt=now,
                                       providerRoles=["standardUser"]))
    migration.db.users.delete_one({"userId": "000000000005"})
    role = migration.db.oauthRoles.find_one({"oauthRoleName": "writer"})
    role.update(oauthUserIds=["*"], updatedAt=now)
    migration.db.oauthRoles.replace_one({"_id": role["_id"]}, role)

    dr = migration.run(mode="incremental")
    after = synced(migration)
    touched = {uid for uid, ts in after.items() if stamps.get(uid) != ts}
    assert touched == {"000000000003", "000000000004", "000000000050"}, "O(N): only changed rows are written"
    assert "000000000005" not in after, "the key-only pass propagates deletions"
    assert migration.sql("SELECT last_name FROM users WHERE id = '000000000003'") == [("Changed3",)]
    assert migration.sql("SELECT count(*) FROM client_role_users u JOIN client_roles r ON r.id = u.client_role_id "
                         "WHERE r.name = 'writer'") == [(0,)]
    assert watermarks(migration)["users"] > marks["users"]

    # a full run afterwards finds the target already equal to the source
    incremental_state = migration.snapshot(with_synced_at=False)
    migration.run(mode="full")
    assert migration.snapshot(with_synced_at=False) == incremental_state
    assert migration.counts()["users"] == EXPECTED_ROWS["users"]  # +1 new, -1 deleted


def test_incremental_batch_colliding_with_an_existing_row_is_rejected_not_fatal(migration):
    migration.seed(documents())
    migration.run()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
    migration.db.users.insert_one(user(60, "000000000060", "alice", "ALICE@example.com", updatedAt=now))
    dr = migration.run(mode="incremental")
    reasons = migration.sql("SELECT reason_code FROM authmigrate.rejects WHERE run_id = %s AND collection = 'users' "
                            "AND source_id = %s", (dr.run_id, "65a000000000000000000060"))
    assert reasons == [("duplicate_username",)]
    assert migration.sql("SELECT count(*) FROM users WHERE id = '000000000060'") == [(0,)]


def test_watermarks_advance_only_after_a_passing_validation(migration):
    migration.seed(documents())
    migration.run()
    marks = watermarks(migration)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
    doc = migration.db.users.find_one({"userId": "000000000003"})
    doc.update(lastName="Later", updatedAt=now)
    migration.db.users.replace_one({"_id": doc["_id"]}, doc)
    migration.run(expect="failed", mode="incremental", max_reject_ratio=0.0)
    assert watermarks(migration) == marks
    migration.run(mode="incremental")
    assert watermarks(migration)["users"] > marks["users"]
