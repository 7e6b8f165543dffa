"""The batched users transform (bounded memory, used by full runs) gives exactly the result
of the one-frame transform on the same export, whatever the batch size: same rows, same
rejects (documents rejected for a duplicate in *another* batch included), same counts."""
from __future__ import annotations

import bson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bson import ObjectId

from authmigrate import transform as tf
from authmigrate import transform_task as tt
from authmigrate.registry import COLLECTIONS
from authmigrate.staging import read_frame, write_frame
from tests.data import documents
from tools.seed_mongo import generate


def _export(tmp_path, raws: list[bytes]):
    path = tmp_path / "documents.parquet"
    pq.write_table(pa.table({"bson": pa.array(raws, pa.binary())}), path)
    return path


@pytest.fixture(scope="module")
def raws() -> list[bytes]:
    docs = documents()["users"] + generate(1500, seed=7, dirty_ratio=0.25)["users"]
    # emails equal only under str.casefold (not under lower()): ß folds to ss; an ASCII pair too
    base = {k: v for k, v in documents()["users"][0].items() if k not in ("_id", "providerRoles")}
    for n, email in ((990001, "STRASSE@Example.com"), (990002, "straße@example.com"),
                     (990003, "Zoë@Example.com"), (990004, "ZOË@EXAMPLE.COM")):
        docs.insert(n % 7 * 200, {**base, "userId": f"000000{n}", "username": f"u{n}", "email": email,
                                  "identityProviderUserId": None, "createdAt": base["createdAt"]})
    out = []
    for i, d in enumerate(docs):
        d = {**d, "_id": d.get("_id", ObjectId(f"{i:024x}"))}
        out.append(bson.encode(d))
    # a document that is not valid UTF-8, in the middle
    bad = bson.encode({"_id": ObjectId(), "userId": "999999999999", "username": "x"}).replace(b"x\x00", b"\xff\x00")
    return out[:700] + [bad] + out[700:]


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype(object).where(df.notna(), None)
    return df.sort_values(list(df.columns), key=lambda s: s.map(repr)).reset_index(drop=True)


@pytest.mark.parametrize("batch", [7, 97, 100_000])
def test_batched_users_transform_equals_the_one_frame_transform(tmp_path, raws, monkeypatch, batch):
    monkeypatch.setattr(tt, "MIN_TRANSFORM_BATCH", 1)
    docs, undecodable = tf.decode_documents(raws)
    whole = tf.transform_users(tf.documents_frame(docs, COLLECTIONS["users"].projection))
    assert whole.counts["rejected_documents"] > 50 and len(undecodable) == 1  # the data is dirty enough
    folded = whole.rejects[whole.rejects["reason"].str.contains("'strasse@example.com'|'zoë@example.com'")]
    assert len(folded) == 2, "the case-folded email pairs are duplicates"

    out = tmp_path / "out"
    out.mkdir()
    result, files, newest, bad = tt.transform_users_batched(str(_export(tmp_path, raws)), out, batch)

    assert len(bad) == 1 and bad[0]["reason_code"] == "undecodable_document"
    for name in ("users", "user_roles"):  # both as the load and verify read them back
        got = read_frame(files[name])
        want = read_frame(write_frame(whole.tables[name], tmp_path / f"{name}.whole.parquet"))
        assert got.dtypes.to_dict() == want.dtypes.to_dict()
        pd.testing.assert_frame_equal(_sorted(got), _sorted(want))
    pd.testing.assert_frame_equal(_sorted(result.tables["roles"]), _sorted(whole.tables["roles"]))
    pd.testing.assert_frame_equal(_sorted(result.extras["legacy_owners"]), _sorted(whole.extras["legacy_owners"]))
    pd.testing.assert_frame_equal(_sorted(result.rejects), _sorted(whole.rejects))
    assert result.counts == whole.counts
    assert newest == max(d["updatedAt"] for d in docs if isinstance(d.get("updatedAt"), type(newest)))
    assert sorted(p.name for p in out.iterdir()) == ["user_roles.parquet", "users.parquet"]  # no leftovers


