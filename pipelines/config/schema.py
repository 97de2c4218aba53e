"""The engine's structured configs: root, pipeline, step, resources, select, ray, tracking.

The composed Hydra config is merged into ``RootConfig`` once before anything runs, so an unknown
key or a wrong type anywhere (``ray.adress``, ``resources.num_cpus: two``, ``select.mode: up``,
``+foo=1``) is a one-line ``SpecError`` naming its config path. Hydra's ``+key=`` adds keys even
to a schema'd node; this merge is what catches them. Task params are checked against each
task's own dataclass by ``pipelines.config.spec`` (they depend on the step's ``task``).
"""

from __future__ import annotations

import copy
import functools
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipelines.config.errors import SpecError


@dataclass
class ResourcesConfig:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None  # bytes
    custom: dict[str, float] = field(default_factory=dict)  # Ray custom resources


class SelectMode(StrEnum):
    max = "max"
    min = "min"


@dataclass
class SelectConfig:
    metric: str = MISSING
    mode: SelectMode = SelectMode.max
    where: str | None = None  # "val_acc >= student_kd.val_acc - 0.01" (pipelines.config.select)
    confidence: float = 0.0  # 0.95: `where` must hold at the 95% interval's bound (0 = the point value)


@dataclass
class StepConfig:
    task: str = MISSING  # a key of tasks.TASKS
    inputs: dict[str, Any] = field(default_factory=dict)  # task parameter -> 'step' | 'step[*]' | list
    params: Any = field(default_factory=dict)  # the task's config dataclass (checked per task)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    retries: int = 0
    sweep: dict[str, list[Any]] = field(default_factory=dict)  # "params.<dotted key>": [values]
    max_concurrency: int = 0  # 0 = as many trials at once as Ray can place
    select: SelectConfig | None = None
    cache: bool = True


@dataclass
class PipelineConfig:
    name: str = MISSING
    description: str = ""
    steps: dict[str, StepConfig] = field(default_factory=dict)
    # search hook: a Ray Tune search over the steps (pipelines.search.config.SearchConfig,
    # checked by pipelines.search.config.plan); null for a plain pipeline
    search: Any = None


@dataclass
class RayConfig:
    address: str | None = None  # null: start an embedded local Ray; "auto", "host:port", "ray://..." join
    num_cpus: int | None = None  # local Ray only (null: all cores)
    num_gpus: int | None = None
    include_dashboard: bool = False
    runtime_env: dict[str, Any] = field(default_factory=dict)
    wait_for_nodes: bool = False  # true: a step no node can hold waits (for an autoscaler) instead of failing


@dataclass
class TrackingConfig:
    uri: str | None = None  # wins over MLFLOW_TRACKING_URI; null: that, else sqlite:///<cwd>/mlflow.db
    experiment: str | None = None  # null: the pipeline name


MODEL_KEYS = ("teacher_model", "student_model")  # root keys holding a model config (conf/model)


@dataclass
class RootConfig:
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # the dataset (conf/data): untyped here, checked against the task config of the step that
    # takes it as params (``params: ${data}``, see ``check_wired_params``)
    data: Any = field(default_factory=dict)
    # a user's model folder and its options (experiment=hf_textcls: ``params: ${teacher}`` of the
    # hf_teacher step), checked like ``data``
    teacher: Any = field(default_factory=dict)
    teacher_model: Any = None  # model parts (_target_ + kwargs), referenced by pipelines
    student_model: Any = None
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    cache: bool = True  # false: run every step, ignoring stored outputs
    trusted_models: list[str] = field(default_factory=list)  # extra model _target_s loadable from artifacts


def omega_message(e: OmegaConfBaseException) -> str:
    """First line of an OmegaConf error; an unknown key also lists the allowed ones."""
    msg = str(e).splitlines()[0].strip()
    cls = getattr(e, "object_type", None)
    if isinstance(e, ConfigKeyError) and isinstance(cls, type) and is_dataclass(cls):
        msg += f" (allowed: {', '.join(f.name for f in fields(cls))})"
    return msg


def _join(path: str, key: str | None) -> str:
    return ".".join(p for p in (path, str(key) if key else "") if p) or "config"


def container(node, path: str) -> dict:
    """A DictConfig resolved to plain values (Enums as their names), or a ``SpecError``."""
    if node is None:
        return {}
    if not isinstance(node, DictConfig):
        if not isinstance(node, dict):
            raise SpecError(path, f"expected a mapping, got {type(node).__name__} '{node}'")
        node = OmegaConf.create(node)
    try:
        return cast(dict, OmegaConf.to_container(node, resolve=True, throw_on_missing=True, enum_to_str=True))
    except OmegaConfBaseException as e:
        missing = "Missing mandatory value" in str(e)
        key = _join(path, getattr(e, "full_key", None))
        via = re.search(r"while resolving interpolation: Missing mandatory value: ([\w.]+)", str(e))
        if via:  # data.model: ${teacher.path}, and teacher.path is ??? -> name teacher.path
            key = via.group(1)
        raise SpecError(key, "missing required value (???)" if missing else omega_message(e)) from None


