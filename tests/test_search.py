"""The search step: config errors at compose time, the space as a grid, Pareto arithmetic, a
4-trial search end to end (real Ray Tune + Optuna, real sqlite MLflow), and resume after the
driver is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient

from pipelines import search
from pipelines.cli import main
from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.search.config import Dim, Dist
from pipelines.search.pareto import Row, best, front, hypervolume
from pipelines.search.space import grid_overrides, grid_values
from pipelines.search.trial import outcome

REPO = Path(__file__).resolve().parents[1]

BAD = [
    (
        ["pipeline.search.space.prune.method.values=[chanel]"],
        "pipeline.search.space.prune.method: Invalid value 'chanel'",
    ),
    (["pipeline.search.space.prune.amount.low=0.9"], "pipeline.search.space.prune.amount: low must be below high"),
    (["pipeline.search.space.quantize.bits.low=2.5"], "pipeline.search.space.quantize.bits: randint needs integer"),
    (
        ["+pipeline.search.space.prune.amountt={type: uniform, low: 0.1, high: 0.2}"],
        "pipeline.search.space.prune.amountt: Key 'amountt' not in 'PruneConfig'",
    ),
    (
        ["pipeline.search.space.prune.amount.type=gaussian"],
        "pipeline.search.space.prune.amount.type: Invalid value 'gaussian'",
    ),
    (
        ["+pipeline.search.space.nope={x: {type: choice, values: [1]}}"],
        "pipeline.search.space.nope: unknown step 'nope'",
    ),
    (
        ["+pipeline.search.space.benchmark={warmup: {type: randint, low: 1, high: 3}}"],
        "pipeline.search.space.benchmark: step 'benchmark' does not lead to 'quantize'",
    ),
    (["+pipeline.search.objectives.speed=max"], "pipeline.search.objectives.speed: unknown objective"),
    (["pipeline.search.objectives.throughput=up"], "pipeline.search.objectives.throughput: Invalid value 'up'"),
    (
        ["+pipeline.search.objectives.serve_p99_ms=min"],
        "pipeline.search.objectives.serve_p99_ms: needs pipeline.search.measure.serving.concurrency >= 1",
    ),
    (["pipeline.search.num_samples=0"], "pipeline.search.num_samples: must be >= 1"),
    (["pipeline.search.algorithm=grid"], "pipeline.search.algorithm: Invalid value 'grid'"),
    (
        ["pipeline.search.constraint.reference=prune"],
        "pipeline.search.constraint.reference: 'prune' is not a step upstream",
    ),
    (["+pipeline.search.budjet=1"], "pipeline.search.budjet: Key 'budjet' not in 'SearchConfig'"),
    (["pipeline.search.deployed=nowhere"], "pipeline.search.deployed: unknown step 'nowhere'"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[c[0][0][:48] for c in BAD])
def test_search_config_error_is_one_line_exit_2(overrides, expected, workdir, capsys):
    code = main(["experiment=search", *overrides, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    assert not (workdir / "mlflow.db").exists()


def test_served_objectives_with_served_measurement_validate():
    """The search may optimise the deployed model's served p99 and rate (``benchmark.serving``)."""
    over = ["pipeline=search", "+pipeline.search.objectives.serve_p99_ms=min"]
    over += ["+pipeline.search.objectives.serve_rps=max"]
    plan = search.plan_of(load_config([*over, "+pipeline.search.measure.serving={concurrency: 4, requests: 50}"]))
    assert plan is not None and list(plan.cfg.objectives) == ["throughput", "serve_p99_ms", "serve_rps"]


def test_default_search_plan_splits_prefix_chain_final():
    plan = search.plan_of(load_config(["pipeline=search"]))
    assert plan is not None
    assert plan.prefix == ["data", "teacher", "teacher_logits"]
    assert plan.chain == ["student_kd", "prune", "export", "quantize"]
    assert plan.final == ["benchmark", "report"]
    assert "student_kd.student.channels" in plan.dims and "prune.method" in plan.dims
    assert search.plan_of(load_config(["pipeline=compress"])) is None
    assert search.plan_of(load_config(["pipeline=search", "pipeline.search.enabled=false"])) is None