@pytest.mark.parametrize("workers", [2, 3])
def test_users_transform_in_worker_processes_equals_the_in_process_one(tmp_path, raws, monkeypatch, workers):
    """The first step run by worker processes over runs of the export's row groups (what a large
    export gets): the same files, rejects, counts, newest updatedAt and census as in-process, and
    the workers' part folders are gone."""
    from authmigrate.census import FieldCensus

    export = tmp_path / "documents.parquet"
    pq.write_table(pa.table({"bson": pa.array(raws, pa.binary())}), export, row_group_size=97)
    runs = {}
    for label, count in (("in_process", "1"), ("workers", str(workers))):
        monkeypatch.setenv("AUTHMIGRATE_TRANSFORM_WORKERS", count)
        monkeypatch.setattr(tt, "TRANSFORM_WORKERS_MIN_ROWS", 0)
        monkeypatch.setattr(tt, "MIN_TRANSFORM_BATCH", 1)
        out = tmp_path / label
        out.mkdir()
        census = FieldCensus()
        result, files, newest, bad = tt.transform_users_batched(str(export), out, 50, census)
        runs[label] = result, {n: read_frame(f) for n, f in files.items()}, newest, bad, census.paths()
        assert sorted(p.name for p in out.iterdir()) == ["user_roles.parquet", "users.parquet"]
    (result, frames, newest, bad, paths), (w_result, w_frames, w_newest, w_bad, w_paths) = runs.values()
    for name in frames:
        pd.testing.assert_frame_equal(w_frames[name], frames[name])  # same rows in the same order
    pd.testing.assert_frame_equal(w_result.rejects, result.rejects)
    pd.testing.assert_frame_equal(w_result.extras["legacy_owners"], result.extras["legacy_owners"])
    assert w_result.counts == result.counts and (w_newest, w_bad) == (newest, bad)
    assert w_paths == paths and paths["providerRoles[]"]["documents"] > 1000


def _users_run(export, out, **kwargs):
    from authmigrate.census import FieldCensus

    out.mkdir()
    census = FieldCensus()
    result, files, newest, bad = tt.transform_users_batched(str(export), out, 50, census, **kwargs)
    return result, {n: read_frame(f) for n, f in files.items()}, newest, bad, census.paths()


def _assert_same_run(got, want):
    (result, frames, newest, bad, paths), (w_result, w_frames, w_newest, w_bad, w_paths) = got, want
    for name in w_frames:
        pd.testing.assert_frame_equal(frames[name], w_frames[name])  # same rows in the same order
    pd.testing.assert_frame_equal(result.rejects, w_result.rejects)
    pd.testing.assert_frame_equal(result.extras["legacy_owners"], w_result.extras["legacy_owners"])
    assert result.counts == w_result.counts and (newest, bad) == (w_newest, w_bad) and paths == w_paths


def _accept_streamed(export, folder, row_groups: int) -> dict:
    """What the users export leaves when its worker took the first ``row_groups`` row groups:
    the worker of ``--stream``, fed those row groups as an Arrow IPC stream."""
    stream = folder / "stream.arrow"
    folder.mkdir()
    source = pq.ParquetFile(export)
    with pa.ipc.new_stream(stream, source.schema_arrow) as writer:
        for i in range(row_groups):
            writer.write_table(source.read_row_group(i))
    spec = {"out": str(folder), "batch_size": 50, "result": str(folder / "result.pickle"), "what": "test"}
    with open(stream, "rb") as fh:
        assert tt.start_worker(spec, "--stream", stdin=fh).wait(60) == 0
    return {"result": spec["result"], "rows": sum(source.metadata.row_group(i).num_rows for i in range(row_groups))}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("taken", [1, 8, 16])  # of the export's 16 row groups
