"""DAG integrity: imports cleanly, imports nothing heavy (what makes a parse slow) and builds no
hook at parse time. Parse time itself is not asserted: it depends on how busy the machine is."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["pandas", "pyarrow", "pymongo", "bson", "psycopg", "redis",
         "airflow.providers.mongo.hooks.mongo", "airflow.providers.postgres.hooks.postgres",
         "airflow.providers.redis.hooks.redis"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["mongo_to_postgres"]


def test_parsing_imports_nothing_heavy_and_opens_no_connection():
    """In a clean interpreter: parse the DAG file with no connections defined and with
    BaseHook.get_connection rigged to fail; then list which heavy modules got imported."""
    code = f"""
import json, sys
sys.path[:0] = [{str(ROOT / 'plugins')!r}]
from airflow.sdk import BaseHook
def refuse(*a, **k):
    raise AssertionError("a hook looked up a connection at parse time")
BaseHook.get_connection = classmethod(refuse)
import runpy
runpy.run_path({str(ROOT / 'dags' / 'mongo_to_postgres.py')!r})
print(json.dumps([[m for m in {HEAVY!r} if m in sys.modules], sorted(m for m in sys.modules if "authmigrate" in m)]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, own = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == []
    # the DAG file needs only the standard-library modules of the plugin; stages load at task time
    assert set(own) <= {"authmigrate", "authmigrate.config", "authmigrate.registry", "authmigrate.tasks"}, own


def test_dag_shape(dagbag):
    dag = dagbag.dags["mongo_to_postgres"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.doc_md and "validate" in dag.doc_md
    from authmigrate.registry import COLLECTIONS

    for collection in COLLECTIONS:
        export, transform, load = (dag.get_task(f"{collection}.{s}") for s in ("export", "transform", "load"))
        assert transform.task_id in export.downstream_task_ids
        assert load.task_id in transform.downstream_task_ids
        verify = dag.get_task(f"{collection}.verify")
        assert verify.task_id in load.downstream_task_ids and "validate" in verify.downstream_task_ids
        # a collection's content checks wait for its own load only: the loads after it do not wait for them
        assert not {t for t in verify.downstream_task_ids if t != "validate"}
        assert "prepare" in load.upstream_task_ids
    # references: apps need users' keys, roles need users and apps
    assert "users.transform" in dag.get_task("oauthClientApps.transform").upstream_task_ids
    assert "oauthClientApps.load" in dag.get_task("oauthRoles.load").upstream_task_ids
    assert "users.load" in dag.get_task("oauthClientApps.load").upstream_task_ids
    # consents need users and apps (a consent dies with its app); invitations need users
    assert {"users.transform", "oauthClientApps.transform"} <= dag.get_task("userAppConsents.transform").upstream_task_ids
    assert {"users.load", "oauthClientApps.load"} <= dag.get_task("userAppConsents.load").upstream_task_ids
    assert "users.load" in dag.get_task("invitations.load").upstream_task_ids
    assert not dag.get_task("appSettings.transform").upstream_task_ids - {"appSettings.export"}
    for task in dag.tasks:
        assert task.retries >= 1 and task.retry_exponential_backoff


def test_every_param_is_documented_and_validated(dagbag):
    params = dagbag.dags["mongo_to_postgres"].params
    expected = {"collections", "source_users", "source_oauthClientApps", "source_oauthRoles", "target_schema",
                "batch_size", "dry_run", "max_reject_ratio", "mongo_conn_id", "postgres_conn_id", "redis_conn_id"}
    assert expected <= set(params)
    for name in params:
        param = params.get_param(name)
        assert param.description and param.schema.get("title") and param.schema.get("type"), name
    assert params.get_param("batch_size").schema["minimum"] == 1
