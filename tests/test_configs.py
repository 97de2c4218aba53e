"""Every config file composes and validates; the task table matches the task modules."""

from __future__ import annotations

import inspect
import pkgutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from pipelines.config import schema as config_schema
from pipelines.config.compose import load_config
from pipelines.config.spec import build_config, task_signature
from pipelines.run import session
from tasks import TASKS

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# pipelines whose data step takes another data option than the default (mnist1d) -> that option,
# with the keys it requires
DATA_OF = {"hf_textcls": "hf_text", "hf_embed": "hf_text", "llm": "lm_text"}
REQUIRED = {"hf_text": ["data.path=train.csv", "+teacher.path=my-model"], "lm_text": ["+teacher.path=smollm2"]}
EXPERIMENT_REQUIRED = {e: ["data.path=train.csv", "teacher.path=my-model"] for e in ("hf_textcls", "hf_embed")}


def _with_data(pipeline: str) -> list[str]:
    data = DATA_OF.get(pipeline)
    return [f"pipeline={pipeline}"] + ([f"data={data}", *REQUIRED[data]] if data else [])


@pytest.mark.parametrize(
    "overrides",
    [_with_data(p) for p in _options("pipeline")]
    + [[f"experiment={e}", *EXPERIMENT_REQUIRED.get(e, [])] for e in _options("experiment")],
)
def test_every_pipeline_and_experiment_validates(overrides):
    cfg = load_config(overrides)
    spec, _, _ = session.validate(cfg)
    assert spec.steps
    for step in spec.steps.values():
        for trial in step.trials:
            build_config(step.task, trial.params)  # the task's dataclass is fully built


@pytest.mark.parametrize("group", ["data", "ray", "tracking"])
def test_every_group_option_composes(group):
    for option in _options(group):
        paired = [p for p, d in DATA_OF.items() if group == "data" and d == option]
        cfg = load_config(_with_data(paired[0]) if paired else [f"{group}={option}"])
        session.validate(cfg)


def test_every_model_option_builds_with_the_default_pipeline():
    for option in _options("model"):
        cfg = load_config([f"model@teacher_model={option}"])
        session.validate(cfg)


def test_every_task_option_file_composes_against_its_schema():
    config_schema.register()
    files = sorted((CONF / "task").glob("*/*.yaml"))
    assert files
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for f in files:
            task = f.parent.name
            assert task in TASKS, f"conf/task/{task} has no task in tasks.TASKS"
            cfg = compose(config_name=f"task/{task}/{f.stem}")
            node = cfg.task[task]
            build_config(task, dict(node))


def test_task_table_is_the_steps_folder():
    """One module of tasks/steps per TASKS entry, named after it, and nothing else registered."""
    import tasks.steps

    modules = {m.name for m in pkgutil.iter_modules(tasks.steps.__path__)}
    assert modules == set(TASKS)
    for name, fn in TASKS.items():
        assert fn.__module__ == f"tasks.steps.{name}", name
        params = inspect.signature(fn).parameters
        assert "cfg" in params and "ctx" in params, name
        task_signature(name)  # annotations resolve


def test_every_task_has_its_config_folder():
    assert {p.name for p in (CONF / "task").iterdir() if p.is_dir()} == set(TASKS)


def test_a_target_part_replaces_the_default_instead_of_merging():
    cfg = build_config("distill", {"student": {"_target_": "tasks.models.zoo.MLP", "hidden": [16]}})
    assert cfg.student == {"_target_": "tasks.models.zoo.MLP", "hidden": [16]}  # no 'channels' from the default
    kept = build_config("distill", {"optim": {"epochs": 3}})
    assert kept.student["_target_"] == "tasks.models.zoo.CNN1D" and kept.optim.epochs == 3


