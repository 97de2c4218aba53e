"""One way for a benchmark to start a command: `slimray` (``python -m pipelines``) or a Python
script, in a working directory of its choice, with a quiet environment and a private MLflow store.

    with fresh_dir("slimray-default-") as wd:
        done = slimray(["experiment=smoke"], wd).check()   # exit code, seconds, stdout, stderr
        done.store                                         # sqlite:///<wd>/mlflow.db

The environment of every command: MLflow telemetry and Ray usage stats off, the repository
importable (``PYTHONPATH``: the byo example's model, the engine tests' toy tasks), and no
``MLFLOW_TRACKING_URI`` — so `slimray` writes to ``<cwd>/mlflow.db``, never to a store the
caller happens to have configured. Output goes to temporary files, not pipes: Ray processes the
command starts inherit its descriptors and can hold a pipe open after the command has exited.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
# the engine tests' toy steps (tests/toy_tasks.py), borrowed by the engine's own benchmarks
TOY_TASKS = {"SLIMRAY_TASKS": "tests.toy_tasks", "SLIMRAY_CONF": str(ROOT / "tests" / "conf")}
TIMED_OUT = 124  # the exit code reported for a command killed at its timeout, as timeout(1) does


@dataclass
class Launched:
    """What one command did: its exit code, wall seconds, output, and where it ran."""

    cmd: list[str]
    cwd: Path
    code: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def store(self) -> str:
        """The MLflow store a `slimray` command without a tracking URI wrote to."""
        return f"sqlite:///{self.cwd}/mlflow.db"

    def check(self) -> Launched:
        """This result, or exit the benchmark with the command's last output when it failed."""
        if self.code != 0:
            sys.stderr.write(self.stdout[-3000:] + self.stderr[-3000:])
            raise SystemExit(f"{' '.join(self.cmd[:6])} exited {self.code} (in {self.cwd})")
        return self


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, quiet, with the repository importable and no tracking URI."""
    env = {**os.environ, **QUIET}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def quiet_here(extra: Mapping[str, str] | None = None) -> None:
    """The same environment for a benchmark that measures in its own process (and the Ray
    workers it starts, which inherit it); the repository becomes importable here as well."""
    env = environment(extra)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def run(
    cmd: list[str],
    cwd: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 3600,
    echo_stderr: bool = False,
) -> Launched:
    """Run ``cmd`` in ``cwd`` to its end (or kill it at ``timeout``: exit code 124). ``env`` adds
    to ``environment()``; ``echo_stderr`` lets the command's stderr through to ours (progress of
    a long benchmark) instead of capturing it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=environment(env), stdout=out, stderr=None if echo_stderr else err)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = TIMED_OUT
        except BaseException:  # Ctrl-C of the benchmark: do not leave the command running
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return Launched(list(cmd), Path(cwd), code, seconds, out.read(), err.read())


def slimray(args: list[str], cwd: str | Path, **kw) -> Launched:
    """``python -m pipelines args`` (the `slimray` command) in ``cwd``; see ``run``."""
    return run([sys.executable, "-m", "pipelines", *args], cwd, **kw)


def python(args: list[str], cwd: str | Path, **kw) -> Launched:
    """``python args`` with this interpreter (a script or ``-m module``) in ``cwd``; see ``run``."""
    return run([sys.executable, *args], cwd, **kw)


@contextmanager
def fresh_dir(prefix: str = "slimray-") -> Iterator[Path]:
    """An empty working directory, removed afterwards: a fresh MLflow store, nothing cached."""
    with tempfile.TemporaryDirectory(prefix=prefix) as wd:
        yield Path(wd)
