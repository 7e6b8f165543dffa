"""The executor `make migrate` runs the DAG with: LocalExecutor, whose workers start once the
execution API server answers.

`make migrate` (tools/migrate.py) starts that server and ``airflow dags test`` side by side: each
takes seconds to boot (the server ~8 s, the CLI ~4 s to parse the DAG and create the run), and
the tasks need the server only once the executor runs them. Before, the CLI waited for the
server's health check first. ``start`` waits for it here instead, just before the first task can
be queued, and fails at once, saying why, when the server process named by
``AUTHMIGRATE_EXECUTION_API_PID`` is gone or the server does not answer within
``AUTHMIGRATE_API_START_TIMEOUT`` seconds (default 180).
"""
from __future__ import annotations

import os
import time
import urllib.request
from urllib.parse import urljoin

from airflow.executors.local_executor import LocalExecutor

API_START_TIMEOUT = 180.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by tools.migrate) is gone too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_for_api(url: str, timeout: float, pid: int | None = None, poll: float = 0.1) -> None:
    """Return once ``<url>health`` answers 200; RuntimeError when process ``pid`` is gone first
    or ``timeout`` seconds pass."""
    health = urljoin(url if url.endswith("/") else url + "/", "health")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(health, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if pid is not None and not _alive(pid):
            raise RuntimeError(f"the execution API server (pid {pid}) exited before it answered at {health}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the execution API server did not answer at {health} within {timeout:.0f}s")
        time.sleep(poll)


SPARE = 1  # workloads handed to the workers' queue beyond one per worker: a worker that ends
# its task takes the next at once, instead of waiting for the next heartbeat (~1 s in dags test)


class ApiReadyLocalExecutor(LocalExecutor):
    """LocalExecutor that starts its workers once the execution API server answers, and hands
    its workers the queued tasks by priority, as a worker becomes free.

    Airflow 3.3's BaseExecutor counts its open slots as ``parallelism - len(running)``, but no
    code adds to ``running`` any longer: every heartbeat hands up to ``parallelism`` more tasks
    to LocalExecutor's queue, which its workers take first in, first out. The queue then held
    nearly every ready task in the order they became ready, and ``priority_weight`` ordered only
    the tasks handed over in one heartbeat: in a 1M run, a 9.5 s load waited 13 s behind two
    verifies and a skipped task that came first (docs/performance.md). Here a task counts as
    outstanding from the hand-over to its end, and at most ``parallelism + SPARE`` are.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outstanding: set = set()

    def _process_workloads(self, workload_list):
        self.outstanding.update(w.key for w in workload_list)
        super()._process_workloads(workload_list)

    def change_state(self, key, state, info=None, remove_running=True) -> None:
        from airflow.utils.state import TaskInstanceState

        if state not in (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED):
            self.outstanding.discard(key)
        super().change_state(key, state, info, remove_running)

    def heartbeat(self) -> None:
        """The base heartbeat, with the free slots counted from the outstanding tasks, and the
        workers' results read first, so that a slot freed since the last heartbeat is filled now."""
        self.sync()
        open_slots = max(0, self.parallelism + SPARE - len(self.outstanding))
        self._emit_metrics(open_slots, len(self.outstanding), len(self.queued_tasks))
        self.trigger_tasks(open_slots)
        self.trigger_connection_tests()

    def start(self) -> None:
        from airflow.configuration import conf

        pid = os.environ.get("AUTHMIGRATE_EXECUTION_API_PID")
        started = time.monotonic()
        wait_for_api(conf.get("core", "execution_api_server_url"),
                     float(os.environ.get("AUTHMIGRATE_API_START_TIMEOUT") or API_START_TIMEOUT),
                     int(pid) if pid else None)
        self.log.info("authmigrate: the execution API answered; waited %.1fs for it", time.monotonic() - started)
        super().start()
