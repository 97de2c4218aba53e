"""``slimray serve`` on real Ray Serve, a real MLflow registry (sqlite) and real ONNX Runtime:
the happy path, dynamic batching, every class of bad request (4xx, replica still alive) and the
config errors that stop before Ray starts."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from pipelines.scale.serve import ServeConfig, build_app, load_config, main
from tasks.models.zoo import MLP
from tasks.runtime.onnx import to_onnx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(uri: str, seed: int = 0) -> MLP:
    """A small MLP registered as ``tiny@candidate`` (ONNX) in the MLflow store at ``uri``; its first
    weight (6 x 64 floats) is large enough that MLflow stores it as external data."""
    import mlflow
    import onnx

    torch.manual_seed(seed)
    model = MLP([6], 3, [64]).eval()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            onnx.load_from_string(to_onnx(model, torch.randn(2, 6))),
            name="model",
            registered_model_name="tiny",
            pip_requirements=["onnxruntime"],
        )
    mlflow.MlflowClient(uri).set_registered_model_alias("tiny", "candidate", str(info.registered_model_version))
    return model


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:  # e.g. the proxy's plain-text 404/503 while the app is still deploying
            return e.code, {"raw": text.decode(errors="replace")}


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_serve_predicts_batches_and_rejects_bad_requests(ray_local, workdir):
    from ray import serve

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    model = _register(uri)
    port = _free_port()
    cfg = ServeConfig(
        model="models:/tiny@candidate",
        port=port,
        max_request_rows=16,
        max_batch_size=8,
        batch_wait_timeout_s=0.05,
        cpus_per_replica=0.5,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg, uri), name="test-serve", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
        status, out = _post(f"{url}/predict", json.dumps({"inputs": x.tolist()}).encode())
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert status == 200 and np.allclose(out["logits"], ref, atol=1e-5)
        assert out["classes"] == ref.argmax(1).tolist()
        # concurrent requests are batched together and each gets its own rows back
        bodies = [json.dumps({"inputs": x[i : i + 1].tolist()}).encode() for i in range(5)]
        with ThreadPoolExecutor(5) as ex:
            answers = list(ex.map(lambda b: _post(f"{url}/predict", b), bodies))
        assert [a[1]["classes"][0] for a in answers] == out["classes"]
        bad = {
            b'{"inputs": [[1, 2, 3]]}': 422,  # wrong shape
            b'{"inputs": [[1, 2, 3, 4, 5, "x"]]}': 422,  # non-numeric
            b'{"inputs": [[1, 2, 3, 4, 5, 6], [1, 2]]}': 422,  # ragged
            b'{"inputs": []}': 422,  # empty
            b'{"data": [[1, 2, 3, 4, 5, 6]]}': 422,  # no inputs key
            json.dumps({"inputs": [[0.0] * 6] * 17}).encode(): 413,  # oversized batch
            b'{"inputs": [[1, 2, 3, 4, 5, NaN]]}': 422,  # not finite
            b'{"inputs": [[1, 2,': 400,
        }  # malformed JSON
        for body, code in bad.items():
            status, answer = _post(f"{url}/predict", body)
            assert status == code and "\n" not in answer["error"], (body, status, answer)
        with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
            assert json.loads(r.read())["input_shape"] == [6]
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as r:
            assert "/predict" in json.loads(r.read())["paths"]
        assert _post(f"{url}/predict", bodies[0])[0] == 200  # the replica survived every bad request
        assert serve.status().applications["test-serve"].status == "RUNNING"
    finally:
        serve.shutdown()


def test_config_errors_are_one_line_and_stop_before_ray(workdir, capsys):
    assert main(["prot=8001"]) == 2  # composed by the engine's one loader against ServeConfig
    assert "Key 'prot' not in 'ServeConfig'" in capsys.readouterr().err
    assert main(["port=abc"]) == 2
    assert "port" in capsys.readouterr().err
    assert main(["host=0.0.0.0"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert main(["model=models:/nope@candidate"]) == 2
    assert "no MLflow store at sqlite:///" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()  # nothing created by a failed start
    _register(f"sqlite:///{workdir / 'mlflow.db'}")
    capsys.readouterr()
    assert main(["model=models:/nope@candidate"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no registered model models:/nope@candidate" in errors[0]
    assert load_config(["batching=false", "autoscaling.enabled=true"]).autoscaling.enabled
    assert main(["ingress=h3"]) == 2
    assert "ingress: 'h3' is not one of ['auto', 'grpc', 'haproxy', 'proxy', 'throughput']" in capsys.readouterr().err
    assert load_config([]).ingress == "proxy"  # auto: every port on loopback without a token
    assert load_config(["auth_token=t"]).ingress == "haproxy"  # ... the fastest where its ports ask for one
    assert main(["ingress=haproxy"]) == 2  # it opens the replicas' ports on every interface
    assert "ingress: 'haproxy' needs auth_token" in capsys.readouterr().err
    assert main(["request_timeout_s=0"]) == 2 and "request_timeout_s" in capsys.readouterr().err
    assert load_config(["host=0.0.0.0", "auth_token=t"]).host == "0.0.0.0"  # beyond loopback only with a token


def test_ingress_options_are_environment_set_before_ray_starts():
    from pipelines.scale.serve_config import ingress_env

    assert ingress_env("proxy") == {}
    assert ingress_env("throughput") == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    a, b = ingress_env("haproxy"), ingress_env("haproxy")
    assert a["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and a["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].endswith("/haproxy.cfg")
    assert a["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] != b["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]  # private folders
    assert not a["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"].startswith("/tmp/haproxy-serve")
    assert int(a["RAY_SERVE_HAPROXY_STATS_PORT"]) not in (8404, 9101)
    for env in (a, b):
        shutil.rmtree(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])


@pytest.mark.slow
def test_cli_serves_in_the_foreground_until_ctrl_c(workdir):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    _register(uri)
    port = _free_port()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(root), "SLIMRAY_CONF": str(root / "conf")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines",
            "serve",
            "model=models:/tiny@candidate",
            f"port={port}",
            "ray_num_cpus=1",
            "cpus_per_replica=0.5",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, answer = time.monotonic() + 150, None
        while time.monotonic() < deadline and proc.poll() is None and (answer is None or answer[0] != 200):
            try:
                answer = _post(f"http://127.0.0.1:{port}/predict", json.dumps({"inputs": [[0.0] * 6]}).encode())
            except OSError:
                pass
            time.sleep(0.5)
        assert answer is not None and answer[0] == 200 and len(answer[1]["classes"]) == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