def test_users_transform_after_the_export_accepted_a_prefix_equals_the_whole_one(tmp_path, raws, monkeypatch,
                                                                                  workers, taken):
    """The users export from a server accepts documents while it reads (``AcceptWhileReading``):
    the transform then accepts only the documents after those, in-process or in workers, with
    exactly the files, rejects, counts and census of a transform that accepts them all; the
    prefix's files stay, so a retried transform takes them again."""
    monkeypatch.setenv("AUTHMIGRATE_TRANSFORM_WORKERS", workers)
    monkeypatch.setattr(tt, "TRANSFORM_WORKERS_MIN_ROWS", 0)
    monkeypatch.setattr(tt, "MIN_TRANSFORM_BATCH", 1)
    export = tmp_path / "documents.parquet"
    pq.write_table(pa.table({"bson": pa.array(raws, pa.binary())}), export, row_group_size=97)
    assert pq.ParquetFile(export).metadata.num_row_groups == 16
    whole = _users_run(export, tmp_path / "whole")
    prefix = _accept_streamed(export, tmp_path / "accepted", taken)
    for attempt in ("first", "retried"):
        _assert_same_run(_users_run(export, tmp_path / attempt, prefix=prefix), whole)
        assert sorted(p.name for p in (tmp_path / attempt).iterdir()) == ["user_roles.parquet", "users.parquet"]
        assert {"users.accepted.parquet", "user_roles.accepted.parquet"} <= {
            p.name for p in (tmp_path / "accepted").iterdir()}


def test_a_prefix_that_is_not_this_exports_is_not_used(tmp_path, raws, monkeypatch, caplog):
    """A prefix whose count or files do not match (a worker's result of another export, files
    removed, a count not at a row group) is set aside with a line, and every document is
    accepted by the transform: the same result."""
    monkeypatch.setattr(tt, "MIN_TRANSFORM_BATCH", 1)
    export = tmp_path / "documents.parquet"
    pq.write_table(pa.table({"bson": pa.array(raws, pa.binary())}), export, row_group_size=97)
    whole = _users_run(export, tmp_path / "whole")
    prefix = _accept_streamed(export, tmp_path / "accepted", 5)
    for k, (bad, why) in enumerate([({**prefix, "rows": 97 * 4}, "the export names 388"),
                                    ({**prefix, "result": str(tmp_path / "nowhere.pickle")}, "No such file")]):
        _assert_same_run(_users_run(export, tmp_path / f"run{k}", prefix=bad), whole)
        assert why in caplog.text and "accepting every document here" in caplog.text
    (tmp_path / "accepted" / "users.accepted.parquet").unlink()
    _assert_same_run(_users_run(export, tmp_path / "gone", prefix=prefix), whole)
    assert "are gone" in caplog.text


def test_accept_while_reading_takes_every_batch_the_export_writes(tmp_path, raws, monkeypatch):
    """The export's side: each row group it writes goes to the worker as it is written. Once
    every batch has been handed to the worker, the end of the read leaves it the whole export,
    and the transform then accepts nothing more: the same result as without."""
    from authmigrate import export as ex
    from authmigrate.progress import Progress

    monkeypatch.setattr(tt, "MIN_TRANSFORM_BATCH", 1)
    export = tmp_path / "documents.parquet"
    accept = ex.AcceptWhileReading(tmp_path / "export", 97)
    columns = (pa.array(raws[i:i + 97], pa.binary()) for i in range(0, len(raws), 97))
    assert ex._write_columns(columns, export, 97, Progress("test", None), accept) == 16
    accept.queue.join()  # every batch written to the worker's stdin (it takes them all before the end)
    prefix = accept.finish()
    assert prefix == {"result": str(tmp_path / "export" / "accepted" / "result.pickle"), "rows": len(raws)}
    whole = _users_run(export, tmp_path / "whole")
    _assert_same_run(_users_run(export, tmp_path / "prefixed", prefix=prefix), whole)


def test_a_failed_accepting_worker_leaves_the_accept_to_the_transform(tmp_path, raws, monkeypatch, caplog):
    from authmigrate import export as ex

    accept = ex.AcceptWhileReading(tmp_path / "export", 97)
    accept.proc.kill()
    accept.proc.wait()
    for i in range(0, 970, 97):  # the feeder finds the pipe broken; the read goes on
        accept(pa.array(raws[i:i + 97], pa.binary()))
    assert accept.finish() is None
    assert "the worker accepting while reading failed" in caplog.text


