"""`make migrate`: one headless run of the DAG (`airflow dags test`), its output passed through
unchanged, then a closing summary, so that the last lines say how the run ended and, for a failed
run, which task failed, why, and what to do (the lines the tasks log with ``FAILURE_MARK``).

``--executor local`` (the default; ``AUTHMIGRATE_EXECUTOR``) runs tasks side by side:
``airflow dags test --use-executor`` under LocalExecutor, ``AUTHMIGRATE_PARALLELISM`` tasks at
once (default: the machine's cores), each task a process of its own that reports to an execution
API server this command starts on a free local port and stops at the end (it boots beside
`airflow dags test`, whose executor waits for it: authmigrate/executor.py). ``--executor none``
runs one task at a time inside the airflow process (``airflow dags test`` without an executor):
no API server, one process.

The exit code is airflow's: 0 when the run succeeded, non-zero otherwise. This process dies with
its parent, and the airflow process, the API server and every task process with theirs
(PR_SET_PDEATHSIG), so killing `make migrate` never leaves a run behind that keeps renewing the
migration lock.

    python -m tools.migrate --conf '{"dry_run": true}'
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from authmigrate.config import DAG_ID
from authmigrate.tasks import FAILURE_MARK, die_with_parent

_LOG_TAIL = re.compile(r"\s+\[authmigrate\](\s+\S+=\S+)*\s*$")  # structlog's "[logger] loc=..." suffix
_FINISHED = re.compile(r"DagRun Finished: .*?run_id=(?P<run_id>[^,]+),.*?state=(?P<state>\w+)")


EXECUTORS = ("local", "none")
EXECUTOR = "authmigrate.executor.ApiReadyLocalExecutor"  # LocalExecutor that waits for the API server


def parallelism() -> int:
    """Tasks at once under ``--executor local``: AUTHMIGRATE_PARALLELISM, else the machine's cores."""
    raw = os.environ.get("AUTHMIGRATE_PARALLELISM", "").strip()
    if not raw:
        return max(1, len(os.sched_getaffinity(0)))
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"AUTHMIGRATE_PARALLELISM must be a positive integer, got {raw!r}")
    return int(raw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executor_env(env: dict[str, str], port: int, tasks: int) -> dict[str, str]:
    """The environment of the API server and of `airflow dags test --use-executor`: LocalExecutor,
    ``tasks`` at once, tasks reporting to the API server on ``port``; both sign and check the
    tasks' tokens with one secret (a fresh one unless the environment sets it).

    A task's supervisor waits for its process in ``select()`` for up to
    ``[workers] min_heartbeat_interval`` (default 5 s). When the process closes its sockets a
    moment before it can be reaped, the supervisor sleeps that whole interval before it reports
    the task done: at 1,000,000 users that added ~5 s to a third of the tasks, several on the
    critical path. 1 s (unless the environment sets it) bounds that to 1 s, for one heartbeat
    a second per running task."""
    return {**env, "AIRFLOW__CORE__EXECUTOR": EXECUTOR, "AIRFLOW__CORE__PARALLELISM": str(tasks),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_urlsafe(32),
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": env.get("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL") or "1"}


STOP_GRACE = 1.0  # seconds the API server gets to exit after SIGTERM before it is killed


class ExecutionAPI:
    """The API server's process, and whether this command stopped it (:meth:`stop`)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.stopped = proc, False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited_by_itself(self) -> int | None:
        """Its exit code if it ended without :meth:`stop`, else None."""
        return None if self.stopped else self.proc.poll()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds. Uvicorn stops in ~0.1 s; the
        process then spends ~2.5 s in interpreter teardown with nothing left to do for anyone."""
        if self.proc.poll() is None and not self.stopped:
            self.stopped = True
            self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def execution_api(airflow: str, env: dict[str, str], port: int, log_path: Path):
    """An `airflow api-server --apps execution` on 127.0.0.1:``port`` while the block runs. The
    block starts at once, beside the server's boot: the executor waits for its health check
    (:class:`authmigrate.executor.ApiReadyLocalExecutor`, told the server's pid)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([airflow, "api-server", "--apps", "execution", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    api = ExecutionAPI(proc)
    try:
        yield api
    finally:
        api.stop()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def summary(lines, returncode: int) -> list[str]:
    """The closing lines: the run's state and the failures the tasks reported."""
    finished, failures = None, []
    for line in lines:
        finished = _FINISHED.search(line) or finished
        if FAILURE_MARK in line:
            failures.append(_LOG_TAIL.sub("", line[line.index(FAILURE_MARK) + len(FAILURE_MARK):]).strip())
    state = finished["state"] if finished else ("failed" if returncode else "unknown")
    run_id = finished["run_id"] if finished else "?"
    out = ["", f"==== authmigrate: run {run_id} {state.upper()} (airflow exit code {returncode}) ===="]
    if state == "success" and returncode == 0:
        out.append("The report is in the validate task's log above, in authmigrate.runs and under "
                   "$AUTHMIGRATE_REPORT_DIR (default $AIRFLOW_HOME/authmigrate-reports).")
        return out
    if failures:
        out += [f"  {f}" for f in dict.fromkeys(failures)]
    else:
        out.append("  no task reported its failure (the process may have been stopped); see the log above")
    return out


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # killing `make migrate` (make, then this) ends the whole run
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default="{}", help="the run's params as JSON")
    parser.add_argument("--airflow", default=str(Path(sys.executable).with_name("airflow")))
    parser.add_argument("--executor", choices=EXECUTORS, default=os.environ.get("AUTHMIGRATE_EXECUTOR") or "local",
                        help="local: tasks side by side under LocalExecutor (default); none: one task at a time, "
                             "in-process")
    args = parser.parse_args(argv)
    try:
        json.loads(args.conf)
    except ValueError as exc:
        print(f"CONF is not valid JSON ({exc}): {args.conf!r}", file=sys.stderr)
        return 2
    command = [args.airflow, "dags", "test", DAG_ID, "--conf", args.conf]
    if args.executor == "none":
        return _run(command, dict(os.environ))
    tasks, port = parallelism(), _free_port()
    env = executor_env(dict(os.environ), port, tasks)
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    print(f"authmigrate: LocalExecutor, {tasks} tasks at once; execution API on 127.0.0.1:{port}", flush=True)
    api_log = home / "logs" / "migrate-execution-api.log"
    with execution_api(args.airflow, env, port, api_log) as api:
        # the server is stopped once the run has finished (every task has reported its end), while
        # `airflow dags test` ends its executor and exits (~1 s), not after
        returncode = _run([*command, "--use-executor"], {**env, "AUTHMIGRATE_EXECUTION_API_PID": str(api.pid)},
                          on_finished=api.stop)
        api_exit = api.exited_by_itself()
    if returncode != 0 and api_exit is not None:
        print(f"authmigrate: the execution API server exited with code {api_exit} during the run; its log: "
              f"{api_log}\n{_tail(api_log)}\nWhat to do: see that log; AUTHMIGRATE_EXECUTOR=none runs the DAG "
              f"without the API server, one task at a time", file=sys.stderr, flush=True)
        return 3
    return returncode


def _run(command: list[str], env: dict[str, str], on_finished=None) -> int:
    """Run ``command``, its output passed through, then the summary; ``on_finished()`` is called
    in a thread of its own once it logs that the DAG run finished, and has returned when this does."""
    import threading

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, preexec_fn=die_with_parent)
    kept = []  # only what the summary reads
    finishing = None
    for line in proc.stdout:
        sys.stdout.write(line)
        if FAILURE_MARK in line or "DagRun Finished" in line:
            kept.append(line.rstrip("\n"))
        if on_finished is not None and finishing is None and _FINISHED.search(line):
            finishing = threading.Thread(target=on_finished, name="on-finished", daemon=True)
            finishing.start()
    returncode = proc.wait()
    if finishing is not None:
        finishing.join()
    sys.stdout.flush()
    print("\n".join(summary(kept, returncode)), flush=True)
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
