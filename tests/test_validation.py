"""Every class of config error: one line naming the config path, exit code 2, and nothing
started (no Ray, no MLflow store) — checked through the real CLI entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main
from tests.engine_helpers import assert_config_error

REPO = Path(__file__).resolve().parents[1]

CASES = [
    (["pipeline.steps.left.task=nope"], "pipeline.steps.left.task: unknown task 'nope'"),
    (["+pipeline.steps.left.inputs.y=source"], "pipeline.steps.left.inputs.y: task 'toy_add' has no input 'y'"),
    (["~pipeline.steps.left.inputs"], "pipeline.steps.left.inputs.x: missing required input"),
    (["pipeline.steps.left.inputs.x=nowhere"], "pipeline.steps.left.inputs.x: unknown step 'nowhere'"),
    (
        ["+pipeline.steps.bad={task: train, inputs: {data: source}}"],
        "pipeline.steps.bad.inputs.data: step 'source' gives Value but input 'data' of task 'train' needs Dataset",
    ),
    (["pipeline.steps.left.inputs.x=sweep"], "pipeline.steps: cycle among steps ['left', 'sweep']"),
    (["+pipeline.steps.left.params.amountt=3"], "pipeline.steps.left.params.amountt: Key 'amountt' not in 'AddConfig'"),
    (["pipeline.steps.left.params.amountt=3"], "pipeline.steps.left.params.amountt"),
    (["pipeline.steps.left.params.amount=abc"], "pipeline.steps.left.params.amount=abc"),
    (["pipeline.steps.left.params.amount='???'"], "pipeline.steps.left.params.amount: missing required value"),
    (["+pipeline.steps.left.retires=2"], "pipeline.steps.left.retires: Key 'retires' not in 'StepConfig'"),
    (
        ["~pipeline.steps.sweep.sweep", "+pipeline.steps.sweep.sweep={params.nope: [1, 2]}"],
        "pipeline.steps.sweep.sweep[nope=1].params.nope",
    ),
    (
        ["pipeline.steps.join.inputs.xs=[sweep, left]", "~pipeline.steps.sweep.select"],
        "pipeline.steps.join.inputs.xs: sweep step 'sweep' has no select rule",
    ),
    (["pipeline.steps.sweep.select.where='score >> 3'"], "pipeline.steps.sweep.select.where: cannot parse"),
    (["pipeline=nope"], "Could not find 'pipeline/nope'"),
    (["+foo=1"], "foo: Key 'foo' not in 'RootConfig'"),
    (["ray.adress=auto"], "ray.adress"),
]


@pytest.mark.parametrize("overrides,expected", CASES, ids=[c[0][0][:40] for c in CASES])
def test_config_error_is_one_line_exit_2_and_starts_nothing(overrides, expected, workdir, capsys):
    assert_config_error(["pipeline=demo", *overrides], expected, workdir, capsys)


def test_valid_config_dry_run_starts_nothing(workdir, capsys):
    assert main(["pipeline=demo", "--dry-run"]) == 0
    assert "sweep: toy_add" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()


def test_unknown_flag(workdir, capsys):
    assert main(["--nope"]) == 2
    assert "unknown option --nope" in capsys.readouterr().err


# --- typos in the default (compress) pipeline: options are Enums, engine keys are schemas ---

COMPRESS_CASES = [
    (["pipeline.steps.teacher.params.kind=teacer"], ["pipeline.steps.teacher.params.kind", "'teacer'"]),
    (["pipeline.steps.prune.params.method=chanel"], ["pipeline.steps.prune.params.method", "'chanel'"]),
    (["pipeline.steps.quantize.params.calibration=minmaxx"], ["pipeline.steps.quantize.params.calibration"]),
    (["data.source=mnist"], ["data.source", "expected one of [mnist1d, digits, cifar10, npz]"]),
    (["pipeline.steps.teacher.params.optim.optimizer=adam"], ["pipeline.steps.teacher.params.optim.optimizer"]),
    (
        ["+teacher_model.chanels=[3]"],
        ["pipeline.steps.teacher.params.model.chanels: tasks.models.zoo.CNN1D has no argument 'chanels'"],
    ),
    (
        ["student_model._target_=tasks.models.zoo.MLP"],  # the compact CNN's kwargs do not fit an MLP
        ["pipeline.steps.scratch.params.model.", "tasks.models.zoo.MLP has no argument"],
    ),
    (
        [
            "teacher_model._target_=tests.user_models.NeedsDepth",
            "~teacher_model.channels",
            "~teacher_model.kernel_size",
            "~teacher_model.stride",
            "~teacher_model.batch_norm",
        ],
        ["pipeline.steps.teacher.params.model.depth: missing required argument of tests.user_models.NeedsDepth"],
    ),
    (
        ["teacher_model._target_=tests.user_models.NoSuchNet"],
        ["pipeline.steps.teacher.params.model._target_", "cannot be imported"],
    ),
    (
        ["teacher_model._target_=os.path.join"],
        ["pipeline.steps.teacher.params.model._target_", "not an nn.Module subclass"],
    ),
    (["+pipeline.steps.teacher.retires=2"], ["pipeline.steps.teacher.retires: Key 'retires' not in 'StepConfig'"]),
    (["pipeline.steps.teacher.resources.num_cpus=two"], ["pipeline.steps.teacher.resources.num_cpus", "'two'"]),
    (
        ["+pipeline.steps.teacher.resources.cpus=2"],
        ["pipeline.steps.teacher.resources.cpus: Key 'cpus' not in 'ResourcesConfig'"],
    ),
    (["pipeline.steps.prune.select.mode=maxx"], ["pipeline.steps.prune.select.mode", "expected one of [max, min]"]),
    (
        ["+pipeline.steps.prune.select.metricc=x"],
        ["pipeline.steps.prune.select.metricc: Key 'metricc' not in 'SelectConfig'"],
    ),
    (["+ray.adress=auto"], ["ray.adress: Key 'adress' not in 'RayConfig'"]),
    (["ray=cluster", "+ray.num_cpu=2"], ["ray.num_cpu: Key 'num_cpu' not in 'RayConfig'"]),
    (["+tracking.urii=http://127.0.0.1:5000"], ["tracking.urii: Key 'urii' not in 'TrackingConfig'"]),
    (["seed=abc"], ["seed", "'abc'"]),
    (["trusted_models=[os.system]"], ["trusted_models[0]", "not an nn.Module subclass"]),
]


@pytest.mark.parametrize("overrides,expected", COMPRESS_CASES, ids=[" ".join(c[0])[:40] for c in COMPRESS_CASES])
def test_typo_in_the_default_pipeline_fails_at_validation(overrides, expected, workdir, capsys):
    assert_config_error([*overrides, "--dry-run"], expected, workdir, capsys)


def _conf_with_experiment(workdir, text: str) -> None:
    """The project's conf/ in the working directory plus ``experiment=typo`` (a user's file)."""
    shutil.copytree(REPO / "conf", workdir / "conf")
    (workdir / "conf" / "experiment" / "typo.yaml").write_text("# @package _global_\n" + text)


YAML_CASES = [
    (
        "pipeline:\n  steps:\n    prune:\n      sweep: {params.method: [channel, chanel]}\n",
        ["pipeline.steps.prune.sweep[amount=0.3,method=chanel].params.method", "'chanel'"],
    ),
    (
        "pipeline:\n  steps:\n    teacher:\n      params: {kind: teacer}\n",
        ["pipeline.steps.teacher.params.kind", "'teacer'"],
    ),
    (
        "pipeline:\n  steps:\n    teacher:\n      resources: {num_cpus: 1, num_gpu: 1}\n",
        ["pipeline.steps.teacher.resources.num_gpu", "not in 'ResourcesConfig'"],
    ),
    (  # a YAML syntax error: the file, line and column, not a parser traceback
        "pipeline:\n  steps:\n    prune:\n      params: {amount: 0.5, finetune: {epochs: 1}\n",
        ['experiment/typo.yaml", line 5, column 15', "expected ',' or '}'"],
    ),
]


@pytest.mark.parametrize("text,expected", YAML_CASES, ids=["sweep-value", "kind", "resources-key", "yaml-syntax"])
def test_typo_in_a_yaml_file_fails_at_validation(text, expected, workdir, capsys):
    _conf_with_experiment(workdir, text)
    assert_config_error(["experiment=typo", "--dry-run"], expected, workdir, capsys)


def test_sweep_typo_exits_2_through_the_console_command(workdir):
    """The real entry point in a fresh process: `python -m pipelines experiment=typo --dry-run`."""
    _conf_with_experiment(workdir, YAML_CASES[0][0])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "experiment=typo", "--dry-run"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and "\n" not in err, err
    assert all(part in err for part in YAML_CASES[0][1]), err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()


def test_the_composed_config_is_typed(workdir):
    """Options reach tasks as Enum members (str-valued, so comparisons with strings still hold)."""
    from pipelines.config.compose import load_config
    from pipelines.config.spec import build_config
    from pipelines.run import session
    from tasks.core.options import ModelKind, PruneMethod

    spec, ray_cfg, _ = session.validate(load_config([]))
    prune_cfg = build_config("prune", spec.steps["prune"].trials[0].params)
    assert prune_cfg.method is PruneMethod.channel and prune_cfg.method == "channel"
    assert build_config("train", spec.steps["teacher"].params).kind is ModelKind.teacher
    assert f"{prune_cfg.scope}" == "layer" and ray_cfg.address is None
    assert spec.steps["prune"].select.mode == "max"


# --- your own config files, from your project's conf/ or the folders in SLIMRAY_CONF ---

MINE_MODEL = """
from torch import nn