def test_space_as_multirun_grid_parses_and_composes():
    composed = load_config(["pipeline=search"])
    plan = search.plan_of(composed)
    assert plan is not None
    overrides = grid_overrides(plan, points=3, cfg=composed)
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = {o.key_or_group: list(o.sweep_iterator()) for o in parsed if o.is_sweep_override()}
    assert sweeps["pipeline.steps.prune.params.method"] == ["channel", "magnitude"]
    assert sweeps["pipeline.steps.prune.params.amount"] == [0.2, 0.5, 0.8]
    assert sweeps["pipeline.steps.quantize.params.bits"] == [4, 6, 8]
    assert sweeps["student_model.channels"][0] == [16, 16, 16]  # the node `student` interpolates
    # one grid point (the first value of every sweep) composes and validates as a plain pipeline
    point = [f"{o.key_or_group}={_first(o)}" if o.is_sweep_override() else o.input_line for o in parsed]
    cfg = load_config(["pipeline=search", *point])
    spec, _, _ = session.validate(cfg)
    assert search.plan_of(cfg) is None
    assert spec.steps["prune"].params["amount"] == 0.2 and spec.steps["quantize"].params["bits"] == 4
    assert spec.steps["student_kd"].params["student"]["channels"] == [16, 16, 16]


def _first(o) -> str:
    v = next(iter(o.sweep_iterator()))
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v)


def test_grid_values_of_ranges():
    assert grid_values(Dim(Dist.loguniform, 1.0, 100.0), 3) == [1.0, 10.0, 100.0]
    assert grid_values(Dim(Dist.randint, 1, 3), 5) == [1, 2, 3]
    assert grid_values(Dim(Dist.choice, values=[[1], [2]]), 3) == [[1], [2]]


def test_pareto_best_and_hypervolume():
    rows = [
        Row("a", {}, {"val_acc": 0.9, "throughput": 100.0, "feasible": 1.0}),
        Row("b", {}, {"val_acc": 0.8, "throughput": 300.0, "feasible": 1.0}),
        Row("c", {}, {"val_acc": 0.7, "throughput": 200.0, "feasible": 0.0}),  # dominated by b
        Row("d", {}, {"val_acc": 0.95, "throughput": 50.0, "feasible": 1.0}, status="stopped"),
    ]
    objectives = {"val_acc": "max", "throughput": "max"}
    assert {r.trial_id for r in front(rows, objectives)} == {"a", "b"}
    chosen, feasible = best(rows, {"throughput": "max"})
    assert feasible and chosen is not None and chosen.trial_id == "b"
    for r in rows:
        r.metrics["feasible"] = 0.0
    chosen, feasible = best(rows, {"throughput": "max"})
    assert not feasible and chosen is not None and chosen.trial_id == "a"  # closest to the bound
    assert hypervolume([(1, 2), (2, 1), (0.5, 0.5)], (0, 0)) == pytest.approx(3.0)
    assert hypervolume([(1, 2)], (0, 0)) < hypervolume([(1, 2), (2, 1)], (0, 0))
    assert hypervolume([(-1, 5)], (0, 0)) == 0.0


# ---- end to end ----------------------------------------------------------------------------
def small(wd: Path, *extra: str) -> list[str]:
    """A 4-trial search small enough for a loaded 2-core machine."""
    return [
        "experiment=search",
        f"tracking.uri=sqlite:///{wd}/mlflow.db",
        "+data.max_train=600",
        "data.n_transfer=300",
        "pipeline.steps.teacher.params.optim.epochs=1",
        "pipeline.steps.student_kd.params.optim.epochs=2",
        "pipeline.search.space.quantize.method.values=[static_int8,dynamic_int8]",
        "pipeline.search.num_samples=4",
        "pipeline.search.startup_trials=2",
        "pipeline.search.constraint.budget=0.5",
        # a 1-epoch teacher's logits are near ties that INT8 flips: keep the gate out of the way
        # of this test (test_rejected_trial_is_not_feasible covers the gate)
        "pipeline.steps.quantize.params.gate.min_agreement=0.5",
        f"pipeline.search.storage={wd}/tune",
        *extra,
    ]


def test_rejected_trial_is_not_feasible():
    """A deployed model its parity gate rejected is infeasible whatever its accuracy, so the
    search never picks a model the benchmark would then refuse to select."""
    plan = search.plan_of(load_config(["experiment=search"]))
    dep = plan.cfg.deployed
    summary = {f"{dep}/val_acc": 0.9, f"{dep}/throughput_b256": 1e5, f"{dep}/size_bytes": 1e4}
    assert outcome(plan, summary, bound=0.8) == {"val_acc": 0.9, "throughput": 1e5, "size_bytes": 1e4, "feasible": 1.0}
    assert outcome(plan, summary | {f"{dep}/rejected": 0.0}, bound=0.8)["feasible"] == 1.0
    rejected = outcome(plan, summary | {f"{dep}/rejected": 1.0}, bound=0.8)
    assert rejected["feasible"] == 0.0 and rejected["rejected"] == 1.0
    assert outcome(plan, summary, bound=0.95)["feasible"] == 0.0


def trial_runs(client: MlflowClient, root: str) -> list:
    return client.search_runs(["1"], filter_string=f"tags.`slimray.step` = 'search' and tags.`slimray.root` = '{root}'")


