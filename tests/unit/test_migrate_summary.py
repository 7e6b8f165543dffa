"""`make migrate` (tools.migrate): its closing lines from the lines a run logged, and its executor settings."""
from __future__ import annotations

from authmigrate.tasks import FAILURE_MARK
from tools.migrate import summary

FINISHED = ("2026-12-01T21:51:12.523209Z [info     ] DagRun Finished: dag_id=mongo_to_postgres, logical_date=x, "
            "run_id=manual__1, run_start_date=x, state={state}, run_type=manual, [airflow.models.dagrun.DagRun]")


def logged(text: str) -> str:
    return f"2026-12-01T21:51:12Z [error    ] {text} [authmigrate] loc=tasks.py:308"


def test_a_failed_run_ends_with_each_task_failure_and_what_to_do():
    lines = [
        logged(f"{FAILURE_MARK} users.plan failed (try 1): collection 'user' not found (it has: ['users'])"),
        logged(f"{FAILURE_MARK} users.plan   What to do: correct the param"),
        FINISHED.format(state="failed"),
    ]
    assert summary(lines, 1) == [
        "",
        "==== authmigrate: run manual__1 FAILED (airflow exit code 1) ====",
        "  users.plan failed (try 1): collection 'user' not found (it has: ['users'])",
        "  users.plan   What to do: correct the param",
    ]


def test_a_run_that_reported_nothing_says_so_and_a_passing_run_points_at_the_report():
    assert summary([], -9)[1:] == [
        "==== authmigrate: run ? FAILED (airflow exit code -9) ====",
        "  no task reported its failure (the process may have been stopped); see the log above",
    ]
    passed = summary([FINISHED.format(state="success")], 0)
    assert passed[1] == "==== authmigrate: run manual__1 SUCCESS (airflow exit code 0) ===="
    assert "authmigrate.runs" in passed[2]


def test_tasks_at_once_default_to_the_cores_and_a_bad_setting_is_refused(monkeypatch):
    import os

    import pytest

    from tools import migrate

    monkeypatch.delenv("AUTHMIGRATE_PARALLELISM", raising=False)
    assert migrate.parallelism() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("AUTHMIGRATE_PARALLELISM", "3")
    assert migrate.parallelism() == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("AUTHMIGRATE_PARALLELISM", bad)
        with pytest.raises(SystemExit, match="AUTHMIGRATE_PARALLELISM must be a positive integer"):
            migrate.parallelism()


