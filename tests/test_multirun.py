"""``slimray --multirun`` through the real CLI: Hydra's sweep expansion, config errors in any
execution (exit 2, nothing started), a failing execution (exit 1, the others finish), trials
shared by cache key while in flight (computed once, checked in MLflow), nested parent runs
tagged with their overrides, the comparison on the multirun run, and Ctrl-C."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from pipelines.config.compose import load_config
from pipelines.store.compare import markdown, names
from tests.engine_helpers import assert_config_error, demo_runs, interrupt_when_running

SLOW = "+pipeline.steps.slow={task: toy_sleep, inputs: {x: source}, params: {seconds: 3.0}}"


def _lines(text: str, start: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(start)]


def test_comma_list_range_glob_choice_expand_like_hydra(workdir, capsys):
    code = main(["-m", "pipeline=glob(dem*)", "pipeline.steps.right.params.amount=2,3", "seed=range(0,3)", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 0, err
    executions = _lines(err, "execution ")
    assert len(executions) == 6  # cartesian product, in Hydra's order (the first key varies slowest)
    assert executions[0].startswith("execution 0: pipeline=demo pipeline.steps.right.params.amount=2 seed=0 ")
    assert executions[5].startswith("execution 5: pipeline=demo pipeline.steps.right.params.amount=3 seed=2 ")
    # per seed, source/left/sweep (8 trials) are the same in both amounts: 3 x 8 keys shared
    assert "6 executions, 60 step trials, 36 distinct cache keys (24 shared, run once)" in err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()

    assert main(["--multirun", "pipeline=demo", "seed=choice(3,4)", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert _lines(out, "# execution") == ["# execution 0: seed=3", "# execution 1: seed=4"]
    assert "\nseed: 3\n" in out and "\nseed: 4\n" in out


def test_an_override_of_a_swept_param_pins_the_sweep(workdir, capsys):
    """``-m pipeline.steps.prune.params.amount=0.3,0.5`` must give executions that differ, not
    executions whose sweep silently overrides the override."""
    sweep = load_config(["pipeline=compress", "pipeline.steps.prune.params.amount=0.3"]).pipeline.steps.prune.sweep
    assert list(sweep["params.amount"]) == [0.3] and list(sweep["params.method"]) == ["channel", "magnitude"]
    assert list(load_config(["pipeline=compress"]).pipeline.steps.prune.sweep["params.amount"]) == [0.3, 0.5, 0.7]
    assert main(["-m", "experiment=smoke", "pipeline.steps.prune.params.amount=0.3,0.5", "--dry-run"]) == 0
    err = capsys.readouterr().err
    # data, teacher, teacher_logits, scratch, student_kd (2 trials), student_mutual are shared;
    # prune and everything downstream of it differ
    assert "2 executions, 32 step trials, 25 distinct cache keys (7 shared, run once)" in err


ERRORS = [
    (["pipeline.steps.left.params.amount=1,abc"], "execution 1 (pipeline.steps.left.params.amount=abc): "),
    (
        ["seed=0,1", "pipeline.steps.left.inputs.x=source,nowhere"],
        "pipeline.steps.left.inputs.x: unknown step 'nowhere'",
    ),
    (["ray.num_cpus=1,2"], "ray: execution 1 (ray.num_cpus=2): every execution must use one Ray"),
    (["seed=interval(0,1)"], "does not support sweep type : INTERVAL_SWEEP"),
    (["seed=range(0,"], "seed=range(0,"),
]


@pytest.mark.parametrize("overrides,expected", ERRORS, ids=[e[0][-1][:30] for e in ERRORS])
def test_config_error_in_any_execution_exits_2_before_anything_runs(overrides, expected, workdir, capsys):
    assert_config_error(["-m", "pipeline=demo", *overrides], expected, workdir, capsys)


def test_jobs_flag_needs_multirun_and_a_positive_number(workdir, capsys):
    assert main(["pipeline=demo", "--jobs=2"]) == 2
    assert main(["-m", "pipeline=demo", "--jobs=0"]) == 2
    assert "--jobs=0: needs --multirun and a positive number" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_shared_trials_run_once_in_flight_and_runs_nest(workdir, ray_local, capsys):
    """Three executions differ only in `right` (downstream of source): source, left, the sweep
    and the 3 s `slow` step are computed once, while the other executions wait on them."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    sweep = "pipeline.steps.right.params.amount=2,3,4"
    publish = "+pipeline.steps.pub={task: toy_publish, inputs: {x: join}}"
    small = ["~pipeline.steps.sweep.sweep", "+pipeline.steps.sweep.sweep={params.amount: [0.0, 1.0]}"]
    code = main(["-m", "--jobs=3", "pipeline=demo", f"tracking.uri={uri}", *small, SLOW, publish, sweep])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    runs = demo_runs(uri)
    multirun = [r for r in runs if r.data.tags.get("slimray.multirun") == "true"]
    assert len(multirun) == 1 and multirun[0].info.status == "FINISHED"
    mr = multirun[0].info.run_id
    parents = sorted((r for r in runs if r.data.tags.get("slimray.job")), key=lambda r: r.data.tags["slimray.job"])
    assert [p.data.tags["slimray.sweep"] for p in parents] == [
        f"pipeline.steps.right.params.amount={a}" for a in (2, 3, 4)
    ]
    assert all(p.data.tags["mlflow.parentRunId"] == mr and p.data.tags["slimray.multirun"] == mr for p in parents)
    assert all(p.info.status == "FINISHED" for p in parents)
    assert [p.data.tags["slimray.overrides"].split()[-1] for p in parents] == [
        f"pipeline.steps.right.params.amount={a}" for a in (2, 3, 4)
    ]

    def step_runs(step: str) -> list:
        return [r for r in runs if r.data.tags.get("slimray.step") == step and "slimray.trial" not in r.data.tags]

    for step, computed_expected in (("source", 1), ("left", 1), ("slow", 1), ("right", 3), ("join", 3)):
        rs = step_runs(step)
        computed = [r for r in rs if r.data.tags["slimray.cached"] == "false"]
        assert len(rs) == 3 and len(computed) == computed_expected, (step, [r.data.tags for r in rs])
        for r in rs:  # every execution has the step, a shared one as a hit on the computing run
            if r.data.tags["slimray.cached"] == "true":
                assert r.data.tags["slimray.cache_source"] == computed[0].info.run_id
    trials = [r for r in runs if r.data.tags.get("slimray.step") == "sweep" and "slimray.trial" in r.data.tags]
    assert len(trials) == 6 and sum(r.data.tags["slimray.cached"] == "false" for r in trials) == 2
    # in flight: the one computed `slow` ended after every execution had started (and looked up
    # the store), so the other two waited on the running task rather than finding it stored
    slow = next(r for r in step_runs("slow") if r.data.tags["slimray.cached"] == "false")
    assert slow.info.end_time > max(p.info.start_time for p in parents)
    assert [r.data.metrics.get("slept") for r in step_runs("slow")] == [3.0] * 3

    client = MlflowClient(tracking_uri=uri)
    files = {a.path for a in client.list_artifacts(mr)}
    assert {"comparison.json", "comparison.md", "comparison.png"} <= files
    table = json.loads(open(client.download_artifacts(mr, "comparison.json", str(workdir))).read())
    assert [(r["execution"], r["status"], r["run_id"]) for r in table] == [
        (i, "finished", p.info.run_id) for i, p in enumerate(parents)
    ]
    assert [r["name"] for r in table] == ["amount=2", "amount=3", "amount=4"]  # what differs, not cut
    totals = [r["metrics"]["headline.total"] for r in table]
    assert totals[1] - totals[0] == pytest.approx(4.0) and totals[2] - totals[1] == pytest.approx(4.0)
    assert multirun[0].data.metrics["headline.total/2"] == pytest.approx(totals[2])
    assert len(_lines(err, "[0] execution finished")) == 1


