"""`compress` with experiment=smoke end to end through the engine, real MLflow registry."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from pipelines import session
from pipelines.cli import load_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

FIELDS = {"name", "kind", "parent", "test_acc", "val_acc", "params", "nonzero_params", "flops", "size_bytes",
          "latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_b256", "no_speedup", "selected"}


def test_compress_smoke(workdir):
    overrides = ["experiment=smoke", f"tracking.uri=sqlite:///{workdir}/mlflow.db"]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}

    client = MlflowClient(tracking_uri=out.uri)
    bench_run = out.states["benchmark"].trials[0].meta.run_id
    path = client.download_artifacts(bench_run, "benchmark.json", str(workdir / "dl"))
    bench = json.loads(open(path).read())
    assert bench["dataset"] == "mnist1d" and bench["threads"] >= 1
    kinds = {c["kind"] for c in bench["candidates"]}
    assert kinds == {"teacher", "student_scratch", "student_kd", "pruned", "quantized"}
    for c in bench["candidates"]:
        assert FIELDS <= set(c), c["name"]
        assert 0.0 <= c["test_acc"] <= 1.0 and c["size_bytes"] > 0 and c["throughput_b256"] > 0
    selected = [c for c in bench["candidates"] if c["selected"]]
    assert len(selected) == 1 and selected[0]["kind"] == "quantized"
    teacher = next(c for c in bench["candidates"] if c["kind"] == "teacher")
    assert selected[0]["size_bytes"] < teacher["size_bytes"]

    parent_files = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"pareto.png", "report.md", "config.yaml"} <= parent_files
    version = client.get_model_version_by_alias("compress-mnist1d", "candidate")
    assert version.run_id == out.states["report"].trials[0].meta.run_id