def test_the_executor_environment_points_tasks_at_the_api_server_and_shares_one_secret():
    from tools import migrate

    env = migrate.executor_env({"PATH": "/bin"}, 41234, 2)
    from airflow.executors.local_executor import LocalExecutor
    from airflow.sdk._shared.module_loading import import_string

    # a LocalExecutor that waits for the API server (authmigrate/executor.py), by its import path
    assert issubclass(import_string(env["AIRFLOW__CORE__EXECUTOR"]), LocalExecutor)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "2"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:41234/execution/"
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32 and env["PATH"] == "/bin"
    assert env["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "1"  # a finished task is seen within 1 s, not 5
    assert migrate.executor_env({"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "3"}, 1, 1)[
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] == "3"
    assert migrate.executor_env({}, 1, 1)["AIRFLOW__API_AUTH__JWT_SECRET"] != env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert migrate.executor_env({"AIRFLOW__API_AUTH__JWT_SECRET": "kept"}, 1, 1)["AIRFLOW__API_AUTH__JWT_SECRET"] \
        == "kept"  # a deployment's own secret is used as it is


def test_the_executor_waits_for_the_api_server_and_fails_at_once_when_it_is_gone():
    """The executor starts its workers once the server's health check answers 200 (the server
    boots beside `airflow dags test`); a server process that exited, or one that never answers,
    fails at once with a message, instead of tasks failing on a refused connection."""
    import http.server
    import subprocess
    import sys
    import threading

    import pytest

    from authmigrate.executor import wait_for_api

    asked = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200 if self.path == "/execution/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/execution/"
    try:
        wait_for_api(url, timeout=30, pid=None)
        assert asked == ["/execution/health"]
    finally:
        server.shutdown()
        server.server_close()
    # nothing listens on that port now
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    with pytest.raises(RuntimeError, match=rf"server \(pid {exited.pid}\) exited before it answered"):
        wait_for_api(url, timeout=600, pid=exited.pid)
    with pytest.raises(RuntimeError, match="did not answer at .*/execution/health within 0s"):
        wait_for_api(url, timeout=0, pid=None)


class _TI:
    def __init__(self, weight: int):
        self.priority_weight = weight


class _Workload:
    """What LocalExecutor and its workers read of a task's workload (picklable, for its queue)."""

    running_state = None
    success_state = "success"
    failure_state = "failed"

    def __init__(self, key: str, weight: int):
        self.key, self.display_name = key, key
        self.ti = _TI(weight)


def test_the_executor_hands_its_workers_the_highest_priority_task_as_one_becomes_free(monkeypatch):
    """Real LocalExecutor workers (forked processes, the task body replaced): two run at once,
    one more waits in their queue, and a task that becomes ready later with a higher
    priority_weight runs before the lower ones queued earlier. Airflow 3.3's own accounting
    hands every queued task to the workers' first-in-first-out queue at once."""
    import multiprocessing
    import time

    from airflow.executors.base_executor import BaseExecutor
    from airflow.executors.local_executor import LocalExecutor

    from authmigrate.executor import SPARE, ApiReadyLocalExecutor

    ctx = multiprocessing.get_context("fork")
    keys = ["a6", "b5", "c3", "d2", "e1", "late10"]
    release = {k: ctx.Event() for k in keys}
    started = ctx.SimpleQueue()

    def body(workload, **_):  # inherited by the forked workers
        started.put(workload.key)
        assert release[workload.key].wait(60)

    monkeypatch.setattr(BaseExecutor, "run_workload", staticmethod(body))
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda *a, **k: "fork")
    executor = ApiReadyLocalExecutor(parallelism=2)
    LocalExecutor.start(executor)  # the workers, without waiting for an API server

    def until(done, what):
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline, what
            executor.heartbeat()
            time.sleep(0.01)

    try:
        for key in keys[:5]:
            executor.queued_tasks[key] = _Workload(key, int(key[1:]))
        executor.heartbeat()
        assert len(executor.outstanding) == 2 + SPARE == 3 and set(executor.queued_tasks) == {"d2", "e1"}
        assert {started.get(), started.get()} == {"a6", "b5"}
        executor.queued_tasks["late10"] = _Workload("late10", 10)
        executor.heartbeat()
        assert "late10" in executor.queued_tasks  # no slot yet: the two run, c3 waits in the queue
        release["a6"].set()
        assert started.get() == "c3"  # the waiting one starts without a heartbeat
        until(lambda: "late10" not in executor.queued_tasks, "a free slot goes to the highest priority")
        release["b5"].set()
        assert started.get() == "late10"
        for key in keys:
            release[key].set()
        until(lambda: not executor.outstanding and not executor.queued_tasks, "every task ends")
        assert sorted(started.get() for _ in range(2)) == ["d2", "e1"]
        assert all(state == "success" for state, _ in executor.event_buffer.values())
    finally:
        for key in keys:
            release[key].set()
        executor.end()


def test_a_heartbeat_returns_when_a_task_ends_and_hands_its_slot_on_at_once(monkeypatch):
    """While tasks run, a heartbeat waits for a worker to report an end (``airflow dags test``
    heartbeats once per scheduling pass, and its next pass sees the end), and gives the freed
    slot to the next queued task in the same heartbeat. The end is made to happen inside the
    heartbeat, after its first hand-over, so no clock decides the outcome."""
    import multiprocessing

    from airflow.executors.base_executor import BaseExecutor
    from airflow.executors.local_executor import LocalExecutor

    from authmigrate.executor import SPARE, ApiReadyLocalExecutor

    ctx = multiprocessing.get_context("fork")
    keys = ["a3", "b2", "c1"]
    release = {k: ctx.Event() for k in keys}
    started = ctx.SimpleQueue()

    def body(workload, **_):
        started.put(workload.key)
        assert release[workload.key].wait(60)

    monkeypatch.setattr(BaseExecutor, "run_workload", staticmethod(body))
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda *a, **k: "fork")
    executor = ApiReadyLocalExecutor(parallelism=1)
    LocalExecutor.start(executor)
    try:
        executor.wait_for_end = 0
        for key in keys:
            executor.queued_tasks[key] = _Workload(key, int(key[1:]))
        executor.heartbeat()
        assert executor.outstanding == {"a3", "b2"} and set(executor.queued_tasks) == {"c1"} and SPARE == 1
        assert started.get() == "a3"

        hand_overs = []
        plain = executor._hand_over

        def hand_over():
            plain()
            hand_overs.append(set(executor.outstanding))
            if len(hand_overs) == 1:
                release["a3"].set()  # a3 ends while the heartbeat waits

        monkeypatch.setattr(executor, "_hand_over", hand_over)
        executor.wait_for_end = 60  # never reached: the heartbeat returns on a3's end
        executor.heartbeat()
        assert executor.event_buffer["a3"][0] == "success"
        assert len(hand_overs) == 2 and hand_overs[1] == {"b2", "c1"} and not executor.queued_tasks
        assert started.get() == "b2"

        executor.wait_for_end = 0.05  # nothing ends: it returns after the wait, nothing changed
        executor.heartbeat()
        assert executor.outstanding == {"b2", "c1"} and "b2" not in executor.event_buffer
    finally:
        for key in keys:
            release[key].set()
        executor.end()