@pytest.mark.slow
def test_a_failing_execution_exits_1_and_the_others_finish(workdir, ray_local, capsys):
    uri = f"sqlite:///{workdir}/mlflow.db"
    steps = "+pipeline.steps.x={task: toy_fail, inputs: {x: source}},{task: toy_add, inputs: {x: source}}"
    code = main(["-m", "pipeline=demo", f"tracking.uri={uri}", steps])
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert "[0] failed: x: RuntimeError: this step fails on purpose" in err
    assert "[1] execution finished" in err and "[0] execution FAILED" in err
    runs = demo_runs(uri)
    parents = sorted((r for r in runs if r.data.tags.get("slimray.job")), key=lambda r: r.data.tags["slimray.job"])
    assert [p.info.status for p in parents] == ["FAILED", "FINISHED"]
    finished = {r.data.tags.get("slimray.step") for r in runs if r.info.status == "FINISHED"}
    assert {"source", "left", "right", "sweep", "join", "x"} <= finished  # execution 1 ran everything
    multirun = next(r for r in runs if r.data.tags.get("slimray.multirun") == "true")
    assert multirun.info.status == "FAILED"
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_executions_are_named_by_the_override_values_that_differ():
    method = "pipeline.steps.quantize.params.method"
    jobs = [
        ["experiment=smoke", f"{method}=static_int8", "seed=1"],
        ["experiment=smoke", f"{method}=static_int8", "seed=2"],
        ["experiment=smoke", f"{method}=dynamic_int8", "seed=1"],
    ]
    assert names(jobs) == ["method=static_int8 seed=1", "method=static_int8 seed=2", "method=dynamic_int8 seed=1"]
    # two swept keys with one last segment keep as many segments as tell them apart
    amounts = [["pipeline.steps.prune.params.amount=0.3", "+pipeline.steps.right.params.amount=2"]]
    amounts.append(["pipeline.steps.prune.params.amount=0.5", "+pipeline.steps.right.params.amount=2"])
    amounts.append(["pipeline.steps.prune.params.amount=0.5", "+pipeline.steps.right.params.amount=3"])
    assert names(amounts) == [
        "prune.params.amount=0.3 right.params.amount=2",
        "prune.params.amount=0.5 right.params.amount=2",
        "prune.params.amount=0.5 right.params.amount=3",
    ]
    assert names([["seed=0"]]) == ["(no sweep)"]
    # the markdown table shows the names in full
    rows = [
        {"execution": i, "name": n, "status": "finished", "run_id": "r", "metrics": {}}
        for i, n in enumerate(names(jobs))
    ]
    assert "| 2 | method=dynamic_int8 seed=1 | finished | r |" in markdown(rows)


