"""`experiment=multitask` end to end through the engine (real Ray, real sqlite MLflow), shrunk:
two task teachers in parallel, a multi-head student, single-task students, benchmark, report."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config.compose import load_config
from pipelines.run import session
from tests.test_compress import step_output

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

SMALL = [
    "experiment=multitask",
    "data.n_transfer=500",
    "pipeline.steps.teacher.params.optim.epochs=3",
    "pipeline.steps.teacher_aux.params.optim.epochs=3",
    "pipeline.steps.student.params.optim.epochs=2",
    "pipeline.steps.benchmark.params.warmup=1",
    "pipeline.steps.benchmark.params.iters_b1=5",
    "pipeline.steps.benchmark.params.iters_b256=2",
]


def test_multitask_experiment_end_to_end(workdir):
    overrides = [*SMALL, f"tracking.uri=sqlite:///{workdir}/mlflow.db", "pipeline.steps.data_aux.params.labels=gt4"]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    client = MlflowClient(tracking_uri=out.uri)

    def ancestors(name: str) -> set[str]:
        up = set(spec.steps[name].upstream)
        return up.union(*(ancestors(u) for u in up))

    # the task teachers are independent steps (the engine may run them side by side), both finished
    assert "teacher" not in ancestors("teacher_aux") and "teacher_aux" not in ancestors("teacher")
    assert ancestors("teacher_aux") == {"data", "data_aux"}
    assert {out.states[s].status for s in ("teacher", "teacher_aux")} == {"done"}

    rep = step_output(client, out, "report", workdir / "dl")
    rows = {r["task"]: r for r in rep.data["tasks"]}
    assert set(rows) == {"identity", "gt4"}
    for r in rows.values():
        assert 0.0 <= r["student"] <= 1.0 and r["teacher"] > 0.5 and 0.0 <= r["single"] <= 1.0
    bench = step_output(client, out, "benchmark", workdir / "dl")
    student = bench.row("student")
    assert student is not None and student.test_acc == pytest.approx(rows["identity"]["student"], abs=1e-6)

    parent = client.get_run(out.run_id)
    assert "multitask.md" in {f.path for f in client.list_artifacts(out.run_id)}
    assert parent.data.metrics["gt4.student_test_acc"] == pytest.approx(rows["gt4"]["student"])
    assert parent.data.tags["mlflow.note.content"].startswith("## Multi-task distillation")
