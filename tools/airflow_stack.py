"""Run a local Airflow 3 for this project: api-server, scheduler, dag-processor and triggerer.

LocalExecutor, the metadata DB in its own database on the local PostgreSQL (created when
missing), this project's dags/ and plugins/, SimpleAuthManager with one known login. Every
component runs in its own process group with a pid file and a log under the state folder, so
``stop`` ends exactly the processes ``start`` began (and the task processes they spawned),
nothing else.

    python -m tools.airflow_stack start  [--state-dir .run/airflow] [--port 8080] [--db authmigrate_airflow]
    python -m tools.airflow_stack status [--state-dir .run/airflow]
    python -m tools.airflow_stack stop   [--state-dir .run/airflow]
    python -m tools.airflow_stack seed-if-empty --uri mongodb://127.0.0.1:27017 --db idp --users 20000

Connections come from the environment (``AIRFLOW_CONN_*``, as for ``make migrate``) and are
passed to every component; so are ``AUTHMIGRATE_*`` settings. Layout of the state folder::

    stack.json      port, database, URL, login, log-server ports (written by start)
    secrets.json    JWT secret, API secret key, Fernet key (owner-only; kept across restarts)
    home/           AIRFLOW_HOME (airflow.cfg is not used: everything is set by environment)
    home/passwords.json   the SimpleAuthManager passwords file {"admin": "admin"}
    pids/NAME.pid   {"pid", "start_time", "argv"} of each component's process-group leader
    logs/NAME.log   stdout + stderr of each component; logs/db-migrate.log
    staging/        AUTHMIGRATE_STAGING_DIR of the runs
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_ADMIN = os.environ.get("AUTHMIGRATE_AIRFLOW_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
DAG_ID = "mongo_to_postgres"


class StackError(RuntimeError):
    """The stack could not be started or did not become healthy; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _airflow_bin() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    if not candidate.exists():
        raise StackError(f"no airflow executable next to {sys.executable}: run `make venv` first")
    return str(candidate)