@pytest.mark.parametrize("group,schema", [("ray", "RayConfig"), ("tracking", "TrackingConfig")])
def test_engine_option_files_compose_against_their_schema(group, schema):
    """conf/ray/* and conf/tracking/* are typed like task option files: a typo fails at compose."""
    config_schema.register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in _options(group):
            cfg = compose(config_name=f"{group}/{option}")
            assert OmegaConf.get_type(cfg[group]).__name__ == schema, option
            if group == "ray":  # untyped, `num_cpus: null` would take any string
                with pytest.raises(ConfigCompositionException, match="ray.num_cpus=two") as info:
                    compose(config_name=f"{group}/{option}", overrides=["ray.num_cpus=two"])
                assert "could not be converted to Integer" in str(info.value.__cause__)


def test_every_option_value_in_conf_is_an_enum_member():
    """Options reach tasks as Enum members, also from the shipped option files."""
    from tasks.core.options import PruneMethod, QuantMethod

    config_schema.register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        prune_cfg = build_config("prune", dict(compose(config_name="task/prune/agp").task.prune))
        quant_cfg = build_config("quantize", dict(compose(config_name="task/quantize/qat").task.quantize))
    assert prune_cfg.method is PruneMethod.gradual and quant_cfg.method is QuantMethod.qat


# every task config checks the ranges of its values when built (``tasks.core.checks``): the
# validator builds each step's config, so each of these is a one-line error before Ray starts
RANGES = [
    ("prune", "amount", 1.5, "1.5 is not in [0, 1)"),
    ("prune", "kd_alpha", -0.1, "-0.1 is not in [0, 1]"),
    ("prune", "kd_temperature", 0.0, "0.0 is not > 0"),
    ("prune", "steps", 0, "0 is not >= 1"),
    ("prune", "finetune.epochs", -1, "-1 is not >= 0"),
    ("train", "optim.lr", -1e-3, "-0.001 is not >= 0"),
    ("train", "optim.batch_size", 0, "0 is not >= 1"),
    ("distill", "temperature", -1.0, "-1.0 is not > 0"),
    ("distill", "alpha", 1.5, "1.5 is not in [0, 1]"),
    ("benchmark", "rounds", 0, "0 is not >= 1"),
    ("benchmark", "threads", 0, "0 is not >= 1"),
    ("benchmark", "speed_threads", [1, 0], "0 is not >= 1"),
    ("benchmark", "serving.concurrency", -1, "-1 is not >= 0"),
    ("export", "min_agreement", 1.5, "1.5 is not in [0, 1]"),
    ("infer", "batch_size", 0, "0 is not >= 1"),
    ("inference", "micro_batch", 0, "0 is not >= 1"),
    ("inference", "split", "tset", "'tset' is not one of"),
    ("data", "test_fraction", 1.0, "1.0 is not in (0, 1)"),
    ("prune_embedding", "amount", 1.0, "1.0 is not in (0, 1)"),
    ("text_data", "seq_len", 0, "0 is not >= 1"),
    ("text_corpus", "val_frac", 1.0, "1.0 is not in [0, 1)"),
    ("text_classifier", "dropout", 1.0, "1.0 is not in [0, 1)"),
    ("multitask_report", "eval_batch_size", 0, "0 is not >= 1"),
    ("report", "dpi", 0, "0 is not >= 1"),
    ("quantize", "eval_batch_size", 0, "0 is not >= 1"),
]


@pytest.mark.parametrize("task,key,value,message", RANGES, ids=[f"{t}.{k}" for t, k, _, _ in RANGES])
def test_every_task_config_checks_its_ranges_when_built(task, key, value, message):
    """``typed_params`` (what validation calls for every step and sweep trial) names the key and
    the allowed range; before, it only merged types and the check waited for the Ray task."""
    from pipelines.config.errors import SpecError
    from pipelines.config.spec import typed_params

    params: dict = {}
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    with pytest.raises(SpecError) as err:
        typed_params(task, params, "pipeline.steps.x.params")
    where = f"pipeline.steps.x.params.{key}" + ("[1]" if isinstance(value, list) else "")
    assert str(err.value).startswith(f"{where}: {message}"), err.value
    typed_params(task, {}, "pipeline.steps.x.params")  # the defaults pass their own checks
