"""The whole DAG with dag.test() against real PostgreSQL, a real nx-27017 server, and Airflow."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from authmigrate.registry import COLLECTIONS
from tests.data import EXPECTED_REJECTS, EXPECTED_ROWS, SECRETS, documents

pytestmark = pytest.mark.integration

ALL_TASKS = {f"{c}.{s}" for c in COLLECTIONS for s in ("plan", "export", "transform", "load", "verify")}
ALL_TASKS |= {"prepare", "validate"}
# off unless asked for: the session sync (sessions=False in these runs), cache invalidation, cutover
OPTIONAL = {"sessions.export", "sessions.transform", "sessions.load", "sessions.verify", "invalidate_cache", "cutover"}
EXPECTED_STATES = {**{t: "success" for t in ALL_TASKS | {"release_lock"}}, **{t: "skipped" for t in OPTIONAL}}


def reject_counts(rows) -> dict:
    return dict(Counter((r[0], r[1], r[2]) for r in rows))


def test_first_run_migrates_exactly_and_rerun_is_identical(migration):
    migration.seed(documents())
    dr = migration.run()
    assert migration.last_states == EXPECTED_STATES
    assert migration.counts() == EXPECTED_ROWS

    users = {r[0]: r[1:] for r in migration.sql("SELECT id, username, email, password_hash, mfa_secret FROM users")}
    assert set(users) == {"000000000001", "000000000002", "000000000003", "000000000004", "000000000005",
                          "000000000010"}
    assert users["000000000002"][0] == "bob"  # the newer of the two userId 2 documents won
    assert users["000000000003"][1] == "Carol@Example.com"  # stored as given
    assert users["000000000001"][2] == SECRETS[0]  # secrets migrate; they only never show in rejects/logs
    assert migration.sql("SELECT identity_provider_user_id FROM users WHERE id = '000000000010'") == [("4242",)]
    assert sorted(migration.sql("SELECT user_id, role_id FROM user_roles")) == [
        ("000000000001", "oauthUser"), ("000000000001", "standardUser"), ("000000000002", "standardUser"),
        ("000000000003", "standardUser"), ("000000000004", "standardUser"), ("000000000010", "oauthUser"),
    ]
    # owners: back-filled from the legacy array, kept, or NULL with an explained reject
    assert dict(migration.sql("SELECT id, owner_user_id FROM oauth_client_apps")) == {
        "100001": "000000000001", "3f0c1c5e-8d1e-4c7b-9a53-2f9a3c4b5d6e": "000000000002",
        "100003": None, "100005": None,
    }
    # "*" grants preserved as a flag, explicit members kept beside it
    grants = dict(migration.sql("SELECT name, grants_all_users FROM client_roles"))
    assert grants == {"reader": True, "admin": False, "writer": True}
    assert sorted(migration.sql(
        "SELECT r.name, u.user_id FROM client_role_users u JOIN client_roles r ON r.id = u.client_role_id")) == [
        ("admin", "000000000001"), ("admin", "000000000003"), ("writer", "000000000002")]

    rejects = migration.rejects(dr.run_id)
    assert reject_counts(rejects) == EXPECTED_REJECTS
    assert all(r[5] for r in rejects), "every reject has a human reason"
    documents_json = "\n".join(r[6] or "" for r in rejects)
    assert "[REDACTED]" in documents_json
    for secret in SECRETS:
        assert secret not in documents_json

    run = migration.sql("SELECT status, counts, report FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))
    assert run[0][0] == "success"
    assert run[0][1]["tables"] == EXPECTED_ROWS
    assert "PASSED" in run[0][2]

    from authmigrate.report import run_folder

    folder = run_folder(dr.run_id)
    markdown = (folder / "report.md").read_text()
    assert "PASSED" in markdown and "| task | seconds |" in markdown and "users.load" in markdown
    assert "Examples (documents redacted)" in markdown and "duplicate_email" in markdown
    assert "<table>" in (folder / "report.html").read_text()
    assert (folder / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for secret in SECRETS:
        assert secret not in markdown

    before = migration.snapshot()
    dr2 = migration.run()
    assert migration.snapshot() == before, "a second run on the same source must change nothing (synced_at included)"
    assert reject_counts(migration.rejects(dr2.run_id)) == EXPECTED_REJECTS
    changes = migration.sql("SELECT counts->'changes' FROM authmigrate.runs WHERE run_id = %s", (dr2.run_id,))[0][0]
    assert all(v == {"inserted": 0, "updated": 0, "deleted": 0} for c in changes.values() for v in c.values()), changes


def test_rerun_reflects_updates_deletions_and_role_removals(migration):
    migration.seed(documents())
    migration.run()
    before = migration.snapshot()

    alice = migration.db.users.find_one({"userId": "000000000001"})
    alice["lastName"] = "Renamed"
    migration.db.users.replace_one({"_id": alice["_id"]}, alice)
    migration.db.users.delete_one({"userId": "000000000005"})
    admin = migration.db.oauthRoles.find_one({"oauthRoleName": "admin", "oauthUserIds": {"$exists": True},
                                              "owner": "000000000002"})
    admin["oauthUserIds"] = [3, "999999999999"]  # alice removed from the role
    migration.db.oauthRoles.replace_one({"_id": admin["_id"]}, admin)
    migration.db.oauthClientApps.delete_one({"oauthClientAppId": "100005"})  # consent-7's app: it goes too
    consent = migration.db.userAppConsents.find_one({"consentId": "consent-1"})
    migration.db.userAppConsents.replace_one({"_id": consent["_id"]}, {**consent, "consentedScopes": ["openid"]})
    invite = migration.db.invitations.find_one({"inviteId": "invite-1"})
    migration.db.invitations.replace_one({"_id": invite["_id"]}, {**invite, "revokedAt": invite["expiresAt"]})
    migration.db.invitations.delete_one({"inviteId": "invite-2"})

    migration.run()
    after = migration.snapshot()
    assert sorted(migration.sql("SELECT consent_id, scope FROM user_app_consent_scopes")) == [
        ("consent-1", "openid"), ("consent-2", "openid")]
    assert [r[0] for r in migration.sql("SELECT id FROM user_app_consents ORDER BY 1")] == ["consent-1", "consent-2"]
    assert migration.sql("SELECT id, revoked_at IS NOT NULL FROM invitations ORDER BY 1") == [
        ("invite-1", True), ("invite-4", False)]
    assert migration.sql("SELECT invitation_id FROM invitation_roles") == [("invite-1",)]
    assert migration.sql("SELECT last_name FROM users WHERE id = '000000000001'") == [("Renamed",)]
    assert migration.sql("SELECT count(*) FROM users WHERE id = '000000000005'") == [(0,)]
    assert migration.sql("SELECT count(*) FROM oauth_client_apps WHERE id = '100005'") == [(0,)]
    assert sorted(migration.sql(
        "SELECT r.name, u.user_id FROM client_role_users u JOIN client_roles r ON r.id = u.client_role_id")) == [
        ("admin", "000000000003"), ("writer", "000000000002")]
    # untouched rows are not rewritten
    untouched = [r for r in before["users"] if r[0] not in ("000000000001", "000000000005")]
    assert [r for r in after["users"] if r[0] != "000000000001"] == untouched
    assert migration.counts()["users"] == EXPECTED_ROWS["users"] - 1


def test_dry_run_writes_nothing(migration):
    migration.seed(documents())
    dr = migration.run(dry_run=True)
    # nothing loaded, nothing to verify
    assert migration.last_states == {**EXPECTED_STATES, **{f"{c}.verify": "skipped" for c in COLLECTIONS}}
    assert migration.sql("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s",
                         (migration.schema,)) == [(0,)]
    # not even the run's bookkeeping row (in a fresh database, no bookkeeping schema at all)
    if migration.sql("SELECT to_regclass('authmigrate.runs')") != [(None,)]:
        assert migration.sql("SELECT count(*) FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,)) == [(0,)]


def tries(dr) -> dict[str, int]:
    return {ti.task_id: ti.try_number for ti in dr.get_task_instances()}


def test_reject_ratio_over_the_limit_fails_the_run(migration):
    migration.seed(documents())
    dr = migration.run(expect="failed", max_reject_ratio=0.01)
    assert migration.last_states["validate"] == "failed"
    assert tries(dr)["validate"] == 1, "a validation finding is not retried"
    assert {t: s for t, s in migration.last_states.items() if t in ALL_TASKS - {"validate"}} == {
        t: "success" for t in ALL_TASKS - {"validate"}}
    assert migration.last_states["cutover"] == "upstream_failed"
    status, report = migration.sql("SELECT status, report FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))[0]
    assert status == "failed"
    assert "[FAILED] reject ratio" in report


def test_collections_subset_runs_only_those_and_checks_references_in_the_target(migration):
    migration.seed(documents())
    migration.run()
    before = migration.snapshot()
    migration.run(collections=["oauthRoles"])
    assert {t for t, s in migration.last_states.items() if s == "skipped"} == OPTIONAL | {
        f"{c}.{s}" for c in COLLECTIONS if c != "oauthRoles" for s in ("plan", "export", "transform", "load", "verify")}
    assert migration.snapshot() == before


def test_missing_source_collection_fails_with_a_clear_message(migration, capfd):
    migration.seed(documents())
    dr = migration.run(expect="failed", source_oauthRoles="oauthroles")
    assert migration.last_states["oauthRoles.plan"] == "failed"  # the export's first step
    assert tries(dr)["oauthRoles.plan"] == 1, "a missing collection is not retried"
    assert migration.last_states["oauthRoles.export"] == "upstream_failed"
    assert migration.last_states["validate"] == "upstream_failed"
    out = "".join(capfd.readouterr())
    assert "collection 'oauthroles' not found" in out and "Mongoose" in out
    assert "(it has: ['appSettings', 'invitations', 'oauthClientApps', 'oauthRoles', 'userAppConsents', 'users'])" in out
    # a failed run never keeps the target locked: the release_lock teardown ran anyway
    from authmigrate import lock
    from authmigrate.config import RunConfig

    assert migration.last_states["release_lock"] == "success"
    key = lock.lock_key(RunConfig.from_params({"target_schema": migration.schema}, "any"))
    assert migration.redis.exists(key) == 0


def test_generated_source_reconciles_against_mongodb(migration):
    from tools.seed_mongo import generate

    docs = generate(1500, seed=7)
    migration.seed(docs)
    dr = migration.run()
    for collection, table in (("users", "users"), ("oauthClientApps", "oauth_client_apps"),
                              ("oauthRoles", "client_roles")):
        source = migration.db[collection].count_documents({})
        loaded = migration.sql(f'SELECT count(*) FROM "{table}"')[0][0]
        rejected = migration.sql("SELECT count(*) FROM authmigrate.rejects WHERE run_id = %s AND collection = %s "
                                 "AND scope = 'document'", (dr.run_id, collection))[0][0]
        assert source == loaded + rejected > 0
        assert rejected < 0.1 * source
    constraints = {r[0] for r in migration.sql(
        "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %s",
        (migration.schema,))}
    assert {"users_username_key", "users_email_key", "users_identity_provider_user_key",
            "client_role_users_user_id_fkey", "user_roles_user_id_fkey"} <= constraints


def test_invalid_params_are_refused_before_anything_runs(dag):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"batch_size": 0})
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"target_schema": 'public"; DROP TABLE users; --'})


@pytest.mark.parametrize("executor", ["local", "none"])
def test_make_migrate_fails_a_too_dirty_source_at_once_and_its_last_lines_say_why(migration, tmp_path, executor):
    """`make migrate` (tools.migrate), under LocalExecutor (its default) and in-process: the reject
    ratio over the limit fails validate on its first try; the command exits non-zero soon after
    validate started, its closing lines naming the ratio and what to do. (Retries are on in the
    tests, with tiny delays: a retry would show.)"""
    import re
    import time
    from datetime import datetime

    from tests.integration.faults import dag_subprocess

    migration.seed(documents())
    conf = {**migration.dag.authmigrate_defaults, "target_schema": migration.schema, "max_reject_ratio": 0.01,
            "sessions": False}
    proc = dag_subprocess(conf, tmp_path / "migrate.log", executor)
    try:
        proc.wait(timeout=300)
    finally:
        proc.log.close()
    ended = time.time()
    out = (tmp_path / "migrate.log").read_text()
    assert proc.returncode != 0, out[-3000:]
    assert ("authmigrate: LocalExecutor" in out) == (executor == "local"), out[:2000]
    # the validate task's first line (both modes log task_id=... on a task's lines)
    started = re.search(r"^(\d{4}-\d\d-\d\d[T ][\d:.]+(?:Z|\+00:00)) .*\btask_id=validate\b", out, re.M)
    assert started, out[-3000:]
    assert ended - datetime.fromisoformat(started[1].replace("Z", "+00:00")).timestamp() < 60
    last = out.strip().splitlines()[-4:]
    assert "FAILED" in last[0] and "validate failed (try 1)" in last[1], last
    assert "[FAILED] reject ratio: 15/35 = 42.86% (max 1.00%)" in last[2], last
    assert "What to do:" in last[3] and "max_reject_ratio" in last[3], last
    assert "try 2" not in out


def test_the_census_lists_what_the_run_does_not_take_and_unmapped_fail_fails_on_it(migration):
    """Also: every committed table emits an asset event (checked on the first run)."""
    migration.seed(documents())
    migration.db.create_collection("adminAuditLog")
    migration.db.adminAuditLog.insert_many([{"action": f"a{i}", "userId": "000000000001"} for i in range(3)])
    for user_id in ("000000000001", "000000000002"):
        doc = migration.db.users.find_one({"userId": user_id})
        migration.db.users.replace_one({"_id": doc["_id"]}, {**doc, "favouriteColour": "red"})

    dr = migration.run()
    assert_asset_events(migration, dr)  # shares this run: one Airflow run fewer
    report, counts = migration.sql("SELECT report, counts FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))[0]
    assert "## Source census: what this run does not take" in report
    assert "- `adminAuditLog`: 3 documents" in report
    assert "- unmapped `favouriteColour`: in 2 documents, types string ×2" in report
    census = counts["census"]
    assert census["unmapped_collections"] == {"adminAuditLog": 3}
    users = census["collections"]["users"]
    assert users["documents"] == len(documents()["users"]) == 10  # every document, dirty ones included
    assert users["paths"]["favouriteColour"] == {"documents": 2, "types": {"string": 2}, "mark": "unmapped"}
    assert users["paths"]["userId"]["mark"] == "mapped"

    dr = migration.run(expect="failed", unmapped="fail")
    assert migration.last_states["validate"] == "failed" and tries(dr)["validate"] == 1
    report = migration.sql("SELECT report FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))[0][0]
    failed = [line for line in report.splitlines() if "[FAILED] census (unmapped=fail)" in line]
    assert failed and "collection 'adminAuditLog' (3 documents) is not mapped" in failed[0]
    assert "users.favouriteColour (2 documents) is not mapped" in failed[0]


def assert_asset_events(migration, dr) -> None:
    """Every table the run committed emitted an asset event named after the target."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    from tests.integration.conftest import TABLES

    with create_session() as session:
        events = {e.asset.uri: e.extra for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == dr.run_id)}
    db = migration.pg_uri.rsplit("/", 1)[1]
    loaded = [t for t in TABLES if t not in ("permissions", "role_permissions", "sessions")]  # sessions: off here
    assert set(events) == {f"postgres://127.0.0.1:5432/{db}/{migration.schema}/{t}" for t in loaded}
    users = events[f"postgres://127.0.0.1:5432/{db}/{migration.schema}/users"]
    assert users == {"run_id": dr.run_id, "mode": "full", "inserted": 6, "updated": 0, "deleted": 0}


