"""`experiment=byo` end to end on a tiny budget (real Ray, real sqlite MLflow): a user's own model
and checkpoint in, students derived from it by channel pruning + KD, INT8, benchmark, report; a
missed accuracy budget is said in one line."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from examples.byo import prepare
from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.store import artifacts
from tasks.core.types import BenchmarkReport, ModelArtifact, Publication

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _output(client: MlflowClient, out, step: str, dst, what: str = "output"):
    st = out.states[step]
    return artifacts.load(client.download_artifacts(st.trials[st.selected].meta.run_id, what, str(dst / step / what)))


def test_byo_compresses_a_users_checkpoint_and_says_when_the_budget_is_missed(workdir):
    made = prepare.main(
        ["--out", str(workdir / "mine"), "--samples", "1000", "--width", "16", "--epochs", "2", "--unlabeled", "300"]
    )
    overrides = [
        "experiment=byo",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        f"data.path={workdir / 'mine' / 'data.npz'}",
        f"pipeline.steps.teacher.params.weights_path={workdir / 'mine' / 'model.safetensors'}",
        "teacher_model.width=16",
        "pipeline.steps.prune.params.finetune.epochs=1",
        "pipeline.steps.prune.sweep={params.amount: [0.5]}",
        # a budget no student can meet: the miss must be said, not swallowed
        "pipeline.steps.prune.select.where='val_acc >= teacher.val_acc + 0.5'",
        "pipeline.steps.quantize.params.calib_batches=2",
        "pipeline.steps.benchmark.params.iters_b1=5",
        "pipeline.steps.benchmark.params.iters_b256=3",
    ]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    assert "scratch" not in out.states and "student_kd" not in out.states  # no zoo student anywhere
    assert out.states["teacher"].summary["val_acc"] == pytest.approx(made["val_acc"])  # the user's checkpoint
    assert out.states["data"].summary["n_transfer"] == 300  # x_unlabeled: the students distil on it too
    assert out.states["prune"].note.startswith("BUDGET MISSED: no trial meets 'val_acc >= ")
    client = MlflowClient(tracking_uri=out.uri)
    pruned = _output(client, out, "prune", workdir / "dl")
    assert isinstance(pruned, ModelArtifact) and pruned.arch["_target_"] == "examples.byo.model.ResNet1D"
    assert pruned.arch["_pruned_"]["shapes"] and pruned.parent == "teacher"
    bench = _output(client, out, "benchmark", workdir / "dl")
    assert isinstance(bench, BenchmarkReport)
    assert {r.kind for r in bench.candidates} == {"teacher", "pruned", "quantized"}
    assert bench.selected.kind == "pruned" and bench.teacher.name == "teacher"  # the FP32 ONNX student
    pub = _output(client, out, "report", workdir / "dl", "publish")
    assert isinstance(pub, Publication)
    missed = bench.targets.selected_vs_teacher.test_acc_delta < -0.01
    assert ("BUDGET MISSED: the selected model" in pub.console) == missed
    assert pub.metrics["budget_met"] == float(not missed)
