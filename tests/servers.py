"""Real servers for the fault tests: a private PostgreSQL and an MLflow server on it, each
started and stopped by handle (PostgreSQL by ``pg_ctl`` on its own data directory)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_dir(prefix: str) -> Path:
    """A directory directly under /tmp that the ``postgres`` user may traverse (pytest's own
    tmp dirs sit below a mode-700 directory)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o711)
    return d


def pg_bin() -> Path:
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else Path("/usr/lib/postgresql/15/bin")


class Postgres:
    """``initdb`` + ``pg_ctl start/stop`` on 127.0.0.1 (as the ``postgres`` user when root, so
    ``root`` and every directory above it must be traversable: use ``private_dir``)."""

    def __init__(self, root: Path):
        self.dir = root / "pg"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.run_as:
            os.chmod(root, 0o711)
            shutil.chown(self.dir, "postgres")
        self._pg("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "slimray")

    def _pg(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.run_as, str(pg_bin() / tool), *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        self._pg(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-o",
            f"-k {self.dir} -h 127.0.0.1 -p {self.port}",
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def create_db(self, name: str) -> str:
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "slimray",
                "-d",
                "postgres",
                "-qc",
                f"CREATE DATABASE {name}",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return f"postgresql+psycopg2://slimray@127.0.0.1:{self.port}/{name}"


class MlflowServer:
    """``mlflow server`` (1 worker, proxied artifacts) in its own process group."""

    def __init__(self, root: Path, backend: str, port: int | None = None):
        self.root, self.backend = root, backend
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--default-artifact-root",
            "mlflow-artifacts:/",
        ]
        log = self.root / f"mlflow-{time.time():.0f}.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
