"""The Arrow memory pool the project ships, and what memory.tune() does with it.

Each case runs in a fresh interpreter: Arrow picks its pool once, when a process first uses it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from authmigrate.memory import tune
import pyarrow as pa
print("backend", tune())
buf = pa.allocate_buffer(64 << 20)  # 64 MiB, then freed
del buf
from authmigrate.memory import release
release()
print("allocated after release", pa.default_memory_pool().bytes_allocated())
"""


def _probe(pool: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if pool:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    env["PYTHONPATH"] = str(ROOT / "plugins")
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_jemalloc_pool_is_used_when_the_environment_asks_for_it():
    out = _probe("jemalloc")
    assert "backend jemalloc" in out
    assert "allocated after release 0" in out
    assert "lowers the peak memory" not in out  # no hint: the pool is the recommended one


def test_another_pool_works_and_the_log_says_how_to_lower_memory():
    out = _probe("system")
    assert "backend system" in out
    assert "ARROW_DEFAULT_MEMORY_POOL=jemalloc" in out


@pytest.mark.parametrize("where", ["Makefile", "Dockerfile", "docker-compose.yaml", "tools/airflow_stack.py",
                                   "tools/bench.py", "tests/conftest.py"])
def test_every_shipped_deployment_sets_the_jemalloc_pool(where):
    text = (ROOT / where).read_text()
    if where == "docker-compose.yaml":
        env = yaml.safe_load(text)["x-airflow-common"]["environment"]
        assert env["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    else:
        assert "ARROW_DEFAULT_MEMORY_POOL" in text and "jemalloc" in text
