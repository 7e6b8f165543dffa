"""Verification hashes streamed from a transform file (sliced, bounded memory) equal the hashes
of the whole frame: a parent whose children straddle a slice boundary is hashed once, whole."""
from __future__ import annotations

import random

import pandas as pd
import pytest

from authmigrate import verify
from authmigrate.registry import TABLES
from authmigrate.staging import write_frame


@pytest.mark.parametrize("slice_rows", [1, 3, 7, 1000])
def test_child_hashes_from_a_file_equal_the_whole_frame(tmp_path, monkeypatch, slice_rows):
    monkeypatch.setattr(verify, "HASH_BATCH", slice_rows)
    rng = random.Random(3)
    rows = [(f"{p:012d}", role) for p in rng.sample(range(10**6), 40)
            for role in rng.sample(["b", "a", "é", "Z", "oauthUser", "standardUser", "ä"], rng.randint(1, 5))]
    rng.shuffle(rows)  # parents interleaved: the file need not be sorted
    frame = pd.DataFrame(rows, columns=["user_id", "role_id"]).astype("string")
    path = write_frame(frame, tmp_path / "user_roles.parquet")
    table = TABLES["user_roles"]
    streamed = list(verify._expected_hashes(table, str(path)))
    assert streamed == verify.child_hashes(table, frame)
    assert len(streamed) == 40


@pytest.mark.parametrize("slice_rows", [1, 4, 1000])
def test_row_hashes_from_a_file_equal_the_whole_frame(tmp_path, monkeypatch, slice_rows):
    from authmigrate.transform import documents_frame, transform_users
    from authmigrate.registry import COLLECTIONS
    from tests.data import documents

    monkeypatch.setattr(verify, "HASH_BATCH", slice_rows)
    users = transform_users(documents_frame(documents()["users"], COLLECTIONS["users"].projection)).tables["users"]
    path = write_frame(users, tmp_path / "users.parquet")
    assert list(verify._expected_hashes(TABLES["users"], str(path))) == verify.row_hashes(TABLES["users"], users)
