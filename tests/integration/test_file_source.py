"""source=files: the same source migrated from nx-27017 and from dump files gives the same
target and the same rejects; a dump cut in the middle of a document gives exactly one more
reject, naming the offset; every file format exports the same documents; a source_path outside
the allowed roots is refused before a byte is read."""
from __future__ import annotations


import bson
import pytest

from tests.data import EXPECTED_REJECTS, EXPECTED_ROWS, documents
from tools.write_dump import write

pytestmark = pytest.mark.integration


def reject_counts(migration, run_id):
    from collections import Counter

    return dict(Counter((r[0], r[1], r[2]) for r in migration.rejects(run_id)))


def test_a_bson_dump_migrates_like_the_live_source_and_a_cut_document_is_one_more_reject(
        migration, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTHMIGRATE_SOURCE_ROOTS", str(tmp_path))
    migration.seed(documents())
    migration.run()
    live = migration.snapshot(with_synced_at=False)

    dump = tmp_path / "dump"
    write(documents(), dump, "bson")
    whole = (dump / "users.bson").stat().st_size
    with open(dump / "users.bson", "ab") as fh:  # the dump was cut short inside an 11th user
        fh.write(bson.encode({"_id": bson.ObjectId(), "userId": "000000000099", "username": "cut"})[:20])
    migration.schema = f"{migration.schema}_f"
    dr = migration.run(target_schema=migration.schema, source="files", source_path=str(dump))
    assert migration.snapshot(with_synced_at=False) == live
    assert migration.counts() == EXPECTED_ROWS
    extra = {("users", "document", "truncated_document"): 1}
    assert reject_counts(migration, dr.run_id) == {**EXPECTED_REJECTS, **extra}
    (reason,) = [r[5] for r in migration.rejects(dr.run_id) if r[2] == "truncated_document"]
    assert reason.startswith(f"users.bson: byte offset {whole}: ") and "cut short" in reason
    report = migration.sql("SELECT report FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))[0][0]
    assert "[ok] reconcile users documents: exported 11 = transformed 11 = loaded 6 + rejected 5" in report

    # every other format of the same documents: the same target tables and the same rejects
    base = migration.schema
    for i, fmt in enumerate(["bson.gz", "archive", "jsonl", "jsonarray"]):
        folder = tmp_path / fmt.replace(".", "_")
        (path,) = [p for p in write(documents(), folder, fmt) if fmt == "archive"] or [folder]
        migration.schema = f"{base}_{i}"
        dr = migration.run(target_schema=migration.schema, source="files", source_path=str(path))
        assert migration.snapshot(with_synced_at=False) == live, fmt
        assert reject_counts(migration, dr.run_id) == EXPECTED_REJECTS, fmt


@pytest.mark.parametrize("fmt", ["bson.gz", "archive", "jsonl", "jsonarray", "memory"])
def test_every_file_format_exports_the_documents_the_bson_file_does(migration, tmp_path, monkeypatch, fmt):
    from authmigrate.config import RunConfig
    from authmigrate.export import combine, export_chunk, plan_chunks
    from authmigrate.transform_task import raw_batches

    monkeypatch.setenv("AUTHMIGRATE_SOURCE_ROOTS", str(tmp_path))
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(tmp_path / "staging"))
    data = documents()

    def exported(folder, path, run):
        cfg = RunConfig.from_params({"source": "files", "source_path": str(path), "target_schema": migration.schema},
                                    run)
        out = {}
        for name in data:
            got = combine([export_chunk(cfg, c) for c in plan_chunks(cfg, name)])
            out[name] = [bson.decode(r) for b in raw_batches(got["paths"], 100) for r in b.column(0).to_pylist()]
        return out

    write(data, tmp_path / "bson", "bson")
    reference = exported(tmp_path / "bson", tmp_path / "bson", "ref")
    assert {k: len(v) for k, v in reference.items()} == {k: len(v) for k, v in data.items()}
    if fmt == "memory":  # a second fsspec scheme, read through ObjectStoragePath like s3:// or gs://
        import fsspec
        from airflow.sdk.io import attach

        memory = fsspec.filesystem("memory")
        attach("memory", fs=memory)  # no provider registers memory://: an fsspec filesystem attached by hand
        for f in (tmp_path / "bson").iterdir():
            memory.pipe(f"/dumps/{f.name}", f.read_bytes())
        monkeypatch.setenv("AUTHMIGRATE_SOURCE_ROOTS", "memory://dumps")
        try:
            assert exported(None, "memory://dumps", fmt) == reference
        finally:
            memory.rm("/dumps", recursive=True)
        return
    folder = tmp_path / fmt
    (path,) = [p for p in write(data, folder, fmt) if fmt == "archive"] or [folder]
    assert exported(folder, path, fmt) == reference


def test_a_source_path_outside_the_allowed_roots_is_refused(tmp_path, monkeypatch):
    from authmigrate.config import ConfigError, RunConfig

    allowed = tmp_path / "dumps"
    allowed.mkdir()
    (allowed / "escape").symlink_to("/etc")
    monkeypatch.setenv("AUTHMIGRATE_SOURCE_ROOTS", f"{allowed},memory://dumps")
    for path in ("/etc", "file:///etc", f"{allowed}/../../etc", f"{allowed}/escape", "memory://other/x",
                 "s3://another-bucket/dump", "memory://dumps/../x"):
        with pytest.raises(ConfigError, match="allowed source roots|'..' segment"):
            RunConfig.from_params({"source": "files", "source_path": path}, "r")
    for path in (str(allowed), f"file://{allowed}/idp", "memory://dumps/idp"):
        assert RunConfig.from_params({"source": "files", "source_path": path}, "r").source_path == path
    with pytest.raises(ConfigError, match="needs source_path"):
        RunConfig.from_params({"source": "files"}, "r")


def test_a_csv_or_a_missing_file_fails_naming_what_was_expected(migration, tmp_path, monkeypatch):
    from authmigrate.config import ConfigError, RunConfig
    from authmigrate.export import plan_chunks

    monkeypatch.setenv("AUTHMIGRATE_SOURCE_ROOTS", str(tmp_path))
    (tmp_path / "users.csv").write_text("userId,username\n1,alice\n")
    cfg = RunConfig.from_params({"source": "files", "source_path": str(tmp_path)}, "r")
    with pytest.raises(ConfigError, match="CSV loses types"):
        plan_chunks(cfg, "users")
    with pytest.raises(ConfigError, match=r"no file for collection 'oauthClientApps' .* it has: \['users.csv'\]"):
        plan_chunks(cfg, "oauthClientApps")
    assert plan_chunks(cfg, "invitations") == [{"collection": "invitations", "kind": "absent", "index": 0}]


def test_a_chunked_bson_file_exports_the_same_documents_in_document_aligned_ranges(migration, tmp_path, monkeypatch):
    from authmigrate.config import RunConfig
    from authmigrate.export import export_chunk, plan_chunks
    from authmigrate.transform_task import raw_batches

    monkeypatch.setenv("AUTHMIGRATE_SOURCE_ROOTS", str(tmp_path))
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(tmp_path / "staging"))
    write(documents(), tmp_path / "dump", "bson")
    got = {}
    for chunk_size in (0, 3):
        cfg = RunConfig.from_params({"source": "files", "source_path": str(tmp_path / "dump"),
                                     "chunk_size": chunk_size, "target_schema": migration.schema}, f"c{chunk_size}")
        chunks = plan_chunks(cfg, "users")
        got[chunk_size] = (len(chunks), [r for c in chunks for b in raw_batches([export_chunk(cfg, c)["path"]], 100)
                                         for r in b.column(0).to_pylist()])
    assert got[0][0] == 1 and got[3][0] == 4  # 10 users: ranges of 3, 3, 3 and 1
    assert got[3][1] == got[0][1] == [bson.encode(d) for d in documents()["users"]]


