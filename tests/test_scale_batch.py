"""Batch inference on Ray Data (pipelines/scale/batch.py) with real actors: order, equality with
the unsplit model, a SIGKILLed actor (no row lost, none twice), bounded restarts."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from pipelines.scale import batch
from pipelines.scale.batch import map_batches
from tasks.core.context import StepContext
from tasks.core.types import Dataset
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.steps.inference import InferenceConfig, Predictor, plan_stages, run, stage_factories


class DataEngine:
    """The engine's side of ``ctx.parallel_predict`` without MLflow: real Ray Data actors."""

    def map_batches(self, stage_fns, x, **options):
        return map_batches(stage_fns, x, **options)

    def log_metrics(self, metrics, step=None):
        pass


def _mlp(hidden=(64, 64, 64, 64, 64), seed=0):
    arch = complete_arch({"_target_": "tasks.models.zoo.MLP", "hidden": list(hidden)}, [40], 10)
    torch.manual_seed(seed)
    return make_artifact(build_model(arch), arch, name="mlp", kind="teacher")


def _data(n=600):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 40, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset(name="d", x_train=x, y_train=y, x_val=x[:10], y_val=y[:10], x_test=x, y_test=y, num_classes=10)


@pytest.mark.slow
def test_replicas_keep_order_and_match_the_model(ray_local):
    art = _mlp()
    x = torch.randn(3000, 40)
    out, summary = map_batches([functools.partial(Predictor, art, "torch", "cpu", 1)], x, batch_size=128, replicas=2)
    with torch.no_grad():
        assert torch.allclose(out, load_model(art)(x), atol=1e-6)
    assert summary["rows"] == 3000 and summary["restarts"] == 0
    assert summary["util_replica0_stage0"] > 0 and summary["util_replica1_stage0"] > 0  # both replicas worked


@pytest.mark.slow
def test_pipeline_stages_equal_the_unsplit_model_and_report_bubbles(ray_local):
    art, data = _mlp(), _data()
    cfg = InferenceConfig(replicas=1, stages=2, micro_batch=50, split="test")
    rep = run(art, data, cfg=cfg, ctx=StepContext(tracker=DataEngine()))
    spans = rep.data["spans"]
    assert len(spans) == 2 and spans[0][0] == 0 and spans[0][1] == spans[1][0]
    x = data.x_test
    factories, _ = stage_factories(art, cfg, x[:50])
    out, summary = map_batches(factories, x, batch_size=50, replicas=1)
    with torch.no_grad():
        assert float((out - load_model(art)(x)).abs().max()) <= 1e-5
    assert 0.0 <= summary["bubble_fraction"] < 1.0 and summary["util_replica0_stage1"] > 0
    # hybrid: 2 replicas x 2 stages (4 actors on 2 CPUs at half a CPU each), named split point
    named = InferenceConfig(replicas=2, stages=2, micro_batch=40, split_points=["net.5"], cpus_per_actor=0.5)
    factories, spans = stage_factories(art, named, x[:40])
    assert spans == [(0, 5), (5, 12)]
    hybrid, summary = map_batches(factories, x, batch_size=40, replicas=2, num_cpus=0.5)
    assert torch.equal(hybrid, out) and summary["util_replica1_stage1"] > 0


@pytest.mark.slow
def test_a_killed_actor_loses_no_row_and_duplicates_none(ray_local, tmp_path):
    class SlowIdentity:
        """A stage that takes 40 ms a block and leaves its actor's pid in ``pid_dir`` (picklable by value)."""

        def __init__(self, pid_dir):
            self.pid_dir = pid_dir

        def __call__(self):
            (self.pid_dir / str(os.getpid())).touch()

            def apply(xb):
                time.sleep(0.04)
                return xb.clone()

            return apply

    x = torch.arange(4000, dtype=torch.float32).reshape(-1, 1)
    result: dict = {}

    def work():
        result["r"] = batch.run([SlowIdentity(tmp_path)], x, batch_size=50, replicas=2, num_cpus=0.5)

    runner = threading.Thread(target=work)
    runner.start()
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # some of the 80 blocks are done; the victim holds blocks in flight
    victim = int(sorted(tmp_path.iterdir())[0].name)
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=180)
    assert not runner.is_alive()
    r = result["r"]
    assert np.array_equal(r.out[:, 0], np.arange(4000))  # every row once, in order
    assert r.summary["duplicates_dropped"] == 0
    assert victim in [p["pid"] for p in r.placement]  # it did work before it was killed
    # its restart counts once it is up (the survivor may have drained the queue before that)
    assert r.summary["restarts"] == r.summary["actors_started"] - 2


