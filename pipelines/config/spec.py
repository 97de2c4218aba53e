"""Pipeline schema and validation: everything that can be checked runs before Ray starts.

A pipeline config (``cfg.pipeline``) is ``{name, steps: {step_name: step}}`` where a step is::

    task: prune                      # a key of tasks.TASKS
    inputs: {model: student_kd, data: data, models: [teacher, prune[*]]}
    params: {...}                    # the task's typed config (its dataclass)
    resources: {num_cpus: 1, num_gpus: 0, memory: null, custom: {}}
    retries: 0
    sweep: {params.amount: [0.5, 0.7], params.method: [magnitude, channel]}
    max_concurrency: 0               # 0 = as many as Ray can place
    select: {metric: throughput, mode: max, where: "val_acc >= student_kd.val_acc - 0.01"}
    cache: true

``name[*]`` asks for the outputs of every trial of a sweep step (a list); plain ``name`` is
the selected trial. Errors are ``SpecError``: one line, ``<config path>: <problem>``.

The step layout itself is the structured config ``pipelines.config.schema.StepConfig``; this module
checks what a schema cannot: params against the step's task dataclass (every sweep trial too),
inputs against the task's signature and the upstream steps' output types, model parts
(``_target_`` nodes) against their constructors, and the DAG (cycles, select references).
"""

from __future__ import annotations

import inspect
import itertools
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import cast

from omegaconf import DictConfig, OmegaConf

from pipelines.config.errors import SpecError
from pipelines.config.graph import Ref, ancestors, parse_refs, toposort
from pipelines.config.schema import (
    PipelineConfig,
    ResourcesConfig,
    StepConfig,
    checked_object,
    container,
    typed,
    typed_params_of,
)
from pipelines.config.select import Select, parse_select
from pipelines.config.targets import check_model_parts, model_targets, trusted_models
from tasks import task_table

Resources = ResourcesConfig  # a step's Ray resources (num_cpus, num_gpus, memory, custom)


@dataclass
class Trial:
    label: str  # "amount=0.5,method=channel" ("" for a plain step)
    params: dict


@dataclass
class StepSpec:
    name: str
    task: str
    inputs: dict[str, list[Ref]]  # task parameter -> refs
    list_inputs: set[str]  # parameters annotated list[...] (refs are concatenated)
    params: dict
    trials: list[Trial]
    resources: Resources
    retries: int = 0
    max_concurrency: int = 0
    select: Select | None = None
    cache: bool = True

    @property
    def is_sweep(self) -> bool:
        return len(self.trials) > 1 or bool(self.trials and self.trials[0].label)

    @property
    def upstream(self) -> list[str]:
        return sorted({r.step for refs in self.inputs.values() for r in refs})


@dataclass
class PipelineSpec:
    name: str
    steps: dict[str, StepSpec]  # in topological order
    # model _target_s beyond the zoo that steps may load from artifacts: the ones the config
    # names plus its trusted_models (tasks.models.build.load_model refuses any other)
    trusted_targets: tuple[str, ...] = ()

    def consumers(self, name: str) -> list[str]:
        return [s.name for s in self.steps.values() if name in s.upstream]


@cache
def task_signature(task: str) -> tuple[dict[str, typing.Any], set[str], type, type]:
    """(input annotations, required inputs, config dataclass, return type) of a task."""
    fn = task_table()[task]
    hints = typing.get_type_hints(fn)
    sig = inspect.signature(fn)
    inputs = {n: hints[n] for n, p in sig.parameters.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY}
    required = {n for n, p in sig.parameters.items() if n in inputs and p.default is inspect.Parameter.empty}
    return inputs, required, hints["cfg"], hints["return"]


def typed_params(task: str, params: dict, path: str) -> DictConfig:
    """Merge params into the task's config dataclass and build it: unknown keys, wrong types and
    values out of range (the dataclass's own checks, ``tasks.core.checks``) fail here, naming
    the key under ``path``. Returns the typed node."""
    node = typed_params_of(task_signature(task)[2], params, path)
    checked_object(node, path)
    return node


def build_config(task: str, params: dict):
    """The task's config object (a dataclass instance) from validated params."""
    return checked_object(typed_params_of(task_signature(task)[2], params, "params"), "params")


def _strip_optional(ann):
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _check_resources(res: Resources, path: str) -> Resources:
    if res.num_cpus < 0 or res.num_gpus < 0:
        raise SpecError(path, "resources cannot be negative")
    return res


def _set_dotted(d: dict, dotted: str, value) -> dict:
    out = OmegaConf.create(d)
    OmegaConf.update(out, dotted, value, force_add=True)
    return cast(dict, OmegaConf.to_container(out))


def _expand_sweep(task: str, params: dict, sweep: dict, path: str) -> list[Trial]:
    if not sweep:
        return [Trial("", params)]
    keys = sorted(sweep)
    for k in keys:
        if not k.startswith("params."):
            raise SpecError(f"{path}.sweep.{k}", "sweep keys must start with 'params.'")
        if not sweep[k]:
            raise SpecError(f"{path}.sweep.{k}", "must be a non-empty list of values")
    trials = []
    for combo in itertools.product(*(sweep[k] for k in keys)):
        p = params
        for k, v in zip(keys, combo):
            p = _set_dotted(p, k[len("params.") :], v)
        label = ",".join(f"{k[len('params.') :].split('.')[-1]}={v}" for k, v in zip(keys, combo))
        typed_params(task, p, f"{path}.sweep[{label}].params")
        check_model_parts(p, f"{path}.sweep[{label}].params")
        trials.append(Trial(label, p))
    return trials


