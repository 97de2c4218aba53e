"""Every class of config error: one line naming the config path, exit code 2, and nothing
started (no Ray, no MLflow store) — checked through the real CLI entry point."""
from __future__ import annotations

import pytest

from pipelines.cli import main

CASES = [
    (["pipeline.steps.left.task=nope"], "pipeline.steps.left.task: unknown task 'nope'"),
    (["+pipeline.steps.left.inputs.y=source"], "pipeline.steps.left.inputs.y: task 'toy_add' has no input 'y'"),
    (["~pipeline.steps.left.inputs"], "pipeline.steps.left.inputs.x: missing required input"),
    (["pipeline.steps.left.inputs.x=nowhere"], "pipeline.steps.left.inputs.x: unknown step 'nowhere'"),
    (["+pipeline.steps.bad={task: train, inputs: {data: source}}"],
     "pipeline.steps.bad.inputs.data: step 'source' gives Value but input 'data' of task 'train' needs Dataset"),
    (["pipeline.steps.left.inputs.x=sweep"], "pipeline.steps: cycle among steps ['left', 'sweep']"),
    (["+pipeline.steps.left.params.amountt=3"], "pipeline.steps.left.params.amountt: Key 'amountt' not in 'AddConfig'"),
    (["pipeline.steps.left.params.amountt=3"], "pipeline.steps.left.params.amountt"),
    (["pipeline.steps.left.params.amount=abc"], "pipeline.steps.left.params.amount=abc"),
    (["pipeline.steps.left.params.amount='???'"], "pipeline.steps.left.params.amount: missing required value"),
    (["+pipeline.steps.left.retires=2"], "pipeline.steps.left.retires: unknown step key"),
    (["~pipeline.steps.sweep.sweep", "+pipeline.steps.sweep.sweep={params.nope: [1, 2]}"], "pipeline.steps.sweep.sweep[nope=1].params.nope"),
    (["pipeline.steps.join.inputs.xs=[sweep, left]", "~pipeline.steps.sweep.select"],
     "pipeline.steps.join.inputs.xs: sweep step 'sweep' has no select rule"),
    (["pipeline.steps.sweep.select.where='score >> 3'"], "pipeline.steps.sweep.select.where: cannot parse"),
    (["pipeline=nope"], "Could not find 'pipeline/nope'"),
    (["+foo=1"], "foo: unknown top-level key"),
    (["ray.adress=auto"], "ray.adress"),
]


@pytest.mark.parametrize("overrides,expected", CASES, ids=[c[0][0][:40] for c in CASES])
def test_config_error_is_one_line_exit_2_and_starts_nothing(overrides, expected, workdir, capsys):
    import ray

    was_running = ray.is_initialized()
    code = main(["pipeline=demo", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()
    assert ray.is_initialized() == was_running


def test_valid_config_dry_run_starts_nothing(workdir, capsys):
    assert main(["pipeline=demo", "--dry-run"]) == 0
    assert "sweep: toy_add" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()


def test_unknown_flag(workdir, capsys):
    assert main(["--nope"]) == 2
    assert "unknown option --nope" in capsys.readouterr().err
