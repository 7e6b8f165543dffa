"""Staging left by killed runs is removed by the next successful run of the same target, and
nothing else is: not a live run's, not another target's, not a folder nobody claims."""
from __future__ import annotations

import os

from authmigrate.config import DAG_ID, RunConfig
from authmigrate.staging import OWNER_FILE, STALE_DRY_RUN_SECONDS, collection_dir, remove_stale

LOCK_TAKEN_AT = 1_800_000_000.0  # the successful run took the lock then (mtimes are set explicitly)


def run_dir(run_id: str, written_at: float, **params) -> RunConfig:
    cfg = RunConfig.from_params({"target_schema": "public", **params}, run_id)
    folder = collection_dir(cfg, "users", "export")
    (folder / "chunk-0.parquet").write_bytes(b"x" * 1000)
    for path in [*cfg.staging_dir().rglob("*"), cfg.staging_dir()]:
        os.utime(path, (written_at, written_at))
    return cfg


def test_only_dead_runs_of_the_same_target_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(tmp_path))
    me = run_dir("me", LOCK_TAKEN_AT + 5)
    killed = run_dir("killed", LOCK_TAKEN_AT - 3600)
    alive_after_our_lock = run_dir("lost-its-lock", LOCK_TAKEN_AT + 1)
    other_target = run_dir("other-schema", LOCK_TAKEN_AT - 3600, target_schema="tenant_b")
    other_conn = run_dir("other-conn", LOCK_TAKEN_AT - 3600, postgres_conn_id="pg_other")
    old_dry = run_dir("old-dry-run", LOCK_TAKEN_AT - STALE_DRY_RUN_SECONDS - 60, dry_run=True)
    young_dry = run_dir("young-dry-run", LOCK_TAKEN_AT - 60, dry_run=True)
    unclaimed = tmp_path / DAG_ID / "from-an-older-version"
    (unclaimed / "users").mkdir(parents=True)
    os.utime(unclaimed, (LOCK_TAKEN_AT - 3600,) * 2)

    monkeypatch.setattr("authmigrate.staging.time.time", lambda: LOCK_TAKEN_AT + 10)
    removed = remove_stale(me, LOCK_TAKEN_AT)

    assert sorted(removed) == ["killed", "old-dry-run"]
    assert not killed.staging_dir().exists() and not old_dry.staging_dir().exists()
    for kept in (me, alive_after_our_lock, other_target, other_conn, young_dry):
        assert (kept.staging_dir() / OWNER_FILE).exists(), kept.run_id
    assert unclaimed.exists()


def test_a_file_written_after_the_lock_anywhere_in_the_tree_keeps_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(tmp_path))
    me = run_dir("me", LOCK_TAKEN_AT + 5)
    busy = run_dir("busy", LOCK_TAKEN_AT - 3600)
    deep = next(busy.staging_dir().rglob("chunk-0.parquet"))
    os.utime(deep, (LOCK_TAKEN_AT + 2,) * 2)
    assert remove_stale(me, LOCK_TAKEN_AT) == []
    assert remove_stale(me, None) == [], "without the lock's time nothing is judged stale"
    assert busy.staging_dir().exists()


def test_two_tasks_creating_the_staging_root_at_once_both_succeed(tmp_path, monkeypatch):
    """Tasks run side by side (LocalExecutor): both may find the root missing, and the second
    mkdir finds it made. That is not a failure (it cost a retry of users.export in the e2e run)."""
    from pathlib import Path

    root = tmp_path / "staging"
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(root))
    real_exists = Path.exists

    def exists_but_the_other_task_wins(path):
        if path == root and not real_exists(path):
            root.mkdir(mode=0o700)  # the other task's mkdir, between our check and ours
            return False
        return real_exists(path)

    monkeypatch.setattr(Path, "exists", exists_but_the_other_task_wins)
    cfg = RunConfig.from_params({"target_schema": "public"}, "side-by-side")
    folder = collection_dir(cfg, "users", "export")
    assert folder.is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"