@functools.cache
def template(cls: type) -> DictConfig:
    """The structured node of dataclass ``cls``, built once (merging copies it; building it is
    most of the cost of checking a step's params, and a sweep checks every trial's)."""
    return OmegaConf.structured(cls)


def typed(cls: type | DictConfig, node, path: str, as_object: bool = False):
    """``node`` merged into dataclass ``cls`` (or a structured node): unknown keys, wrong types,
    bad Enum values and missing required values are a ``SpecError`` naming the key."""
    try:
        base = cls if isinstance(cls, DictConfig) else template(cls)
        merged = OmegaConf.merge(base, node)
    except OmegaConfBaseException as e:
        raise SpecError(_join(path, getattr(e, "full_key", None)), omega_message(e)) from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise SpecError(_join(path, missing[0]), "missing required value (???)")
    return OmegaConf.to_object(merged) if as_object else merged


def checked_object(node: DictConfig, path: str):
    """The dataclass object of a typed node, built field by field so that each config's own value
    checks (``__post_init__``, ``tasks.core.checks``) run here: a value out of range is a
    ``SpecError`` naming its path (``<path>.finetune.lr``). Nested configs are built first, so the
    path names the innermost config whose check failed."""
    from tasks.core.checks import BadValue

    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and is_dataclass(OmegaConf.get_type(child)) and not child._is_none():
            checked_object(child, f"{path}.{key!s}")
    try:
        return OmegaConf.to_object(node)
    except BadValue as e:
        raise SpecError(f"{path}.{e.key}", e.message) from None
    except ValueError as e:  # a check written before tasks.core.checks: its message names the field
        raise SpecError(path, str(e).splitlines()[0]) from None


def typed_params_of(cls: type, params: dict, path: str, as_object: bool = False):
    """``params`` merged into dataclass ``cls`` (``SpecError`` naming the key on any problem)."""
    try:
        base = copy.deepcopy(template(cls))
        _clear_swapped_parts(base, params)
    except OmegaConfBaseException as e:
        raise SpecError(path, omega_message(e)) from None
    return typed(base, params, path, as_object)


def _clear_swapped_parts(base: DictConfig, params: dict) -> None:
    """A ``_target_`` node in params replaces the schema's default part whole (a different
    model is a different set of kwargs); merging would leak the default's kwargs into it."""
    for key, value in params.items():
        if not isinstance(value, dict) or key not in base:
            continue
        if "_target_" in value:
            base[key] = None
        elif isinstance(base[key], DictConfig):
            _clear_swapped_parts(base[key], value)


WIRED = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")  # params: ${data}


def check_wired_params(cfg: DictConfig) -> None:
    """A root node that a pipeline hands whole to a step as its params (``data``, wired as
    ``params: ${data}``) is checked against that step's task config under its own name, so a
    typo or a value out of range in ``data.*`` is a one-line error naming ``data.<key>``."""
    from tasks import task_table  # the step table: imported when a config is checked

    steps = OmegaConf.select(cfg, "pipeline.steps")
    if not isinstance(steps, DictConfig):
        return
    table = task_table()
    raw = OmegaConf.to_container(steps, resolve=False)
    for step in raw.values() if isinstance(raw, dict) else ():
        found = WIRED.match(str(step.get("params"))) if isinstance(step, dict) else None
        task = step.get("task") if isinstance(step, dict) else None
        if found and task in table:
            key = found.group(1)
            cls = typing.get_type_hints(table[task])["cfg"]
            checked_object(typed_params_of(cls, container(OmegaConf.select(cfg, key), key), key), key)


def check_root(cfg: DictConfig) -> RootConfig:
    """The whole composed config, resolved and checked against ``RootConfig``; then the root
    nodes that steps take as their params (``check_wired_params``)."""
    root = typed(RootConfig, container(cfg, ""), "", as_object=True)
    check_wired_params(cfg)
    return root


_done = False


def register() -> None:
    """Every config dataclass into Hydra's ConfigStore, so YAML files compose against a schema:
    ``task/<task>/schema`` (each task's config), ``ray/schema``, ``tracking/schema`` and
    ``slimray_schema`` (``RootConfig``). Option files start with ``defaults: [schema, _self_]``."""
    global _done
    if _done:
        return
    from tasks import task_table

    cs = ConfigStore.instance()
    for task, fn in task_table().items():
        cs.store(group=f"task/{task}", name="schema", node=typing.get_type_hints(fn)["cfg"])
    cs.store(group="ray", name="schema", node=RayConfig)
    cs.store(group="tracking", name="schema", node=TrackingConfig)
    cs.store(name="slimray_schema", node=RootConfig)
    _done = True