def _check_inputs(name: str, task: str, inputs: dict, path: str) -> tuple[dict[str, list[Ref]], set[str]]:
    annotations, required, _, _ = task_signature(task)
    refs: dict[str, list[Ref]] = {}
    for param, value in inputs.items():
        if param not in annotations:
            raise SpecError(
                f"{path}.inputs.{param}", f"task '{task}' has no input '{param}' (inputs: {sorted(annotations)})"
            )
        refs[param] = parse_refs(value, f"{path}.inputs.{param}")
    for param in sorted(required - set(refs)):
        raise SpecError(f"{path}.inputs.{param}", f"missing required input of task '{task}'")
    list_inputs = {p for p in refs if typing.get_origin(_strip_optional(annotations[p])) is list}
    return refs, list_inputs


def _check_types(spec: dict[str, StepSpec]) -> None:
    for s in spec.values():
        annotations = task_signature(s.task)[0]
        for param, refs in s.inputs.items():
            path = f"pipeline.steps.{s.name}.inputs.{param}"
            ann = _strip_optional(annotations[param])
            is_list = param in s.list_inputs
            want = typing.get_args(ann)[0] if is_list else ann
            for ref in refs:
                if ref.step not in spec:
                    raise SpecError(path, f"unknown step '{ref.step}' (steps: {sorted(spec)})")
                if ref.all_trials and not spec[ref.step].is_sweep:
                    raise SpecError(path, f"'{ref.step}[*]' but step '{ref.step}' has no sweep")
                if spec[ref.step].is_sweep and not ref.all_trials and spec[ref.step].select is None:
                    raise SpecError(path, f"sweep step '{ref.step}' has no select rule: add one or use '{ref.step}[*]'")
                if not is_list and (len(refs) > 1 or ref.all_trials):
                    raise SpecError(path, f"input '{param}' takes one {want.__name__}, not a list")
                got = task_signature(spec[ref.step].task)[3]
                if isinstance(want, type) and not (isinstance(got, type) and issubclass(got, want)):
                    raise SpecError(
                        path,
                        f"step '{ref.step}' gives {getattr(got, '__name__', got)} "
                        f"but input '{param}' of task '{s.task}' needs {want.__name__}",
                    )


def _parse_step(name: str, node: StepConfig) -> StepSpec:
    path = f"pipeline.steps.{name}"
    table = task_table()
    if node.task not in table:
        raise SpecError(f"{path}.task", f"unknown task '{node.task}' (known: {sorted(table)})")
    inputs, list_inputs = _check_inputs(name, node.task, node.inputs, path)
    params = container(node.params, f"{path}.params")
    typed_params(node.task, params, f"{path}.params")
    check_model_parts(params, f"{path}.params")
    trials = _expand_sweep(node.task, params, node.sweep, path)
    select = parse_select(node.select, f"{path}.select") if node.select else None
    if select and not node.sweep:
        raise SpecError(f"{path}.select", "select needs a sweep")
    if node.retries < 0:
        raise SpecError(f"{path}.retries", f"must be a non-negative integer, got '{node.retries}'")
    if node.max_concurrency < 0:
        raise SpecError(f"{path}.max_concurrency", f"{node.max_concurrency} is not >= 0 (0 = as many as Ray can place)")
    return StepSpec(
        name=name,
        task=node.task,
        inputs=inputs,
        list_inputs=list_inputs,
        params=params,
        trials=trials,
        resources=_check_resources(node.resources, f"{path}.resources"),
        retries=node.retries,
        max_concurrency=node.max_concurrency,
        select=select,
        cache=node.cache,
    )


def build_spec(pipeline_cfg, trusted: list[str] | tuple[str, ...] = ()) -> PipelineSpec:
    """Validate ``cfg.pipeline`` and return the executable spec (raises ``SpecError``).

    ``trusted`` is the config's ``trusted_models``: extra model targets steps may load.
    """
    node = (
        pipeline_cfg
        if isinstance(pipeline_cfg, PipelineConfig)
        else typed(PipelineConfig, container(pipeline_cfg, "pipeline"), "pipeline", as_object=True)
    )
    if not node.name:
        raise SpecError("pipeline.name", "missing required value")
    if not node.steps:
        raise SpecError("pipeline.steps", "a pipeline needs at least one step")
    steps = {n: _parse_step(n, s) for n, s in node.steps.items()}
    _check_types(steps)
    graph = {n: s.upstream for n, s in steps.items()}
    order, cyclic = toposort(graph)
    if cyclic:
        raise SpecError("pipeline.steps", f"cycle among steps {sorted(cyclic)}")
    for s in steps.values():
        w = s.select.where if s.select else None
        if w and w.ref_step and w.ref_step not in ancestors(graph, s.name):
            raise SpecError(
                f"pipeline.steps.{s.name}.select.where", f"'{w.ref_step}' is not an upstream step of '{s.name}'"
            )
    named = {t for st in steps.values() for trial in st.trials for t in model_targets(trial.params)}
    return PipelineSpec(
        name=str(node.name),
        steps={n: steps[n] for n in order},
        trusted_targets=tuple(sorted(named | trusted_models(trusted))),
    )