class MineNet(nn.Module):
    def __init__(self, input_shape: list[int], num_classes: int, width: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(input_shape[-1]), width), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)
"""


def _project_with_my_model(workdir, monkeypatch) -> None:
    """A user's project: ``conf/model/mine.yaml`` naming a model class written in the project."""
    (workdir / "mine_models.py").write_text(MINE_MODEL)
    (workdir / "conf" / "model").mkdir(parents=True)
    (workdir / "conf" / "model" / "mine.yaml").write_text("_target_: mine_models.MineNet\nwidth: 6\n")
    monkeypatch.syspath_prepend(str(workdir))  # as `slimray` makes the working directory importable


def test_my_model_config_from_my_project_dir(workdir, monkeypatch):
    from pipelines.config.compose import load_config
    from pipelines.run import session

    _project_with_my_model(workdir, monkeypatch)
    cfg = load_config(["experiment=byo", "teacher_model=mine", "data.path=mine.npz"])
    spec, _, _ = session.validate(cfg)
    assert spec.steps["teacher"].params["model"] == {"_target_": "mine_models.MineNet", "width": 6}
    assert "mine_models.MineNet" in spec.trusted_targets
    # the other model key too, and Hydra's own spelling of the group option
    assert load_config(["student_model=mine"]).student_model._target_ == "mine_models.MineNet"
    assert load_config(["model@teacher_model=mine"]).teacher_model.width == 6


