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
