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


def read_frame(path: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=columns).to_pandas()


class FrameWriter:
    """Append DataFrames (one row group each) to a Parquet file that appears, owner-only and
    complete, at ``path`` only when the writer is closed without error."""

    def __init__(self, path: Path):
        self.path, self.schema = Path(path), None
        self._tmp = self.path.with_suffix(self.path.suffix + ".partial")
        self._fh = private_file(self._tmp)
        self._writer = None

    def write(self, df: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(df, preserve_index=False, schema=self.schema)
        if self._writer is None:
            self.schema = table.schema
            self._writer = pq.ParquetWriter(self._fh, self.schema)
        self._writer.write_table(table)

    def close(self, empty: pd.DataFrame | None = None) -> Path:
        """Finish the file; ``empty`` gives the columns when nothing was written."""
        if self._writer is None:
            self.write(empty if empty is not None else pd.DataFrame())
        self._writer.close()
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:  # never leave a half-written file under the final name
            if self._writer is not None:
                self._writer.close()
            self._fh.close()
            self._tmp.unlink(missing_ok=True)


def remove_run(cfg: RunConfig) -> None:
    """Delete the run's staging folder (after a successful run)."""
    shutil.rmtree(cfg.staging_dir(), ignore_errors=True)