def test_a_supervisor_sees_its_task_process_exit_without_waiting_out_the_heartbeat_interval():
    """Once a task process has closed every socket, the supervisor's service step waits for the
    process itself, not a ``select()`` on nothing for ``max_wait_time`` (Airflow 3.3 asked the
    selector for up to [workers] min_heartbeat_interval, 1 s here, after the last socket closed)."""
    import selectors
    import subprocess
    import sys

    import psutil
    from airflow.sdk.execution_time.supervisor import ActivitySubprocess, PsutilTracker, WatchedSubprocess

    from authmigrate.executor import _notice_exit_promptly

    class Recording(selectors.DefaultSelector):
        def __init__(self):
            super().__init__()
            self.timeouts = []

        def select(self, timeout=None):
            self.timeouts.append(timeout)
            return []

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    supervisor = object.__new__(ActivitySubprocess)
    supervisor.selector = Recording()
    supervisor._open_sockets = {}
    supervisor._exit_code = None
    supervisor._process = PsutilTracker(psutil.Process(child.pid))
    supervisor._process_exit_monotonic = None
    plain = WatchedSubprocess._service_subprocess
    try:
        _notice_exit_promptly()
        _notice_exit_promptly()  # once only: no wrapper around the wrapper
        wrapped = WatchedSubprocess._service_subprocess
        assert wrapped is not plain and getattr(wrapped, "__wrapped__", None) is plain
        child.stdin.close()  # the child exits now
        assert supervisor._service_subprocess(max_wait_time=3600) == 0
        assert supervisor.selector.timeouts == [0.01]  # the original's floor: no wait on the empty selector
        supervisor._open_sockets = {object(): "stdout"}  # sockets open: the original, as it was
        supervisor._exit_code = None
        assert supervisor._service_subprocess(max_wait_time=0.02) == 0 and supervisor.selector.timeouts[-1] == 0.02
    finally:
        WatchedSubprocess._service_subprocess = plain
        child.kill()
        child.wait()


def test_the_api_server_is_stopped_when_the_run_finishes_and_killed_if_it_lingers(tmp_path, monkeypatch):
    """`make migrate` stops the execution API server as soon as `airflow dags test` logs that
    the run finished, and kills it when it has not exited ``STOP_GRACE`` seconds after SIGTERM;
    a server this command stopped is not reported as one that died during the run."""
    import subprocess
    import sys

    from tools import migrate

    script = tmp_path / "dags_test.py"
    script.write_text("import sys\nprint('starting')\nprint(sys.argv[1])\nprint('shutting down')\n")
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\n"
                                 "time.sleep(3600)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "up\n"  # its SIGTERM handler is in place
    api = migrate.ExecutionAPI(stubborn)
    monkeypatch.setattr(migrate, "STOP_GRACE", 0.1)
    finished = []

    def on_finished():
        finished.append(api.proc.poll())
        api.stop()

    assert migrate._run([sys.executable, str(script), FINISHED.format(state="success")], {}, on_finished) == 0
    api.stop()  # as the block's end does: at most once more, harmless
    assert finished == [None]  # called while the server still ran
    assert stubborn.returncode == -9 and api.stopped and api.exited_by_itself() is None
    died = migrate.ExecutionAPI(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
    died.proc.wait()
    assert died.exited_by_itself() == 3
