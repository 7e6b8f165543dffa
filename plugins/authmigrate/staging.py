"""Run-scoped staging files: Parquet, owner-only permissions, written atomically.

A retry overwrites (never appends to) what an earlier attempt wrote, and a reader never
sees a half-written file: each file is written beside its final name and renamed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from authmigrate.config import RunConfig, staging_root


def collection_dir(cfg: RunConfig, collection: str, stage: str) -> Path:
    """The run's folder for a collection's stage; every folder from the staging root down is
    owner-only (mkdir's mode does not apply to the parents it creates)."""
    root = staging_root()
    if not root.exists():  # ours to create; an existing (maybe shared) root is left as it is
        root.mkdir(parents=True, mode=0o700)
        os.chmod(root, 0o700)
    path = cfg.staging_dir() / collection / stage
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in [q for q in path.parents if root in q.parents] + [path]:
        os.chmod(p, 0o700)
    return path


def private_file(path: Path):
    """A binary file object created owner-only (0600) from the start, truncated if it exists."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def write_frame(df: pd.DataFrame, path: Path) -> Path:
    table = pa.Table.from_pandas(df, preserve_index=False)
    return write_table(table, path)


def write_table(table: pa.Table, path: Path) -> Path:
    tmp = path.with_suffix(path.suffix + ".partial")
    with private_file(tmp) as fh:
        pq.write_table(table, fh)
    os.replace(tmp, path)
    return path


def read_frame(path: Path | str) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def remove_run(cfg: RunConfig) -> None:
    """Delete the run's staging folder (after a successful run)."""
    shutil.rmtree(cfg.staging_dir(), ignore_errors=True)
