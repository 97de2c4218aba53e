"""What was selected is what gets registered, and ``slimray serve`` serves it: ``experiment=smoke`` with
a parity gate that rejects the INT8 model (as on a CPU without VNNI) registers the benchmark's own
pick from another step, and the command line serves exactly that version (piped: no colour codes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_compress import run_compress, step_output
from test_serve import _free_port, _get, _post

from tasks.reporting.deploy import REGISTRY_TAG

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _serve_cli(uri: str, port: int) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(root), "SLIMRAY_CONF": str(root / "conf")}
    env.pop("RAY_COLOR_PREFIX", None)
    args = [f"port={port}", "ray_num_cpus=1", "cpus_per_replica=0.5"]
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_smoke_with_int8_rejected_registers_the_pick_and_serve_serves_it(workdir):
    out, client = run_compress(workdir, "pipeline.steps.quantize.params.gate.min_agreement=1.01")
    bench = step_output(client, out, "benchmark", workdir / "dl")
    pick = bench.selected
    assert pick is not None and pick.name != "quantize" and bench.row("quantize").rejected
    version = client.get_model_version_by_alias("compress-mnist1d", "candidate")
    assert version.run_id == out.run_id
    run = client.get_run(out.run_id)
    assert run.data.tags[REGISTRY_TAG] == "compress-mnist1d"
    line = step_output(client, out, "report", workdir / "dl").data["registration"]
    assert f"registered '{pick.name}' (step '{pick.name.split('[')[0]}'), the benchmark's pick, not 'quantize'" in line
    port = _free_port()
    proc = _serve_cli(out.uri, port)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()
    try:
        deadline = time.monotonic() + 180  # "serving ..." is printed once the app is ready
        while not any(ln.startswith("serving ") for ln in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        health = _get(f"{url}/health")
        want = ("compress-mnist1d", str(version.version), out.run_id)
        assert (health["name"], health["version"], health["run_id"]) == want
        x = np.zeros((2, *health["input_shape"]), dtype=np.float32)
        status, answer = _post(f"{url}/predict", json.dumps({"inputs": x.tolist()}).encode())
        assert status == 200 and len(answer["classes"]) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        time.sleep(1.0)  # the reader thread drains the last lines
        log = "".join(lines)
        assert not [ln for ln in log.splitlines() if "\x1b[" in ln], "colour codes in a piped log"
        assert f"version {version.version} (run {out.run_id})" in log, log[-2000:]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