@pytest.mark.slow
def test_ctrl_c_stops_every_execution(workdir, ray_local):
    uri = f"sqlite:///{workdir}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # create the store before two processes race to
    address = ray_local.get_runtime_context().gcs_address
    hang = "+pipeline.steps.hang={task: toy_sleep, inputs: {x: source}, params: {seconds: 120.0}}"
    code, exit_s, err = interrupt_when_running(["-m", "pipeline=demo", hang, "seed=0,1"], workdir, uri, address, 2)
    assert code == 130, err[-2000:]
    assert exit_s <= 10, f"driver took {exit_s:.1f} s to exit after Ctrl-C"
    assert "interrupted" in err
    runs = demo_runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = {r.info.run_id for r in runs if r.info.status == "KILLED"}
    parents = [r for r in runs if r.data.tags.get("slimray.job") or r.data.tags.get("slimray.multirun") == "true"]
    hangs = [r for r in runs if r.data.tags.get("slimray.step") == "hang"]
    assert len(parents) == 3 and len(hangs) == 2
    assert {r.info.run_id for r in parents + hangs} <= killed


def test_a_search_pipeline_is_refused_under_multirun_unless_disabled(workdir, capsys):
    assert main(["-m", "experiment=search", "seed=0,1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: execution 0 (seed=0): pipeline.search: a search runs alone; under -m set pipeline.search.enabled=false"
    )
    assert main(["-m", "experiment=search", "seed=0,1", "pipeline.search.enabled=false", "--dry-run"]) == 0
    assert len(_lines(capsys.readouterr().err, "execution ")) == 2
    assert not (workdir / "mlflow.db").exists()
