"""`make migrate`: one headless run of the DAG (`airflow dags test`), its output passed through
unchanged, then a closing summary, so that the last lines say how the run ended and, for a failed
run, which task failed, why, and what to do (the lines the tasks log with ``FAILURE_MARK``).

The exit code is airflow's: 0 when the run succeeded, non-zero otherwise. This process dies with
its parent and the airflow process with this one (PR_SET_PDEATHSIG), so killing `make migrate`
never leaves a run behind that keeps renewing the migration lock.

    python -m tools.migrate --conf '{"dry_run": true}'
"""
from __future__ import annotations

import argparse
import ctypes
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from authmigrate.config import DAG_ID
from authmigrate.tasks import FAILURE_MARK

_LOG_TAIL = re.compile(r"\s+\[authmigrate\](\s+\S+=\S+)*\s*$")  # structlog's "[logger] loc=..." suffix
_FINISHED = re.compile(r"DagRun Finished: .*?run_id=(?P<run_id>[^,]+),.*?state=(?P<state>\w+)")


def _die_with_parent() -> None:  # in this process, and in the airflow child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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
    _die_with_parent()  # killing `make migrate` (make, then this) ends the whole run
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default="{}", help="the run's params as JSON")
    parser.add_argument("--airflow", default=str(Path(sys.executable).with_name("airflow")))
    args = parser.parse_args(argv)
    try:
        json.loads(args.conf)
    except ValueError as exc:
        print(f"CONF is not valid JSON ({exc}): {args.conf!r}", file=sys.stderr)
        return 2
    proc = subprocess.Popen([args.airflow, "dags", "test", DAG_ID, "--conf", args.conf], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                            preexec_fn=_die_with_parent)
    kept = []  # only what the summary reads
    for line in proc.stdout:
        sys.stdout.write(line)
        if FAILURE_MARK in line or "DagRun Finished" in line:
            kept.append(line.rstrip("\n"))
    returncode = proc.wait()
    sys.stdout.flush()
    print("\n".join(summary(kept, returncode)), flush=True)
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