def test_users_accepted_while_reading_give_the_target_of_a_transform_that_accepts_them(migration, monkeypatch):
    """The users export from the server hands its batches to a worker process as it reads
    (``AcceptWhileReading``; here for any size, in batches of 100): the run's target and rejects
    equal those of a run where the transform accepts every document itself."""
    from authmigrate import export
    from tools.seed_mongo import generate

    monkeypatch.setattr(export, "ACCEPT_WHILE_READING_MIN_DOCUMENTS", 0)
    migration.seed({c: documents()[c] + generate(1500, seed=11, dirty_ratio=0.2)[c] for c in documents()})
    runs = {}
    for label, flag in (("while reading", "true"), ("in the transform", "false")):
        monkeypatch.setenv("AUTHMIGRATE_ACCEPT_WHILE_EXPORTING", flag)
        dr = migration.run(batch_size=100)
        accepted = dr.get_task_instance("users.export", map_index=0).xcom_pull(task_ids="users.export",
                                                                              map_indexes=0)["accepted"]
        assert (accepted is not None) == (flag == "true"), label  # the worker ran, and ended well
        rejects = sorted((r[:6] for r in migration.rejects(dr.run_id)), key=repr)
        runs[label] = migration.snapshot(with_synced_at=False), rejects
    (target, rejects), (want_target, want_rejects) = runs.values()
    assert target == want_target and rejects == want_rejects
    assert len(rejects) > 100 and len(target["users"]) > 1000