def test_my_experiment_file_from_a_slimray_conf_folder(workdir, monkeypatch, capsys):
    _project_with_my_model(workdir, monkeypatch)
    mine = workdir / "elsewhere"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model@teacher_model: mine\nseed: 7\n"
    )
    monkeypatch.setenv("SLIMRAY_CONF", os.pathsep.join([os.environ["SLIMRAY_CONF"], str(mine)]))
    assert main(["experiment=mine", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "_target_: mine_models.MineNet" in out and "seed: 7" in out


def test_a_model_name_with_no_config_file_is_one_line_naming_the_options(workdir, monkeypatch, capsys):
    _project_with_my_model(workdir, monkeypatch)
    expected = ["teacher_model: no model config 'mien'", "model options: ", "cnn1d_teacher", "mine"]
    assert_config_error(["experiment=byo", "teacher_model=mien", "--dry-run"], expected, workdir, capsys)
    assert_config_error(["student_model=nope", "--dry-run"], "student_model: no model config 'nope'", workdir, capsys)


def test_a_typo_in_data_names_the_data_key(workdir, capsys):
    """The root ``data`` node is untyped; the data step that takes it (params: ${data}) checks it."""
    assert_config_error(
        ["+data.sourc=npz", "--dry-run"], "data.sourc: Key 'sourc' not in 'DataConfig'", workdir, capsys
    )
    assert_config_error(["data.val_fraction=lots", "--dry-run"], ["data.val_fraction", "'lots'"], workdir, capsys)


# --- values out of range: every step's (and every sweep trial's) config is built at validation ---

RANGE_CASES = [
    (["pipeline.steps.prune.params.amount=1.5"], "pipeline.steps.prune.params.amount: 1.5 is not in [0, 1)"),
    (
        ["pipeline.steps.student_kd.params.temperature=-1"],
        "pipeline.steps.student_kd.params.temperature: -1.0 is not > 0",
    ),
    (["pipeline.steps.benchmark.params.rounds=0"], "pipeline.steps.benchmark.params.rounds: 0 is not >= 1"),
    (["pipeline.steps.student_kd.params.alpha=1.5"], "pipeline.steps.student_kd.params.alpha: 1.5 is not in [0, 1]"),
    (["pipeline.steps.prune.params.finetune.lr=-0.1"], "pipeline.steps.prune.params.finetune.lr: -0.1 is not >= 0"),
    (
        ["pipeline.steps.teacher.params.optim.batch_size=0"],
        "pipeline.steps.teacher.params.optim.batch_size: 0 is not >= 1",
    ),
    (
        ["pipeline.steps.benchmark.params.serving.concurrency=-1"],
        "pipeline.steps.benchmark.params.serving.concurrency: -1 is not >= 0",
    ),
    (["data.val_fraction=1.5"], "data.val_fraction: 1.5 is not in (0, 1)"),  # the data step's params: ${data}
    (  # a sweep value: the trial and the key
        ["pipeline.steps.prune.sweep={params.amount: [0.5, 1.5]}"],
        "pipeline.steps.prune.sweep[amount=1.5,method=channel].params.amount: 1.5 is not in [0, 1)",
    ),
    (["pipeline.steps.quantize.params.calib_batches=0"], ["pipeline.steps.quantize.params", "must be >= 1"]),
    (["pipeline.steps.prune.max_concurrency=-1"], "pipeline.steps.prune.max_concurrency: -1 is not >= 0"),
]


@pytest.mark.parametrize("overrides,expected", RANGE_CASES, ids=[c[0][0][15:55] for c in RANGE_CASES])
def test_a_value_out_of_range_fails_at_dry_run(overrides, expected, workdir, capsys):
    """Before: exit 0 at --dry-run, the check ran only in the step's Ray task."""
    assert_config_error(["experiment=smoke", *overrides, "--dry-run"], expected, workdir, capsys)


def test_a_value_out_of_range_exits_2_before_any_run(workdir, capsys):
    """Without --dry-run too: one line, exit 2, no MLflow store, Ray untouched."""
    argv = ["experiment=smoke", "pipeline.steps.prune.params.amount=1.5"]
    assert_config_error(argv, RANGE_CASES[0][1], workdir, capsys)


def test_a_value_out_of_range_exits_2_through_the_console_command(workdir):
    """`python -m pipelines experiment=smoke pipeline.steps.prune.params.amount=1.5 --dry-run` in a
    fresh process: exit 2, one line naming the key and the range, no store."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = ["experiment=smoke", "pipeline.steps.prune.params.amount=1.5", "--dry-run"]
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", *argv], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err == f"error: {RANGE_CASES[0][1]}", err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()


def test_a_value_out_of_range_in_one_multirun_execution(workdir, capsys):
    """-m: every execution is built before anything starts; the bad one is named."""
    argv = ["-m", "experiment=smoke", "pipeline.steps.prune.params.amount=0.5,1.5"]
    expected = ["execution 1 (pipeline.steps.prune.params.amount=1.5): ", RANGE_CASES[0][1]]
    assert_config_error(argv, expected, workdir, capsys)


def test_a_search_space_out_of_range_fails_at_validation(workdir, capsys):
    """A search draws from [low, high]: both ends are built as the step's config."""
    argv = ["pipeline=search", "pipeline.search.space.prune.amount.high=1.5", "--dry-run"]
    assert_config_error(argv, "pipeline.search.space.prune.amount: 1.5 is not in [0, 1)", workdir, capsys)


def test_every_declared_select_field_is_overridable_without_plus(workdir, capsys):
    """Before: `pipeline.steps.prune.select.confidence=0.95` was refused ("use +"): the select block
    of the pipeline's YAML does not write confidence. Now every field SelectConfig declares can be
    set as declared, its value is checked, and a step the pipeline lacks is named."""
    from pipelines import api
    from pipelines.config.compose import load_config

    plan = api.validate(load_config(["experiment=smoke", "pipeline.steps.prune.select.confidence=0.95"]))
    assert plan.spec.steps["prune"].select.confidence == 0.95
    assert plan.spec.steps["prune"].select.mode == "max"  # the YAML's other fields are kept
    assert main(["experiment=smoke", "pipeline.steps.prune.select.confidence=0.95", "--dry-run"]) == 0
    assert main(["-m", "experiment=smoke", "pipeline.steps.prune.select.confidence=0,0.95", "--dry-run"]) == 0
    assert "2 executions" in capsys.readouterr().err
    bad = ["experiment=smoke", "pipeline.steps.prune.select.confidence=0.9", "--dry-run"]
    assert_config_error(bad, "pipeline.steps.prune.select.confidence: must be 0", workdir, capsys)
    typo = ["experiment=smoke", "pipeline.steps.prnue.select.confidence=0.95", "--dry-run"]
    assert_config_error(typo, "pipeline.steps.prnue: no such step in the pipeline", workdir, capsys)
    assert not (workdir / "mlflow.db").exists()


def test_a_bad_value_raised_on_a_ray_worker_reaches_the_driver_as_itself(ray_local):
    import pickle

    import ray

    from tasks.core.checks import BadValue

    again = pickle.loads(pickle.dumps(BadValue("data.model", "a folder is required")))
    assert (again.key, str(again)) == ("data.model", "data.model: a folder is required")

    @ray.remote(num_cpus=0)
    def step():
        raise BadValue("data.model", "a folder is required")

    with pytest.raises(BadValue, match=r"^data\.model: a folder is required$"):
        try:
            ray.get(step.remote())
        except ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause().cause from None
