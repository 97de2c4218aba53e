"""The benchmark's served measurement (``tasks.serving.load``): a zoo model deployed from its ONNX
bytes with ``slimray serve``'s deployment, measured over HTTP on loopback from inside a Ray task
(where the benchmark step runs), and nothing left on the cluster afterwards."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.config.compose import load_config
from pipelines.run import session
from tasks.core.types import BenchmarkReport, BenchmarkRow, Targets
from tasks.models.zoo import MLP
from tasks.runtime.onnx import to_onnx
from tasks.serving.load import ServingLoad, fire, ranking_note, served_figures


@pytest.mark.slow
def test_served_figures_of_a_zoo_model_from_inside_a_task(ray_local):
    from ray import serve

    torch.manual_seed(0)
    x = torch.randn(8, 6)
    blob = to_onnx(MLP([6], 3, [64]).eval(), x)
    load = ServingLoad(concurrency=4, requests=40, max_batch_size=4)
    task = ray_local.remote(num_cpus=1)(served_figures)  # the benchmark step holds one CPU
    figures = ray_local.get(task.remote(blob, x, 1, load), timeout=300)
    assert figures["serve_errors"] == 0
    assert 0 < figures["serve_p50_ms"] <= figures["serve_p99_ms"]
    assert figures["serve_rps"] > 0
    assert serve.status().applications == {}  # the app is deleted and Serve shut down


def test_fire_counts_errors_and_checks_the_config():
    """A port nobody answers on a 404 route is still one error per request, never a hang."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotFound(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - the stdlib's name
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        out = fire(port, "/x/predict", b"{}", ServingLoad(concurrency=2, requests=6))
        assert out["serve_errors"] == 6 and out["serve_rps"] > 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    with pytest.raises(ValueError, match="requests: 0 is not >= 1"):  # checked when the config is built
        ServingLoad(concurrency=2, requests=0)


@pytest.mark.slow
def test_benchmark_chooses_on_served_p99_through_the_engine(ray_local, workdir):
    """``benchmark.serving`` on and ``objective: serve_p99_ms``: every candidate carries its served
    figures in benchmark.json and the selected one has the lowest served p99 (``speed_tie: 0``)."""
    from ray import serve

    overrides = ["pipeline=serve_select", f"tracking.uri=sqlite:///{workdir}/mlflow.db"]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    st = out.states["benchmark"]
    run_id = st.trials[st.selected].meta.run_id
    path = MlflowClient(out.uri).download_artifacts(run_id, "benchmark.json", str(workdir / "dl"))
    rows = json.loads(open(path).read())["candidates"]
    assert {r["name"] for r in rows} == {"wide", "narrow"}
    for r in rows:
        assert r["serve_p50_ms"] > 0 and r["serve_p99_ms"] >= r["serve_p50_ms"] and r["serve_rps"] > 0
    best = min(rows, key=lambda r: r["serve_p99_ms"])  # the oracle: all feasible (max_acc_drop 1.0)
    assert [r["name"] for r in rows if r["selected"]] == [best["name"]]
    metrics = MlflowClient(out.uri).get_run(run_id).data.metrics
    assert metrics[f"{best['name']}/serve_p99_ms"] == pytest.approx(best["serve_p99_ms"])
    assert serve.status().applications == {}  # nothing left on the cluster


def _row(name: str, throughput: float, latency: float, rps: float, p99: float) -> BenchmarkRow:
    row = BenchmarkRow(name, "pruned", None, 0.9, 0.9, 10, 10, 10, 100, latency, latency, throughput)
    row.serve_p50_ms, row.serve_p99_ms, row.serve_rps = p99 / 2, p99, rps
    return row


def test_ranking_note_says_when_served_figures_order_candidates_differently():
    a, b = _row("a", 9000.0, 0.1, 200.0, 30.0), _row("b", 3000.0, 0.3, 250.0, 20.0)
    note = ranking_note([a, b])
    assert note == (
        "served and model-only figures rank the candidates differently (best first): "
        "throughput_b256 a, b vs serve_rps b, a; latency_ms_p50_b1 a, b vs serve_p99_ms b, a"
    )
    b.serve_rps, b.serve_p99_ms = 150.0, 40.0  # the same order both ways: nothing to say
    assert ranking_note([a, b]) == ""
    only_latency = ranking_note([a, _row("c", 100.0, 1.0, 1.0, 1.0)])  # c: slower model, lower served p99
    assert only_latency.endswith(": latency_ms_p50_b1 a, c vs serve_p99_ms c, a")


def test_choose_takes_the_lowest_served_p99_and_a_served_objective_needs_the_measurement():
    from tasks.evaluation.selection import choose
    from tasks.reporting.tables import columns
    from tasks.steps.benchmark import BenchmarkConfig

    fast_model, fast_served = _row("a", 9000.0, 0.1, 200.0, 30.0), _row("b", 3000.0, 0.3, 250.0, 20.0)
    on = ServingLoad(concurrency=2)
    rule = BenchmarkConfig(choose=True, speed_tie=0.0, objective="serve_p99_ms", serving=on)
    assert choose([fast_model, fast_served], rule, "classification")[0] is fast_served
    assert choose([fast_model, fast_served], BenchmarkConfig(choose=True), "classification")[0] is fast_model
    tied = BenchmarkConfig(choose=True, speed_tie=0.6, objective="serve_p99_ms", serving=on)
    fast_model.size_bytes = 50  # within 60% of the best served p99: the smaller one wins
    assert choose([fast_model, fast_served], tied, "classification")[0] is fast_model
    with pytest.raises(ValueError, match="benchmark.objective: 'serve_p99_ms' needs benchmark.serving.concurrency"):
        BenchmarkConfig(objective="serve_p99_ms")
    with pytest.raises(ValueError, match="benchmark.objective: 'speed' is not one of"):
        BenchmarkConfig(objective="speed")
    bench = BenchmarkReport("d", 1, "ort", [fast_model], Targets(None, None, None), task="classification")
    assert [k for k, _ in columns(bench)[-3:]] == ["serve_p50_ms", "serve_p99_ms", "serve_rps"]  # beside the model's
    fast_model.serve_rps = None
    assert "serve_rps" not in dict(columns(bench))
