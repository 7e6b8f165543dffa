"""Chunked export: fixed ObjectId ``_id`` ranges planned up front, one mapped export task per
chunk. A chunked run gives the same target as an unchunked one, and a chunk whose MongoDB
server is killed mid-read retries alone and leaves no duplicate and no gap."""
from __future__ import annotations

import shutil
import signal
import threading
from collections import Counter

import bson
import pytest
from bson import ObjectId

from tests.data import documents
from tests.integration.faults import (  # noqa: F401  (fixtures)
    COLLECTION_NAMES,
    Background,
    make_migration,
    own_mongo_server,
    parse_dag,
    snapshot,
    wait_for,
)

pytestmark = pytest.mark.integration

REJECTS = ("SELECT collection, scope, reason_code, source_id, element, reason, document::text "
           "FROM authmigrate.rejects WHERE run_id = %s ORDER BY 1, 2, 3, 4, 5, 6")


@pytest.fixture(scope="module")
def chunk_mongo(pytestconfig):
    yield from own_mongo_server(pytestconfig.scratch)


def source(n_users: int) -> dict[str, list[dict]]:
    """The hand-made dirty documents (odd _ids included: a string, a number) and generated ones."""
    from tools.seed_mongo import generate

    generated = generate(n_users, seed=5, dirty_ratio=0.1)
    hand = documents()
    return {c: hand[c] + generated[c] + ([{"_id": "legacy-string-id", "userId": "777777777777", "username": "odd",
                                            "email": "odd@example.com"}, {"_id": 4242, "userId": "777777777778",
                                                                          "username": "odd2"}]
                                         if c == "users" else []) for c in hand}


def expected_chunks(coll, size: int) -> int:
    ids = [d["_id"] for d in coll.find({}, {"_id": 1})]
    oids = sum(isinstance(i, ObjectId) for i in ids)
    return -(-oids // size) + (oids < len(ids))


def exports(dr) -> dict[str, list[tuple[int, str, int]]]:
    """Per collection: (map index, state, try number) of every mapped export task instance."""
    out: dict[str, list] = {}
    for ti in dr.get_task_instances():
        if ti.task_id.endswith(".export") and not ti.task_id.startswith("sessions"):
            out.setdefault(ti.task_id.split(".")[0], []).append((ti.map_index, ti.state, ti.try_number))
    return {k: sorted(v) for k, v in out.items()}


def test_chunked_run_equals_unchunked_run(make_migration, chunk_mongo):
    m = make_migration(chunk_mongo)
    m.seed(source(900))
    unchunked_schema = f"{m.schema}_whole"
    whole = m.run(target_schema=unchunked_schema)
    assert [len(v) for v in exports(whole).values()] == [1] * len(COLLECTION_NAMES)

    chunked = m.run(chunk_size=150)
    got = exports(chunked)
    # users: ranges of 150 ObjectId documents plus one chunk for the others; apps (45) and roles (90) stay whole
    assert len(got["users"]) == expected_chunks(m.db.users, 150) and len(got["oauthRoles"]) == 1, got
    assert all(state == "success" and tries == 1 for runs in got.values() for _, state, tries in runs), got
    assert m.snapshot(with_synced_at=False) == snapshot(m, unchunked_schema, with_synced_at=False)
    assert m.sql(REJECTS, (chunked.run_id,)) == m.sql(REJECTS, (whole.run_id,))
    assert m.sql("SELECT mongo_id FROM users WHERE id = '777777777777'") == [("str:legacy-string-id",)]
    assert m.sql("SELECT mongo_id FROM users WHERE id = '777777777778'") == [("int:4242",)]


def test_a_chunk_killed_mid_read_retries_alone_without_duplicates(
        make_migration, chunk_mongo, airflow_db, monkeypatch, tmp_path):
    staging = tmp_path / "staging"
    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(staging))
    dag = parse_dag(monkeypatch, AUTHMIGRATE_RETRIES=2, AUTHMIGRATE_RETRY_DELAY_SECONDS=1)
    m = make_migration(chunk_mongo, dag)
    m.seed(source(1500))
    reference_schema = f"{m.schema}_ref"
    clean = m.run(target_schema=reference_schema)

    run_over = threading.Event()
    kept = tmp_path / "exports"

    def partial(index: int):
        found = list(staging.glob(f"*/*/users/export/chunk-{index:04d}.parquet.partial"))
        try:
            return found[0].stat().st_size if found else 0
        except FileNotFoundError:
            return 0

    def kill_during_chunk_2():
        wait_for(lambda: partial(2) > 8 * 1024, 120, "users chunk 2 under way", interval=0.005, abort=run_over)
        try:
            chunk_mongo.stop(signal.SIGKILL)
        finally:
            chunk_mongo.start()
        final = wait_for(lambda: list(staging.glob("*/*/users/transform/users.parquet")), 180,
                         "the users transform", abort=run_over)
        shutil.copytree(final[0].parents[1] / "export", kept)

    with Background(kill_during_chunk_2, run_over):
        dr = m.run(chunk_size=250, batch_size=10)

    runs = exports(dr)["users"]
    assert len(runs) == expected_chunks(m.db.users, 250) >= 6, runs
    assert [(i, s, n) for i, s, n in runs if n != 1] == [(2, "success", 2)], runs  # only chunk 2 ran again
    assert all(s == "success" for _, s, _ in runs)
    ids = Counter()
    for path in sorted(kept.glob("chunk-*.parquet")):
        import pyarrow.parquet as pq

        ids.update(str(bson.decode(raw)["_id"]) for raw in pq.read_table(path).column("bson").to_pylist())
    assert len(ids) == m.db.users.count_documents({}) and set(ids.values()) == {1}, "a gap or a duplicate"
    assert m.snapshot(with_synced_at=False) == snapshot(m, reference_schema, with_synced_at=False)
    rejects = "SELECT collection, scope, reason_code, source_id, element FROM authmigrate.rejects " \
              "WHERE run_id = %s ORDER BY 1, 2, 3, 4, 5"
    assert m.sql(rejects, (dr.run_id,)) == m.sql(rejects, (clean.run_id,))
