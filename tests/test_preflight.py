"""MLflow unreachable at start: one line within seconds, exit 2, before any Ray work."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipelines.cli import main
from pipelines.store.preflight import PreflightError, check_tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_server_fails_in_seconds_through_the_real_command(workdir):
    """The issue's case: ``MLFLOW_TRACKING_URI`` at a server that is down (it took 262 s)."""
    uri = f"http://127.0.0.1:{_free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "pipeline=demo"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MLflow server " + uri + " is unreachable"), lines
    assert elapsed < 30, elapsed
    assert not list(workdir.iterdir())  # no mlflow.db, no mlruns, nothing half-written


@pytest.mark.parametrize(
    "uri_of, expected",
    [
        (lambda d, p: f"http://127.0.0.1:{p}", "is unreachable (Connection refused"),
        (lambda d, p: f"sqlite:///{d}/missing/dir/mlflow.db", "database directory"),
        (lambda d, p: f"postgresql://slimray@127.0.0.1:{p}/mlflow", "(postgresql) is unreachable"),
        (lambda d, p: f"file://{d}/nope/deeper/mlruns", "store directory"),
    ],
)
def test_unusable_store_is_one_line_exit_2_and_starts_no_ray(workdir, capsys, uri_of, expected):
    import ray

    was_running = ray.is_initialized()
    uri = uri_of(workdir, _free_port())
    assert main(["pipeline=demo", f"tracking.uri={uri}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert ray.is_initialized() == was_running
    assert not list(workdir.iterdir())


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200 if self.path.startswith("/ok") else 404 if self.path.startswith("/nf") else 503)
        self.end_headers()
        self.wfile.write(b"<html>hello</html>")

    def log_message(self, *args):
        pass


@pytest.fixture
def plain_http():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_server_whose_backend_is_down_or_not_mlflow(plain_http):
    with pytest.raises(PreflightError, match=r"answered HTTP 503 .*backend store"):
        check_tracking(plain_http)
    with pytest.raises(PreflightError, match="does not answer like an MLflow server"):
        check_tracking(plain_http + "/ok")
    with pytest.raises(PreflightError, match=r"is not an MLflow tracking server \(HTTP 404"):
        check_tracking(plain_http + "/nf")


def test_usable_local_stores_pass(tmp_path):
    check_tracking(f"sqlite:///{tmp_path}/mlflow.db")  # the file does not need to exist yet
    check_tracking(f"file://{tmp_path}/mlruns")
    check_tracking("sqlite:///:memory:")
    check_tracking("databricks")  # left to MLflow