def test_an_incremental_run_on_a_newer_dump_applies_its_updates_and_deletions(migration, tmp_path, monkeypatch):
    """The re-sync of a dump source: the same updatedAt watermark as the live source picks the
    changed documents of a newer dump, and its key-only pass (the dump's keys) deletes what the
    newer dump no longer has; a full run of that dump afterwards changes nothing."""
    import copy
    import datetime as dt

    from tests.data import user

    monkeypatch.setenv("AUTHMIGRATE_SOURCE_ROOTS", str(tmp_path))
    data = documents()
    write(data, tmp_path / "monday", "bson")
    migration.run(source="files", source_path=str(tmp_path / "monday"))
    stamps = dict(migration.sql("SELECT id, synced_at FROM users"))

    newer = copy.deepcopy(data)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
    for doc in newer["users"]:
        if doc.get("userId") in ("000000000003", "000000000004"):
            doc.update(lastName=f"Changed{doc['userId'][-1]}", updatedAt=now)
    newer["users"] = [d for d in newer["users"] if d.get("userId") != "000000000005"]
    newer["users"].append(user(50, "000000000050", "henry", "henry@example.com", updatedAt=now,
                               providerRoles=["standardUser"]))
    (writer,) = [r for r in newer["oauthRoles"] if r.get("oauthRoleName") == "writer"]
    writer.update(oauthUserIds=["*"], updatedAt=now)
    newer["adminAuditLog"] = [{"action": "login", "at": now} for _ in range(3)]  # no declaration maps it
    write(newer, tmp_path / "tuesday", "bson")

    dr = migration.run(mode="incremental", source="files", source_path=str(tmp_path / "tuesday"))
    after = dict(migration.sql("SELECT id, synced_at FROM users"))
    assert {uid for uid, ts in after.items() if stamps.get(uid) != ts} == {"000000000003", "000000000004",
                                                                          "000000000050"}
    assert "000000000005" not in after, "the key-only pass over the newer dump propagates the deletion"
    assert migration.sql("SELECT last_name FROM users WHERE id = '000000000003'") == [("Changed3",)]
    assert migration.sql("SELECT count(*) FROM client_role_users u JOIN client_roles r ON r.id = u.client_role_id "
                         "WHERE r.name = 'writer'") == [(0,)]
    counts = migration.sql("SELECT counts FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))[0][0]
    assert counts["collections"]["users"]["source_documents"] < len(newer["users"]), "read only what changed"
    assert counts["census"]["unmapped_collections"] == {"adminAuditLog": 3}

    state = migration.snapshot(with_synced_at=False)
    migration.run(mode="full", source="files", source_path=str(tmp_path / "tuesday"))
    assert migration.snapshot(with_synced_at=False) == state
    assert migration.counts()["users"] == EXPECTED_ROWS["users"]  # +1 new, -1 deleted
