"""Test-wide setup: import paths, and an Airflow home of the test session's own.

Set before anything imports airflow: Airflow reads its configuration at import time.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

_SCRATCH = Path(tempfile.mkdtemp(prefix="authmigrate-tests-"))
os.environ.update({
    "AIRFLOW_HOME": str(_SCRATCH / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AUTHMIGRATE_STAGING_DIR": str(_SCRATCH / "staging"),
    # tiny retry delays: dag.test() really waits them out
    "AUTHMIGRATE_RETRIES": "1",
    "AUTHMIGRATE_RETRY_DELAY_SECONDS": "0.2",
    "AUTHMIGRATE_MAX_RETRY_DELAY_SECONDS": "1",
    # what every deployment of the project sets (plugins/authmigrate/memory.py)
    "ARROW_DEFAULT_MEMORY_POOL": "jemalloc",
})
for var in [v for v in os.environ if v.startswith("AIRFLOW_CONN_")]:
    del os.environ[var]


def pytest_configure(config):
    config.scratch = _SCRATCH
