"""Start and stop a local nx-27017 MongoDB wire-protocol server (tests, demo, benchmark).

Every instance gets its own data folder, pid file and log file, so several can run at once.
    python -m tools.mongo_server start --dir .run/mongo --port 27017
    python -m tools.mongo_server stop --dir .run/mongo
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str:
    candidate = Path(sys.executable).with_name("nx-27017")
    return str(candidate) if candidate.exists() else (shutil.which("nx-27017") or "nx-27017")


@dataclass
class MongoServer:
    folder: Path
    port: int

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def conn_uri(self, database: str) -> str:
        """An Airflow connection URI (type `mongo`, never `mongodb`)."""
        return f"mongo://127.0.0.1:{self.port}/{database}"

    @property
    def pid_file(self) -> Path:
        return self.folder / "nx.pid"

    def start(self, timeout: float = 20.0) -> "MongoServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.running():
            return self
        subprocess.run(
            [_binary(), "-d", "--data-dir", str(self.folder / "data"), "--host", "127.0.0.1", "-p", str(self.port),
             "--pid-file", str(self.pid_file), "--log-file", str(self.folder / "nx.log")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"nx-27017 did not answer on port {self.port} within {timeout}s; see {self.folder}/nx.log")

    def ping(self) -> bool:
        import pymongo

        try:
            with pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                client.admin.command("ping")
            return True
        except Exception:  # noqa: BLE001
            return False

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return self.ping()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default=".run/mongo")
    parser.add_argument("--port", type=int, default=27017)
    args = parser.parse_args()
    server = MongoServer(Path(args.dir).resolve(), args.port)
    if args.action == "start":
        server.start()
        print(f"nx-27017 listening on {server.uri} (data in {server.folder})")
    elif args.action == "stop":
        server.stop()
        print("nx-27017 stopped")
    else:
        print("running" if server.running() else "stopped")
        sys.exit(0 if server.running() else 1)


if __name__ == "__main__":
    main()
