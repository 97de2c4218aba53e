"""One version per deployment: the alias is resolved once, and replicas started after the alias moved
(a scale-up, a restarted replica) serve that same version; ``/health`` names it. A model that is not
registered or cannot be loaded stops ``slimray serve`` with one line."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_serve import _free_port, _get, _post, _register

from pipelines.scale.serve import ServeConfig, build_app, main, resolve
from tasks.reporting.deploy import NOT_REGISTERED_TAG, REGISTRY_TAG


def _replicas_seen(url: str, want: int, seconds: float = 60) -> dict[str, dict]:
    """``/health`` by replica id, asked until ``want`` replicas answered (requests spread over them)."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + seconds
    while len(seen) < want and time.monotonic() < deadline:
        h = _get(f"{url}/health")
        seen[h["replica"]] = h
    return seen


@pytest.mark.slow
def test_replicas_started_after_the_alias_moved_serve_the_pinned_version(ray_local, workdir):
    import ray
    from ray import serve

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    first = _register(uri, seed=0)  # version 1 <- @candidate
    pinned = resolve("models:/tiny@candidate", uri)  # what slimray serve does once, at start
    assert pinned["version"] == "1" and pinned["uri"] == "models:/tiny/1"
    _register(uri, seed=1)  # version 2: the alias moves to it
    assert str(MlflowClient(uri).get_model_version_by_alias("tiny", "candidate").version) == "2"
    port = _free_port()
    cfg = ServeConfig(model="models:/tiny@candidate", port=port, cpus_per_replica=0.5, batching=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg, uri, pinned), name="test-pin", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        (old,) = _replicas_seen(url, 1).values()
        ray.kill(ray.get_actor(old["replica"], namespace="serve"), no_restart=True)  # a crash
        cfg.replicas = 2  # and a scale-up: both replicas start after the alias moved
        serve.run(build_app(cfg, uri, pinned), name="test-pin", route_prefix="/")
        seen = _replicas_seen(url, 2)
        assert len(seen) == 2 and old["replica"] not in seen, seen.keys()
        assert {(h["name"], h["version"], h["run_id"]) for h in seen.values()} == {("tiny", "1", pinned["run_id"])}
        x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
        with torch.no_grad():
            ref = first(torch.from_numpy(x)).numpy()
        for _ in range(8):  # every answer is version 1's, whichever replica gives it
            status, out = _post(f"{url}/predict", json.dumps({"inputs": x.tolist()}).encode())
            assert status == 200 and np.allclose(out["logits"], ref, atol=1e-5)
    finally:
        serve.shutdown()


def test_a_model_that_cannot_be_loaded_or_was_never_registered_is_one_line(workdir, capsys):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    _register(uri)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("ghost-pipeline"), tags={REGISTRY_TAG: "ghost"})
    client.set_tag(run.info.run_id, NOT_REGISTERED_TAG, "the benchmark selected no model: nothing registered")
    capsys.readouterr()
    assert main(["model=models:/ghost@candidate"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert run.info.run_id in err and "selected no model" in err
    source = client.get_model_version("tiny", "1").source
    store = next(p for p in (workdir / "mlruns").rglob("MLmodel") if "model" in str(p.parent))
    shutil.rmtree(store.parent)  # the version's files are gone
    assert main(["model=models:/tiny@candidate"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "cannot be fetched or loaded" in err and "Traceback" not in err, (source, err)