def test_the_end_of_the_read_leaves_what_waits_for_the_worker_to_the_transform(tmp_path, raws, monkeypatch):
    """The read has ended before the worker has taken what waits for it (here: before the worker
    even starts reading): it gets no more, and the transform accepts the rest (here: all)."""
    from authmigrate import export as ex

    monkeypatch.setattr(tt, "MIN_TRANSFORM_BATCH", 1)
    export = tmp_path / "documents.parquet"
    pq.write_table(pa.table({"bson": pa.array(raws, pa.binary())}), export, row_group_size=97)
    accept = ex.AcceptWhileReading(tmp_path / "export", 97)
    accept.closing = True  # as finish sets it, before any batch is offered
    for i in range(0, len(raws), 97):
        accept(pa.array(raws[i:i + 97], pa.binary()))
    prefix = accept.finish()
    assert prefix["rows"] == 0
    assert tt.accepted_prefix([str(export)], prefix) is None
    _assert_same_run(_users_run(export, tmp_path / "prefixed", prefix=prefix), _users_run(export, tmp_path / "whole"))


def test_accept_while_reading_is_for_a_full_read_of_the_users_from_the_server(monkeypatch):
    from types import SimpleNamespace

    from authmigrate.config import ConfigError
    from authmigrate.export import accept_while_reading

    server, files = SimpleNamespace(source="mongodb"), SimpleNamespace(source="files")
    whole, n = {"kind": "all"}, 1_000_000
    assert accept_while_reading(server, "users", whole, None, n)
    assert not accept_while_reading(files, "users", whole, None, n)  # a dump is read faster than accepted
    assert not accept_while_reading(server, "oauthRoles", whole, None, n)
    assert not accept_while_reading(server, "users", {"kind": "range"}, None, n)  # chunked: positions per chunk
    assert not accept_while_reading(server, "users", whole, "2026-01-01", n)  # incremental
    assert not accept_while_reading(server, "users", whole, None, 99_999)  # small: the worker's start costs more
    monkeypatch.setenv("AUTHMIGRATE_ACCEPT_WHILE_EXPORTING", "false")
    assert not accept_while_reading(server, "users", whole, None, n)
    monkeypatch.setenv("AUTHMIGRATE_ACCEPT_WHILE_EXPORTING", "sometimes")
    with pytest.raises(ConfigError, match="AUTHMIGRATE_ACCEPT_WHILE_EXPORTING must be true or false"):
        accept_while_reading(server, "users", whole, None, n)


def test_row_group_parts_cover_the_export_in_order(tmp_path):
    for i, rows in enumerate((250, 40, 3)):
        pq.write_table(pa.table({"bson": pa.array([b"x"] * rows, pa.binary())}), tmp_path / f"c{i}.parquet",
                       row_group_size=30)
    paths = [str(tmp_path / f"c{i}.parquet") for i in range(3)]
    for parts in (1, 2, 3, 20):
        got = tt._row_group_parts(paths, parts)
        assert 1 <= len(got) <= parts
        units = [(p, g) for part in got for p, groups in part["files"] for g in groups]
        assert units == [(p, g) for p in paths for g in range(pq.ParquetFile(p).metadata.num_row_groups)]
        assert [p["start"] for p in got] == [sum(p["rows"] for p in got[:k]) for k in range(len(got))]
        assert sum(p["rows"] for p in got) == 293
    two = tt._row_group_parts(paths, 2)
    assert abs(two[0]["rows"] - two[1]["rows"]) <= 30


def test_transform_workers_come_from_the_setting_and_the_export_size(monkeypatch):
    from authmigrate.config import ConfigError, Permanent

    monkeypatch.setenv("AUTHMIGRATE_TRANSFORM_WORKERS", "3")
    assert tt.transform_workers(1_000_000, 200) == 3
    assert tt.transform_workers(1_000_000, 2) == 2  # never more than the row groups
    assert tt.transform_workers(tt.TRANSFORM_WORKERS_MIN_ROWS - 1, 200) == 1  # small: in-process
    monkeypatch.setenv("AUTHMIGRATE_TRANSFORM_WORKERS", "0")
    with pytest.raises(ConfigError, match="AUTHMIGRATE_TRANSFORM_WORKERS must be a positive integer") as err:
        tt.transform_workers(1_000_000, 200)
    assert isinstance(err.value, Permanent)  # a setting: no retry


