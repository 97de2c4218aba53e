"""``cluster/up.sh`` with real processes: a failed start leaves nothing running and reruns at once;
MLflow refuses anonymous requests by default; no secret on any command line of what it started;
nothing under the state directory readable by other users; a changed ``--workers`` is refused in
one line; ``down.sh`` never signals a recorded PID that is no longer the process up.sh started."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import private_dir
from tests.test_cluster_scripts import _http_status

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRETS = ("postgres/password", "ray_token", "admin_password", "flask_secret", "cache.key")


def _script(name: str, env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [str(ROOT / "cluster" / name), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _left(state: Path, ray_tmp: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if (str(state) in ln or ray_tmp in ln) and "ps -eo" not in ln]


def _exposed(state: Path) -> list[str]:
    """Paths under ``state`` that users other than the owner can read or write (the state
    directory itself may be traversable, never listable: PostgreSQL runs as its own user)."""
    bad = []
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        allowed = 0o011 if path == state else 0
        if stat.S_ISSOCK(path.lstat().st_mode):
            continue  # PostgreSQL's socket: inside its own 0700 directory
        if mode & 0o077 & ~allowed:
            bad.append(f"{oct(mode)} {path}")
    return bad


def test_up_fails_cleanly_then_starts_authenticated_private_and_down_checks_pids():
    state = private_dir("slimray-sec-") / "cluster"
    env = {**os.environ, "SLIMRAY_CLUSTER_DIR": str(state), "SLIMRAY_VENV": str(BIN.parent)}
    env["PATH"] = f"{BIN}:{os.environ['PATH']}"
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        # a later start fails (the Ray head refuses its options): what started is stopped again
        failed = _script("up.sh", env, "--workers", "0", "--head-cpus", "abc")
        ray_tmp = (state / "ray_tmp").read_text().strip()
        assert failed.returncode == 1 and "Ray head exited" in failed.stderr, failed.stderr[-2000:]
        assert "stopped mlflow" in failed.stderr and "stopped postgres" in failed.stderr, failed.stderr
        assert not _left(state, ray_tmp) and not list((state / "pids").iterdir())
        # ... and the rerun starts at once, without down.sh
        up = _script("up.sh", env, "--workers", "1")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        cenv = dict(ln.removeprefix("export ").split("=", 1) for ln in (state / "env").read_text().splitlines())
        search = cenv["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert _http_status(search) == 401  # authenticated by default
        assert _http_status(search, ("admin", cenv["MLFLOW_TRACKING_PASSWORD"])) == 200
        assert cenv["SLIMRAY_CACHE_KEY_FILE"] == str(state / "cache.key")
        started = _left(state, ray_tmp)
        assert len(started) >= 4, started  # postgres, mlflow, ray head, a worker (and their children)
        ps_args = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        for name in SECRETS:
            secret = (state / name).read_text().strip()
            assert len(secret) >= 32 and secret not in ps_args, f"{name} is on a command line"
        assert not _exposed(state), _exposed(state)
        # a changed --workers is refused in one line; the cluster is untouched
        changed = _script("up.sh", env, "--workers", "2", timeout=120)
        assert changed.returncode == 1 and changed.stderr.count("\n") == 1, changed.stderr
        assert "up with 1 worker node(s), not 2" in changed.stderr
        # a recorded PID that is now another process (here: one of ours) is never signalled
        (state / "pids" / "ray-worker-7").write_text(f"{sleeper.pid} 1\n{state}\n")
    finally:
        down = _script("down.sh", env, timeout=180)
    assert down.returncode == 0, down.stderr
    assert sleeper.poll() is None, "down.sh signalled a process it did not start"
    assert f"PID {sleeper.pid} is no longer ray-worker-7" in down.stderr
    sleeper.kill()
    sleeper.wait()
    assert not _left(state, ray_tmp), _left(state, ray_tmp)
    assert _script("down.sh", env, "--purge", timeout=60).returncode == 0 and not state.exists()
    state.parent.rmdir()
