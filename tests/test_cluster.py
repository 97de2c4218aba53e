"""The engine on a real 2-node Ray cluster with a real MLflow tracking server.

Steps are pinned to nodes with custom resources; every output is stored through the server's
proxied artifact store (``mlflow-artifacts:/``), so a rerun that needs a cached output on
another node can only get it from the server, never from a local path.

Everything started here (server, cluster, driver connection) is stopped by handle in the
fixtures' teardown, also when the test fails.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.store import artifacts
from tests.engine_helpers import all_runs
from tests.servers import MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

MLFLOW = Path(sys.executable).with_name("mlflow")
GiB = 1024**3


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a free local port: sqlite backend, proxied artifacts in tmp_path."""
    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}")
    try:
        server.start(timeout=60)
        yield server.url, root / "artifacts"
    finally:
        server.stop()


@pytest.fixture
def two_node_cluster():
    """Head (``node_a``) + one worker node (``node_b``), 1 CPU each, the driver connected."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # the session's embedded Ray (ray_local re-inits it when needed)
        ray.shutdown()
    node_args = dict(num_cpus=1, memory=2 * GiB, object_store_memory=200 * 1024**2)
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "resources": {"node_a": 1}})
    try:
        worker = cluster.add_node(**node_args, resources={"node_b": 1})
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, logging_level="WARNING")
        yield {"node_a": cluster.head_node.node_id, "node_b": worker.node_id}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(uri: str, pipeline: dict, overrides: tuple[str, ...] = ()):
    cfg = load_config(["pipeline=demo", f"tracking.uri={uri}", *overrides])
    cfg.pipeline = OmegaConf.create(pipeline)
    spec, ray_cfg, tracking = session.validate(cfg)
    return session.execute(cfg, spec, ray_cfg, tracking, list(overrides))


PIPELINE = {
    "name": "two_nodes",
    "steps": {
        "source": {"task": "toy_source", "params": {"value": 1.0}, "resources": {"custom": {"node_a": 1}}},
        "add": {
            "task": "toy_add",
            "inputs": {"x": "source"},
            "params": {"amount": 2.0},
            "resources": {"custom": {"node_b": 1}},
        },
        "total": {"task": "toy_sum", "inputs": {"xs": ["source", "add"]}, "resources": {"custom": {"node_a": 1}}},
    },
}
PINNED = {"source": "node_a", "add": "node_b", "total": "node_a"}


def _by_step(outcome) -> dict:
    return {r.data.tags["slimray.step"]: r for r in all_runs(outcome)}


def test_pipeline_on_two_nodes_with_tracking_server(tmp_path, monkeypatch, mlflow_server, two_node_cluster):
    import ray

    uri, server_artifacts = mlflow_server
    nodes = two_node_cluster
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    monkeypatch.chdir(client_dir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert ray.get_runtime_context().get_node_id() == nodes["node_a"]  # the driver is on the head
    assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2

    # 1. first run: every step executes on its pinned node
    first = _run(uri, PIPELINE)
    assert first.exit_code == 0
    assert {n: st.status for n, st in first.states.items()} == {"source": "done", "add": "done", "total": "done"}
    runs = _by_step(first)
    for step, node in PINNED.items():
        assert runs[step].data.tags["slimray.node_id"] == nodes[node], step
        assert runs[step].data.tags["slimray.stored"] == "true"
        assert runs[step].info.artifact_uri.startswith("mlflow-artifacts:/"), runs[step].info.artifact_uri
    assert len({runs[s].data.tags["slimray.node_id"] for s in PINNED}) == 2
    # (1 + 2) on node_b, then [1]*4 + [3]*4 summed on node_a
    expected = torch.full((4,), 4.0)
    assert torch.equal(ray.get(first.states["total"].trials[0].output).value, expected)

    # outputs live on the server: download through it and decode
    client = MlflowClient(tracking_uri=uri)
    for step, value in (("add", torch.full((4,), 3.0)), ("total", expected)):
        local = client.download_artifacts(runs[step].info.run_id, "output", str(tmp_path / f"dl-{step}"))
        assert torch.equal(artifacts.load(local).value, value)
    stored = list(server_artifacts.rglob("value.json"))
    assert len(stored) == 3, stored  # one per step, in the server's artifact destination
    assert not any((client_dir / d).exists() for d in ("mlruns", "mlartifacts", "mlflow.db"))

    # 2. rerun: everything cached, nothing executes
    again = _run(uri, PIPELINE)
    assert again.exit_code == 0
    assert {st.status for st in again.states.values()} == {"cached"}
    cached = _by_step(again)
    assert {r.data.tags["slimray.cached"] for r in cached.values()} == {"true"}
    assert {r.data.tags["slimray.cache_source"] for r in cached.values()} == {runs[s].info.run_id for s in PINNED}

    # 3. change only the fan-in: source and add are cache hits whose outputs must be loaded by
    # tasks on their pinned nodes (node_b has no local copy of anything): from the server only
    changed = copy.deepcopy(PIPELINE)
    changed["steps"]["total"]["params"] = {"metric": "grand_total"}
    third = _run(uri, changed)
    assert third.exit_code == 0
    assert {n: st.status for n, st in third.states.items()} == {"source": "cached", "add": "cached", "total": "done"}
    rerun = _by_step(third)
    for step, node in PINNED.items():
        assert rerun[step].data.tags["slimray.node_id"] == nodes[node], step
    assert rerun["add"].data.tags["slimray.cached"] == "true"
    assert torch.equal(ray.get(third.states["total"].trials[0].output).value, expected)
    assert rerun["total"].data.metrics["grand_total"] == 16.0
    assert MlflowClient(tracking_uri=uri).get_run(third.run_id).info.status == "FINISHED"
