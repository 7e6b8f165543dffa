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


WAIT_FOR_END = 1.0  # seconds a heartbeat waits for a running task to end (see ApiReadyLocalExecutor)

SPARE = 1  # workloads handed to the workers' queue beyond one per worker: a worker that ends
# its task takes the next at once, instead of waiting for the next heartbeat (~1 s in dags test)


def _notice_exit_promptly() -> None:
    """Make a task's supervisor see its process exit when it happens, not up to a heartbeat
    interval later (this process's LocalExecutor workers are forked from it and inherit this).

    The supervisor (``WatchedSubprocess._monitor_subprocess``, Airflow 3.3) waits in
    ``select()`` on the task process's sockets for up to ``[workers] min_heartbeat_interval``
    seconds (an integer: 1 here, tools/migrate.py), then checks whether the process exited.
    The process closes its sockets a moment before it exits, so the last check often comes
    too early and the next one a whole second later: in a 1M run 15 of 39 tasks reported
    their end ~1.0 s after their last line, several on the run's critical path. Once every
    socket is closed, the wrapper waits for the process itself (``psutil`` polls ``waitpid``),
    then lets the original check the exit code it reaped, without a ``select()`` on nothing."""
    import functools

    from airflow.sdk.execution_time.supervisor import WatchedSubprocess

    original = WatchedSubprocess._service_subprocess
    if getattr(original, "authmigrate_prompt_exit", False):
        return

    @functools.wraps(original)
    def _service_subprocess(self, max_wait_time, raise_on_timeout=False, expect_signal=None):
        if self._exit_code is None and not self._open_sockets:
            try:
                self._process.wait(timeout=max(0.01, max_wait_time))
                max_wait_time = 0  # reaped: the original's check reads its cached exit code
            except self._process.TimeoutExpired:
                max_wait_time = 0  # waited the time the original would have selected for
        return original(self, max_wait_time, raise_on_timeout, expect_signal)

    _service_subprocess.authmigrate_prompt_exit = True
    WatchedSubprocess._service_subprocess = _service_subprocess


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

    Its heartbeat then waits up to ``wait_for_end`` seconds for a worker to report a task's end,
    and hands the freed slot on at once. ``airflow dags test`` schedules in a loop that sleeps a
    second whenever no task is ready, and heartbeats the executor once a pass: a task that ended
    was seen only at the next pass, up to a second later, and the tasks of a chain (plan, export,
    transform, load, verify, validate, cutover) each waited for that. Now the pass after an end
    starts as the worker reports it. (The wait also delays a retry whose delay ran out by at most
    ``wait_for_end``.)
    """

    wait_for_end = WAIT_FOR_END

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
        workers' results read first, so that a slot freed since the last heartbeat is filled now;
        then, while tasks run, up to ``wait_for_end`` seconds for one of them to end."""
        self._hand_over()
        if self._wait_for_an_end(self.wait_for_end):
            self._hand_over()

    def _hand_over(self) -> None:
        self.sync()
        open_slots = max(0, self.parallelism + SPARE - len(self.outstanding))
        self._emit_metrics(open_slots, len(self.outstanding), len(self.queued_tasks))
        self.trigger_tasks(open_slots)
        self.trigger_connection_tests()

    def _wait_for_an_end(self, timeout: float) -> bool:
        """Read the workers' reports as they come (a task's start among them) until one says a
        task ended, for up to ``timeout`` seconds while tasks are outstanding; True if one did."""
        reader = getattr(self.result_queue, "_reader", None)  # SimpleQueue's end of its pipe
        if timeout <= 0 or not self.outstanding or reader is None:
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and reader.poll(left):
            key, state, _ = self.result_queue.get()
            self.change_state(key, state)
            if state not in ("running", "queued"):  # the states' enums are str enums
                return True
        return False

    def start(self) -> None:
        from airflow.configuration import conf

        pid = os.environ.get("AUTHMIGRATE_EXECUTION_API_PID")
        started = time.monotonic()
        wait_for_api(conf.get("core", "execution_api_server_url"),
                     float(os.environ.get("AUTHMIGRATE_API_START_TIMEOUT") or API_START_TIMEOUT),
                     int(pid) if pid else None)
        self.log.info("authmigrate: the execution API answered; waited %.1fs for it", time.monotonic() - started)
        _notice_exit_promptly()
        super().start()