# ----------------------------------------------------------------------------- processes
def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of a live process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[19])


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass
class AirflowStack:
    """One local Airflow deployment, described by its state folder.

    ``extra_env`` is added to the inherited environment of every component (connections,
    ``AUTHMIGRATE_*``); the stack's own settings are applied last and win.
    """

    state_dir: Path
    port: int = 8080
    db_name: str = "authmigrate_airflow"
    pg_admin: str = DEFAULT_PG_ADMIN
    username: str = "admin"
    password: str = "admin"
    extra_env: dict[str, str] = field(default_factory=dict)
    parallelism: int = 4

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self._procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ paths and settings
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.state_dir / "home"

    @property
    def passwords_file(self) -> Path:
        return self.home / "passwords.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pid_dir(self) -> Path:
        return self.state_dir / "pids"

    def log_file(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    @property
    def sql_alchemy_conn(self) -> str:
        base = self.pg_admin.rsplit("/", 1)[0].split("://", 1)[1]
        return f"postgresql+psycopg://{base}/{self.db_name}"

    def _secrets(self) -> dict[str, str]:
        path = self.state_dir / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        values = {
            "jwt_secret": secrets.token_urlsafe(32),
            "api_secret_key": secrets.token_urlsafe(32),
            "fernet_key": urlsafe_b64encode(os.urandom(32)).decode(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        return values

    def _log_server_ports(self) -> dict[str, int]:
        """The scheduler's and triggerer's log servers need ports too (defaults 8793/8794):
        free ones are chosen once and kept in stack.json, so two stacks never collide."""
        info = self.read_info()
        if info.get("port") == self.port and info.get("worker_log_server_port"):
            return {k: info[k] for k in ("worker_log_server_port", "trigger_log_server_port")}
        return {"worker_log_server_port": free_port(), "trigger_log_server_port": free_port()}

    def environment(self, log_ports: dict[str, int] | None = None) -> dict[str, str]:
        s = self._secrets()
        ports = log_ports or self._log_server_ports()
        env = dict(os.environ)
        env.update(self.extra_env)
        pythonpath = [str(ROOT / "plugins"), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(":") if p]
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": s["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["worker_log_server_port"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports["trigger_log_server_port"]),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "PYTHONPATH": ":".join(dict.fromkeys(pythonpath)),
            "ARROW_DEFAULT_MEMORY_POOL": env.get("ARROW_DEFAULT_MEMORY_POOL", "jemalloc"),  # memory.py
            "AUTHMIGRATE_STAGING_DIR": self.extra_env.get("AUTHMIGRATE_STAGING_DIR",
                                                          str(self.state_dir / "staging")),
        })
        return env

    # ------------------------------------------------------------------ bookkeeping files
    def read_info(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "stack.json").read_text())
        except (OSError, ValueError):
            return {}

    def _pid_file(self, component: str) -> Path:
        return self.pid_dir / f"{component}.pid"

    def _read_pid(self, component: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._pid_file(component).read_text())
        except (OSError, ValueError):
            return None

    def component_pgid(self, component: str) -> int | None:
        """The process group of a component if any process of it is still alive, else None.

        The leader's pid is compared with its recorded start time, so a recycled pid is never
        taken for ours; once the leader has gone, surviving members keep its group id (which
        the kernel never reuses while the group exists)."""
        rec = self._read_pid(component)
        if not rec:
            return None
        pid = int(rec["pid"])
        proc = self._procs.get(component)
        if proc is not None:
            proc.poll()  # reap our own zombie leader
        stat = _proc_stat(pid)
        recorded = rec.get("start_time")
        if stat and stat[0] not in ("Z", "X") and recorded is not None and stat[2] != recorded:
            return None  # the pid now belongs to someone else
        return pid if _group_members(pid) else None

    # ------------------------------------------------------------------ database
    def _admin(self):
        import psycopg

        try:
            return psycopg.connect(self.pg_admin, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise StackError(f"PostgreSQL is not reachable at {self.pg_admin}: {exc}") from exc

    def ensure_database(self) -> bool:
        """Create the metadata database when missing; True when it was created."""
        with self._admin() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.db_name,)).fetchone():
                return False
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
            return True

    def drop_database(self) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def migrate(self, env: dict[str, str], timeout: float = 600) -> None:
        log = self.log_dir / "db-migrate.log"
        with open(log, "wb") as out:
            result = subprocess.run([_airflow_bin(), "db", "migrate"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
        if result.returncode:
            raise StackError(f"`airflow db migrate` failed (exit {result.returncode}):\n{_tail(log)}")

    # ------------------------------------------------------------------ life cycle
    def running_components(self) -> dict[str, int]:
        return {c: pgid for c in COMPONENTS if (pgid := self.component_pgid(c)) is not None}

    def start(self, timeout: float = 240, wait_dag: str | None = None, quiet: bool = True) -> "AirflowStack":
        """Start every component (idempotent when all already run) and wait until healthy."""
        t0 = time.monotonic()
        running = self.running_components()
        if len(running) == len(COMPONENTS) and self.read_info().get("port") == self.port:
            self.wait_healthy(timeout)
            return self
        if running:  # a partial stack (a component died): start over cleanly
            self.stop()
        if port_in_use(self.port):
            raise StackError(f"port {self.port} on 127.0.0.1 is already in use: choose another (--port / AIRFLOW_PORT)")
        for d in (self.home, self.log_dir, self.pid_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.passwords_file.write_text(json.dumps({self.username: self.password}) + "\n")
        self.passwords_file.chmod(0o600)
        ports = self._log_server_ports()
        env = self.environment(ports)
        created = self.ensure_database()
        _say(quiet, f"metadata database {self.db_name} {'created' if created else 'exists'}; migrating")
        self.migrate(env)
        (self.state_dir / "stack.json").write_text(json.dumps({
            "url": self.url, "port": self.port, "db_name": self.db_name, "username": self.username,
            "sql_alchemy_conn": self.sql_alchemy_conn, **ports,
        }, indent=2) + "\n")
        airflow = _airflow_bin()
        args = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer"],
        }
        try:
            for component in COMPONENTS:
                argv = [airflow, *args[component]]
                out = open(self.log_file(component), "ab")
                proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                out.close()
                self._procs[component] = proc
                stat = _proc_stat(proc.pid)
                self._pid_file(component).write_text(json.dumps(
                    {"pid": proc.pid, "start_time": stat[2] if stat else None, "argv": argv}) + "\n")
            self.wait_healthy(timeout - (time.monotonic() - t0))
            if wait_dag:
                self.wait_for_dag(wait_dag, timeout=max(30.0, timeout - (time.monotonic() - t0)))
        except BaseException:
            self.stop()
            raise
        _say(quiet, f"Airflow is up in {time.monotonic() - t0:.0f}s")
        return self

    def stop(self, timeout: float = 30) -> list[str]:
        """SIGTERM every component's process group, SIGKILL what is left after ``timeout``."""
        groups = self.running_components()
        for pgid in groups.values():
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(self._alive(c, g) for c, g in groups.items()):
            time.sleep(0.2)
        for component, pgid in groups.items():
            if self._alive(component, pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for component in COMPONENTS:
            proc = self._procs.pop(component, None)
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if not (component in groups and self._alive(component, groups[component])):
                self._pid_file(component).unlink(missing_ok=True)
        return list(groups)

    def _alive(self, component: str, pgid: int) -> bool:
        proc = self._procs.get(component)
        if proc is not None:
            proc.poll()
        return bool(_group_members(pgid))

    # ------------------------------------------------------------------ HTTP
    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                timeout: float = 30) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one API call; never raises on an HTTP error status."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def health(self) -> dict[str, Any] | None:
        try:
            status, body = self.request("GET", "/api/v2/monitor/health", timeout=5)
        except (OSError, urllib.error.URLError):
            return None
        return body if status == 200 and isinstance(body, dict) else None

    @staticmethod
    def is_healthy(health: dict[str, Any] | None) -> bool:
        return bool(health) and all((health.get(k) or {}).get("status") == "healthy" for k in HEALTH_KEYS)

    def _check_processes(self) -> None:
        for component in COMPONENTS:
            proc = self._procs.get(component)
            if proc is not None and proc.poll() is not None:
                raise StackError(f"airflow {component} exited with code {proc.returncode}:\n"
                                 f"{_tail(self.log_file(component))}")

    def wait_healthy(self, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + max(timeout, 1)
        health = None
        while time.monotonic() < deadline:
            self._check_processes()
            health = self.health()
            if self.is_healthy(health):
                return health
            time.sleep(1)
        raise StackError(f"Airflow at {self.url} not healthy after {timeout:.0f}s; last health: {health}; "
                         f"logs in {self.log_dir}")

    def token(self) -> str:
        status, body = self.request("POST", "/auth/token", {"username": self.username, "password": self.password})
        if status not in (200, 201) or not isinstance(body, dict) or "access_token" not in body:
            raise StackError(f"POST /auth/token failed: {status} {body}")
        return body["access_token"]

    def wait_for_dag(self, dag_id: str = DAG_ID, timeout: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has serialized ``dag_id``; fail fast on an import error."""
        token = self.token()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_processes()
            status, body = self.request("GET", f"/api/v2/dags/{dag_id}/details", token=token)
            if status == 200:
                return body
            status, errors = self.request("GET", "/api/v2/importErrors", token=token)
            if status == 200 and errors.get("total_entries"):
                raise StackError(f"the DAG folder has import errors: {json.dumps(errors['import_errors'], indent=2)}")
            time.sleep(1)
        raise StackError(f"DAG {dag_id} was not parsed within {timeout:.0f}s; see {self.log_file('dag-processor')}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def seed_if_empty(uri: str, database: str, n_users: int) -> int:
    """Seed the demo MongoDB with tools.seed_mongo unless its users collection has documents;
    returns the number of users it holds afterwards."""
    import pymongo

    from tools.seed_mongo import seed

    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        existing = client[database]["users"].estimated_document_count()
    if existing:
        print(f"MongoDB {uri}/{database} already holds {existing} users: not seeding")
        return existing
    counts = seed(uri, database, n_users)
    print(f"seeded MongoDB {uri}/{database}: {counts}")
    return counts.get("users", 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.airflow_stack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status", "seed-if-empty"])
    parser.add_argument("--state-dir", default=".run/airflow")
    parser.add_argument("--port", type=int, default=None, help="API server port (default: the running stack's, else 8080)")
    parser.add_argument("--db", default="authmigrate_airflow", help="metadata database name")
    parser.add_argument("--pg-admin", default=DEFAULT_PG_ADMIN, help="PostgreSQL URI used to create the database")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--uri", default="mongodb://127.0.0.1:27017", help="seed-if-empty: MongoDB URI")
    parser.add_argument("--mongo-db", default="idp", help="seed-if-empty: database")
    parser.add_argument("--users", type=int, default=20000, help="seed-if-empty: number of users")
    args = parser.parse_args(argv)

    if args.action == "seed-if-empty":
        seed_if_empty(args.uri, args.mongo_db, args.users)
        return 0
    info = AirflowStack(Path(args.state_dir)).read_info()
    port = args.port or info.get("port") or 8080
    stack = AirflowStack(Path(args.state_dir), port=port, db_name=args.db if args.action == "start" else
                         info.get("db_name", args.db), pg_admin=args.pg_admin)
    if args.action == "start":
        for var in ("AIRFLOW_CONN_MONGO_DEFAULT", "AIRFLOW_CONN_POSTGRES_DEFAULT"):
            if not os.environ.get(var):
                print(f"warning: {var} is not set: the DAG will fail to connect (see README)", file=sys.stderr)
        try:
            stack.start(timeout=args.timeout, quiet=False)
            details = stack.wait_for_dag(DAG_ID, timeout=args.timeout)
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Airflow UI/API: {stack.url}  (login: {stack.username} / {stack.password})")
        paused = " (paused: unpause it in the UI before triggering)" if details.get("is_paused") else ""
        print(f"DAG {DAG_ID} is parsed{paused}. Logs: {stack.log_dir}")
        print(f"stop with: make airflow-stop  (or python -m tools.airflow_stack stop --state-dir {args.state_dir})")
        return 0
    if args.action == "stop":
        stopped = stack.stop()
        print(f"stopped: {', '.join(stopped)}" if stopped else "no Airflow component of this stack was running")
        return 0
    running = stack.running_components()
    for component in COMPONENTS:
        state = f"running (process group {running[component]})" if component in running else "stopped"
        print(f"{component:14} {state}")
    health = stack.health() if running else None
    print(f"health at {stack.url}: {json.dumps(health) if health else 'unreachable'}")
    return 0 if len(running) == len(COMPONENTS) and stack.is_healthy(health) else 1


if __name__ == "__main__":
    sys.exit(main())