@pytest.mark.parametrize("collection", ["oauthRoles", "userAppConsents", "invitations"])
@pytest.mark.parametrize("batch", [7, 97, 100_000])
def test_batched_declared_transform_equals_the_one_frame_transform(tmp_path, monkeypatch, collection, batch):
    """A declared collection's full transform, a batch at a time (the roles and consents of a
    million users no longer sit in one frame): the same rows in the same order, rejects
    (duplicates across batches, dangling references, element rejects) and counts."""
    from authmigrate.census import FieldCensus

    monkeypatch.setattr(tt, "MIN_TRANSFORM_BATCH", 1)
    source = generate(2000, seed=11, dirty_ratio=0.25)
    docs = documents().get(collection, []) + source[collection]
    key = COLLECTIONS[collection].key.source
    # copies far from their originals, in later batches: the same key; another key, the same unique columns
    n = len(docs)
    docs += [dict(docs[i]) for i in (1, n // 2)] + [{**docs[i], key: f"{i:06d}9"} for i in (2, n * 2 // 3)]
    # a whole batch (of 7) in which every document is rejected: no key
    docs = [{k: v for k, v in docs[i].items() if k != key} for i in range(7)] + docs
    raws = [bson.encode({**d, "_id": d.get("_id", ObjectId(f"{i:024x}"))}) for i, d in enumerate(docs)]
    bad = bson.encode({"_id": ObjectId(), "x": "x"}).replace(b"x\x00", b"\xff\x00", 1)
    raws = raws[:150] + [bad] + raws[150:]
    # every tenth user and app is "rejected": references to them dangle
    users = tt._key_list("users", [u.get("userId") for u in source["users"]])
    apps = tt._key_list("oauthClientApps", [a.get("oauthClientAppId") for a in source["oauthClientApps"]])
    known = {"users": tf.KeySet(pa.array([u for i, u in enumerate(users) if i % 10])),
             "oauthClientApps": tf.KeySet(pa.array([a for i, a in enumerate(apps) if i % 10]))}
    known = {k: v for k, v in known.items() if k in COLLECTIONS[collection].depends_on}

    decoded, undecodable = tf.decode_documents(raws)
    whole = tf.transform(collection, tf.documents_frame(decoded, COLLECTIONS[collection].projection), known)
    assert len(undecodable) == 1 and whole.counts["rejected_documents"] >= 3  # dirty enough
    assert {"duplicate_key", *(u.code for u in COLLECTIONS[collection].unique)} <= set(
        whole.counts["rejects_by_reason"])  # the contests cross batches
    out = tmp_path / "out"
    out.mkdir()
    census = FieldCensus()
    result, files, newest, bad_rows = tt.transform_declared_batched(collection, str(_export(tmp_path, raws)), out,
                                                                    batch, known, census)

    assert [r["reason_code"] for r in bad_rows] == ["undecodable_document"]
    assert set(files) == set(whole.tables) and sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.parquet" for name in whole.tables)
    for name, frame in whole.tables.items():  # same rows (in export order, not sorted), as the load reads them
        got, want = read_frame(files[name]), read_frame(write_frame(frame, tmp_path / f"{name}.whole.parquet"))
        assert got.dtypes.to_dict() == want.dtypes.to_dict()
        pd.testing.assert_frame_equal(_sorted(got), _sorted(want))
    pd.testing.assert_frame_equal(_sorted(result.rejects), _sorted(whole.rejects))
    assert result.counts == whole.counts
    stamps = [d["updatedAt"] for d in decoded if isinstance(d.get("updatedAt"), type(newest))]
    assert newest == (max(stamps) if stamps else None)
    assert census.paths() and sum(1 for _ in decoded) == result.counts["source_documents"]