def test_a_collector_drops_duplicates_and_names_missing_rows():
    got = batch.Collector(6)
    got.add(np.array([3, 4, 5]), np.arange(3.0).reshape(-1, 1))
    got.add(np.array([0, 1, 2]), np.arange(3.0, 6.0).reshape(-1, 1))
    got.add(np.array([3]), np.array([[9.0]]))  # a retried block delivered twice
    assert got.duplicates == 1 and got.result()[:, 0].tolist() == [3.0, 4.0, 5.0, 0.0, 1.0, 2.0]
    short = batch.Collector(4)
    short.add(np.array([0, 1]), np.zeros((2, 1)))
    with pytest.raises(RuntimeError, match="2 of 4 rows came back without an output"):
        short.result()


def test_infer_uses_ray_data_when_replicas_exceed_one(ray_local):
    from tasks.steps.infer import InferConfig
    from tasks.steps.infer import run as infer

    data = _data(300)
    art = _mlp()
    ctx = StepContext(tracker=DataEngine())
    par = infer(art, data, cfg=InferConfig(replicas=2, batch_size=32), ctx=ctx)
    local = infer(art, data, cfg=InferConfig(), ctx=StepContext())
    assert ctx.summary["parallel"] == 1.0 and torch.allclose(par.train, local.train, atol=1e-6)


def test_split_plan_errors_name_the_problem():
    model = load_model(_mlp())
    with pytest.raises(ValueError, match=r"split_points: need 1 of"):
        plan_stages(model, 2, torch.randn(4, 40), ["net.99"])
    with pytest.raises(ValueError, match="cannot split 12 modules into 13 stages"):
        plan_stages(model, 13, torch.randn(4, 40))
    cnn = build_model(complete_arch({"_target_": "tasks.models.zoo.CNN1D"}, [40], 10))
    with pytest.raises(ValueError, match="CNN1D is not a chain of modules"):
        plan_stages(cnn, 2, torch.randn(4, 40))


@pytest.mark.slow
def test_inference_pipeline_runs_hybrid_and_logs_utilisation(ray_local, workdir):
    from mlflow.tracking import MlflowClient

    from pipelines.config.compose import load_config
    from pipelines.run import session

    overrides = [
        "pipeline=inference",
        "data=digits",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        "pipeline.steps.model.params.model.hidden=[32,32,32]",
        "pipeline.steps.inference.params.stages=2",
        "pipeline.steps.inference.params.rows=3000",
        "pipeline.steps.inference.params.micro_batch=100",
        "pipeline.steps.inference.params.cpus_per_actor=0.5",
    ]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    outcome = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert outcome.exit_code == 0
    runs = MlflowClient(outcome.uri).search_runs(
        [outcome.experiment_id], filter_string="tags.mlflow.runName = 'inference'"
    )
    metrics = runs[0].data.metrics
    assert metrics["rows"] == 3000 and metrics["rows_per_s"] > 0 and 0 <= metrics["bubble_fraction"] < 1
    assert metrics["util_replica1_stage1"] > 0  # 2 replicas x 2 stages all worked


def test_inference_in_process_with_stages_and_the_ort_backend():
    art, data = _mlp(), _data(200)
    ctx = StepContext()
    rep = run(art, data, cfg=InferenceConfig(replicas=1, stages=3, micro_batch=64, rows=500), ctx=ctx)
    assert rep.data["rows"] == 500 and len(rep.data["spans"]) == 3
    assert {"rows_per_s", "batch_latency_p50_ms", "bubble_fraction", "util_replica0_stage2"} <= set(ctx.summary)
    x = data.x_test[:64]
    with torch.no_grad():
        ref = load_model(art)(x)
    assert torch.allclose(Predictor(art, "onnxruntime", "cpu", 1)(x), ref, atol=1e-5)
    with pytest.raises(ValueError, match="pipeline stages need backend=torch"):
        run(art, data, cfg=InferenceConfig(stages=2, backend="onnxruntime"), ctx=StepContext())


def test_inference_options_are_enums_checked_at_compose():
    from pipelines.config.compose import load_config
    from pipelines.config.spec import SpecError
    from pipelines.run import session

    cfg = load_config(["pipeline=inference", "pipeline.steps.inference.params.backend=onnxruntime"])
    session.validate(cfg)
    with pytest.raises(Exception, match="tensorflow"):
        session.validate(load_config(["pipeline=inference", "pipeline.steps.inference.params.backend=tensorflow"]))
    with pytest.raises((SpecError, Exception), match="device"):
        session.validate(load_config(["pipeline=inference", "pipeline.steps.inference.params.device=tpu"]))


@pytest.mark.slow
def test_a_stage_that_always_dies_fails_after_bounded_restarts(ray_local):
    class DiesOnEveryBlock:
        def __call__(self):
            def apply(xb):
                os._exit(1)  # a crash (segfault, OOM kill) on every actor, every time

            return apply

    with pytest.raises(RuntimeError, match=r"inference: .*restarted at most 3 times"):
        map_batches([DiesOnEveryBlock()], torch.zeros(40, 1), batch_size=4, replicas=1, num_cpus=0.5)