@pytest.mark.slow
def test_small_search_end_to_end(workdir, ray_local):
    from pipelines.search.driver import execute

    overrides = small(workdir, "pipeline.search.early_stop=none")
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    plan = search.plan_of(cfg)
    out = execute(cfg, spec, plan, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    client = MlflowClient(tracking_uri=out.uri)
    root = client.get_run(out.run_id)
    assert root.info.status == "FINISHED" and root.data.metrics["search.trials"] == 4
    assert root.data.metrics["search.feasible"] >= 1 and root.data.tags["slimray.note"].startswith("best feasible")
    trials = trial_runs(client, out.run_id)
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    for t in trials:  # nested under the search run, with params, curves and final metrics
        assert t.data.tags["mlflow.parentRunId"] == out.run_id
        assert {"student_kd.temperature", "prune.amount", "quantize.method"} <= set(t.data.params)
        assert {"val_acc", "throughput", "size_bytes", "feasible"} <= set(t.data.metrics)
        curve = client.get_metric_history(t.info.run_id, "student_kd.epoch_val_acc")
        assert [m.step for m in curve] == [0, 1]
        steps = client.search_runs(["1"], filter_string=f"tags.`mlflow.parentRunId` = '{t.info.run_id}'")
        assert {"student_kd", "prune", "export", "quantize", "measure"} <= {s.info.run_name for s in steps}
    arts = {a.path for a in client.list_artifacts(out.run_id, "search")}
    assert arts == {"search/pareto.png", "search/trials.md", "search/trials.json"}
    table = json.loads(Path(client.download_artifacts(out.run_id, "search/trials.json", str(workdir))).read_text())
    chosen = root.data.tags["slimray.selected"]
    best_row = next(r for r in table["trials"] if r["trial_id"] == chosen)
    assert best_row["feasible"] and best_row["metrics"]["val_acc"] >= table["bound"]
    # the best trial's model flowed on: the report's selected model is the best trial's quantize
    assert root.data.metrics["selected.val_acc"] == pytest.approx(best_row["metrics"]["val_acc"], abs=1e-6)
    assert out.states["benchmark"].status == "done" and out.states["quantize"].status == "cached"
    # the prefix ran once: every trial loaded data/teacher/teacher_logits from the cache
    computed = client.search_runs(
        ["1"], filter_string="tags.`slimray.cached` = 'false' and tags.`slimray.step` = 'teacher'"
    )
    assert len(computed) == 1


def _launch(wd: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SLIMRAY_CONF": str(REPO / "conf"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", *overrides],
        cwd=wd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # a file, never an unread pipe (a full pipe blocks the driver)
        start_new_session=True,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, then what it started (its own session: the embedded Ray)."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    try:  # the embedded Ray the driver started (same process group)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigkill_driver_mid_search_then_resume(workdir):
    overrides = small(workdir, "pipeline.search.max_concurrent=1", "pipeline.search.num_samples=3")
    db = f"sqlite:///{workdir}/mlflow.db"
    # the store exists before the driver starts: the polling client below never races the
    # driver's schema migration (two processes creating one sqlite store fail in alembic)
    MlflowClient(db).search_experiments()
    proc = _launch(workdir, overrides, workdir / "first.log")
    deadline, finished = time.time() + 480, []
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(2)
            runs = MlflowClient(db).search_runs(
                ["1"], filter_string="tags.`slimray.step` = 'search' and attributes.status = 'FINISHED'"
            )
            finished = [r for r in runs if r.info.run_name.startswith("trial-")]
            if finished:
                break
    finally:
        _kill_group(proc)
    assert finished, (workdir / "first.log").read_text()[-3000:]
    before = {r.data.tags["slimray.search_trial"] for r in finished}
    second = _launch(workdir, overrides, workdir / "second.log")
    assert second.wait(timeout=900) == 0, (workdir / "second.log").read_text()[-3000:]
    client = MlflowClient(db)
    roots = client.search_runs(["1"], filter_string="tags.`slimray.search_key` != ''")
    assert len(roots) == 1 and roots[0].info.status == "FINISHED"  # the same search run, resumed
    assert "resuming" in (workdir / "second.log").read_text()
    trials = trial_runs(client, roots[0].info.run_id)
    for tid in before:  # a trial that finished before the kill was not run again
        assert len([t for t in trials if t.data.tags["slimray.search_trial"] == tid]) == 1
    done = {t.data.tags["slimray.search_trial"] for t in trials if t.info.status == "FINISHED"}
    assert len(done) == 3 and roots[0].data.metrics["search.trials"] == 3
    # nothing was computed twice: every computed output has its own cache key
    computed = client.search_runs(
        ["1"], filter_string="tags.`slimray.cached` = 'false' and tags.`slimray.stored` = 'true'"
    )
    keys = [r.data.tags["slimray.cache_key"] for r in computed]
    assert len(keys) == len(set(keys))
