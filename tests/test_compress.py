"""`compress` with experiment=smoke end to end through the engine (real Ray, real sqlite MLflow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from test_benchmark import ROW_KEYS  # the benchmark.json row schema, pinned in one place

from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.store import artifacts
from tasks.core.types import BenchmarkReport, Publication, Report

pytestmark = pytest.mark.usefixtures("ray_local")

HEADLINE = {
    "selected.test_acc",
    "teacher.test_acc",
    "selected_vs_teacher.test_acc_delta",
    "selected_vs_teacher.size_reduction",
    "selected_vs_teacher.throughput_speedup",
    "selected_vs_teacher.latency_speedup_b1",
}


def run_compress(workdir, *extra: str):
    overrides = ["experiment=smoke", f"tracking.uri=sqlite:///{workdir}/mlflow.db", *extra]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    return out, MlflowClient(tracking_uri=out.uri)


def selected_run(out, step: str) -> str:
    st = out.states[step]
    return st.trials[st.selected].meta.run_id


def step_output(client: MlflowClient, out, step: str, dst):
    """A step's stored output, decoded by the engine's own codec."""
    return artifacts.load(client.download_artifacts(selected_run(out, step), "output", str(dst / step)))


def check_report(client: MlflowClient, out, dst) -> tuple[BenchmarkReport, Report]:
    """What the task side guarantees: a typed benchmark and a report returning its Publication."""
    bench = step_output(client, out, "benchmark", dst)
    rep = step_output(client, out, "report", dst)
    assert isinstance(bench, BenchmarkReport) and isinstance(rep, Report)
    pub = rep.publish
    if pub is None:  # the engine stores a step's Publication apart from its output, under publish/
        pub = artifacts.load(client.download_artifacts(selected_run(out, "report"), "publish", str(dst / "pub")))
    assert isinstance(pub, Publication)
    assert set(pub.files) == {"pareto.png", "report.md", "kbit.png"} and pub.files["pareto.png"][:4] == b"\x89PNG"
    assert "| log2 | 4 |" in pub.files["report.md"].decode()  # accuracy per quantizer and bits (smoke: 4 bits)
    assert HEADLINE <= set(pub.metrics) and pub.description and pub.console
    assert pub.metrics["selected.test_acc"] == bench.selected.test_acc
    assert [(m.name, m.alias) for m in pub.models] == [(f"compress-{bench.dataset}", "candidate")]
    assert len(pub.models[0].onnx) == bench.selected.size_bytes  # the registered file is the benchmarked one
    return bench, rep


def test_compress_smoke(workdir):  # the one pipeline run end to end in make test: the path of `make run`
    out, client = run_compress(workdir)
    path = client.download_artifacts(selected_run(out, "benchmark"), "benchmark.json", str(workdir / "dl"))
    bench = json.loads(open(path).read())
    assert bench["dataset"] == "mnist1d" and bench["threads"] >= 1
    kinds = {c["kind"] for c in bench["candidates"]}
    assert kinds == {"teacher", "student_scratch", "student_kd", "pruned", "quantized"}
    rows = {c["name"]: c for c in bench["candidates"]}
    for c in bench["candidates"]:
        assert ROW_KEYS <= set(c), c["name"]
        assert 0.0 <= c["test_acc"] <= 1.0 and c["size_bytes"] > 0
        if c["simulated"]:  # fake k-bit: size at its bit width, no speed claimed, never selected
            assert c["throughput_b256"] is None and c["latency_ms_p50_b1"] is None and not c["selected"]
            assert c["size_bytes"] < rows[c["parent"]]["size_bytes"], c["name"]
        else:
            assert c["throughput_b256"] > 0, c["name"]
    assert sum(c["simulated"] for c in bench["candidates"]) == 3  # the kbit sweep: 3 quantizers x 4 bits
    # the parity gate's rules, not one CPU's outcome (INT8 kernels differ by CPU: ort_int8.py): a
    # rejected model is never selected, the selected one passed, a passing INT8 model is selected
    selected = [c for c in bench["candidates"] if c["selected"]]
    assert len(selected) == 1 and not selected[0]["rejected"]
    int8 = next(c for c in bench["candidates"] if c["int8_onnx"])
    gate = client.get_run(selected_run(out, "quantize")).data.metrics
    assert int8["rejected"] == (gate["parity_agreement"] < 0.97) == bool(gate["rejected"]), gate
    teacher = next(c for c in bench["candidates"] if c["kind"] == "teacher")
    if not int8["rejected"]:
        assert selected[0]["name"] == int8["name"] and selected[0]["size_bytes"] < teacher["size_bytes"]
    typed, _ = check_report(client, out, workdir / "out")
    assert typed == BenchmarkReport.from_dict(bench)
    check_parent(client, out, typed)
    again, _ = run_compress(workdir)  # fully cached: the parent run must carry the same
    assert {st.status for st in again.states.values()} == {"cached"}
    check_parent(client, again, typed)


def check_parent(client: MlflowClient, out, typed: BenchmarkReport) -> None:
    """What the engine publishes from the report's Publication on the parent run."""
    run = client.get_run(out.run_id)
    assert {"pareto.png", "report.md", "config.yaml"} <= {a.path for a in client.list_artifacts(out.run_id)}
    assert HEADLINE <= set(run.data.metrics)
    assert run.data.metrics["selected.test_acc"] == pytest.approx(typed.selected.test_acc)
    assert run.data.tags["mlflow.note.content"].startswith("## Compression report: mnist1d")
    version = client.get_model_version_by_alias("compress-mnist1d", "candidate")
    assert version.run_id == out.run_id


def labeled_only_npz(path, n_train: int = 1200, n_test: int = 300, dim: int = 40, classes: int = 10) -> None:
    """A user's own arrays without ``x_unlabeled``: linearly separable classes with label noise."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(dim, classes)).astype(np.float32)
    x = rng.normal(size=(n_train + n_test, dim)).astype(np.float32)
    y = (x @ w + 0.5 * rng.normal(size=(len(x), classes))).argmax(1).astype(np.int64)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])


@pytest.mark.slow
def test_compress_on_an_npz_without_transfer_pool(workdir):
    """The README's own-data path with the optional pool left out: every step runs, none fails."""
    labeled_only_npz(workdir / "mine.npz")
    out, client = run_compress(workdir, "data=npz", f"data.path={workdir / 'mine.npz'}")
    assert all(st.status == "done" for st in out.states.values()), {n: st.status for n, st in out.states.items()}
    assert out.states["data"].summary["n_transfer"] == 0
    for step in ("student_kd", "prune"):  # both asked for the pool and fell back to the labeled rows
        assert all(t.meta.summary["transfer_rows"] == 0 for t in out.states[step].trials), step
    bench, _ = check_report(client, out, workdir / "out")
    # the KD student's val_acc that selection compared against is that of the model it returned
    kd = out.states["student_kd"].summary["val_acc"]
    assert client.get_run(selected_run(out, "student_kd")).data.metrics["val_acc"] == pytest.approx(kd)
    row = next(r for r in bench.candidates if r.kind == "student_kd")
    assert row.val_acc == pytest.approx(kd, abs=0.01)  # ORT vs torch on 120 val rows: at most a tie flips
