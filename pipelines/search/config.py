"""The search section of a pipeline: schema, compose-time validation, the plan it yields.

    pipeline:
      search:
        deployed: quantize                      # the step whose model is deployed and measured
        space:                                  # step -> its params, down to distributions
          student_kd: {temperature: {type: loguniform, low: 1.0, high: 8.0}}
          prune: {method: {type: choice, values: [channel, magnitude]}}
        objectives: {throughput: max}           # measures of the deployed model
        constraint: {reference: teacher, budget: 0.01}   # val_acc >= teacher.val_acc - 0.01

Every value a distribution can produce is checked against the step's task dataclass like a
sweep trial (a choice's every value; a range's bounds), so ``method: chanel`` or a float for
an int field fails at compose time with one line naming ``pipeline.search.space.<step>.<key>``.
The space mirrors the step's params (a mapping with a ``type`` is a distribution), so a single
bound is an ordinary override: ``pipeline.search.space.prune.amount.high=0.6``.

The plan splits the steps: the *prefix* (upstream of every searched step, run once before the
search), the *chain* (searched steps and what lies between them and ``deployed``: what a trial
runs) and the *final* steps (benchmark, report), which run once on the best trial's chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING

from pipelines.config.errors import SpecError
from pipelines.config.graph import closure, toposort, upstream_of
from pipelines.config.schema import SelectMode, container, typed
from pipelines.config.spec import _set_dotted, typed_params
from pipelines.config.targets import check_model_parts

# objective name -> the benchmark row field of the deployed model that measures it
MEASURES = {
    "throughput": "throughput_b256",
    "latency_ms": "latency_ms_p50_b1",
    "size_bytes": "size_bytes",
    "flops": "flops",
    "val_acc": "val_acc",
    "serve_p99_ms": "serve_p99_ms",  # benchmark.serving on: through Ray Serve over HTTP (tasks.serving.load)
    "serve_rps": "serve_rps",
}


class Dist(StrEnum):
    uniform = "uniform"
    loguniform = "loguniform"
    randint = "randint"  # integers low <= v <= high
    choice = "choice"


class Algorithm(StrEnum):
    tpe = "tpe"  # Optuna TPE (multivariate; MOTPE when several objectives), constraint-aware
    nsga2 = "nsga2"  # Optuna NSGA-II, constraint-aware
    random = "random"  # Tune's random sampling: the baseline


class EarlyStop(StrEnum):
    none = "none"
    feasibility = "feasibility"  # stop a trial once an intermediate val_acc < bound - slack
    asha = "asha"  # Tune's ASHA on intermediate val_acc (rungs = chain steps)


@dataclass
class Dim:
    type: Dist = MISSING
    low: float | None = None
    high: float | None = None
    values: list[Any] = field(default_factory=list)


@dataclass
class ConstraintConfig:
    reference: str = "teacher"  # a prefix step whose val_acc is the reference
    reference_value: float | None = None  # a fixed reference instead (compare methods on one bound)
    budget: float = 0.01  # feasible: deployed val_acc >= reference - budget


@dataclass
class SearchConfig:
    enabled: bool = True  # false: run the steps as a plain pipeline (one grid point)
    deployed: str = MISSING
    space: dict[str, Any] = field(default_factory=dict)  # step -> params tree; leaves are Dims
    objectives: dict[str, SelectMode] = field(default_factory=lambda: {"throughput": SelectMode.max})
    constraint: ConstraintConfig = field(default_factory=ConstraintConfig)
    algorithm: Algorithm = Algorithm.tpe
    num_samples: int = 10
    time_budget_s: float | None = None
    max_concurrent: int = 2  # trials at once
    startup_trials: int = 3  # random trials before TPE / NSGA-II start modelling
    early_stop: EarlyStop = EarlyStop.feasibility
    slack: float = 0.02  # feasibility stop: margin for what later steps may recover
    trial_cpus: float = 1.0  # CPUs reserved per trial for its steps (each chain step must fit)
    storage: str | None = None  # Tune's storage (resume); null: ~/.cache/slimray/tune/<search key>
    measure: Any = field(default_factory=dict)  # benchmark params for measuring the deployed model
    seed: int | None = None  # sampler seed; null: the root seed


@dataclass
class SearchPlan:
    cfg: SearchConfig
    name: str
    steps: dict[str, dict]  # pipeline.steps, resolved (plain containers)
    dims: dict[str, tuple[str, str, Dim]]  # "step.key" -> (step, "params.key", dim)
    prefix: list[str]
    chain: list[str]
    final: list[str]
    data_step: str  # the deployed step's `data` input: what the measure step reads

    def values_params(self, values: dict[str, Any]) -> dict[str, dict]:
        """pipeline.steps with a trial's values set."""
        steps = {n: dict(s) for n, s in self.steps.items()}
        for name, v in values.items():
            step, key, _ = self.dims[name]
            steps[step] = _set_dotted(steps[step], key, v)
        return steps


def _graph(steps: dict[str, dict]) -> dict[str, set[str]]:
    return {n: upstream_of(s.get("inputs")) for n, s in steps.items()}


def _probe_values(dim: Dim, path: str) -> list[Any]:
    if dim.type == Dist.choice:
        if not dim.values:
            raise SpecError(f"{path}.values", "a choice needs a non-empty list of values")
        return list(dim.values)
    if dim.low is None or dim.high is None:
        raise SpecError(path, f"{dim.type} needs low and high")
    if not dim.low < dim.high:
        raise SpecError(path, f"low must be below high, got low={dim.low} high={dim.high}")
    if dim.type == Dist.loguniform and dim.low <= 0:
        raise SpecError(f"{path}.low", f"loguniform needs low > 0, got {dim.low}")
    if dim.type == Dist.randint:
        if not (float(dim.low).is_integer() and float(dim.high).is_integer()):
            raise SpecError(path, f"randint needs integer bounds, got low={dim.low} high={dim.high}")
        return [int(dim.low), int(dim.high)]
    return [dim.low, dim.high]


def _leaves(node: Any, prefix: str, path: str):
    """(dotted param key, Dim) of every distribution in a step's space tree."""
    if not isinstance(node, dict) or not node:
        raise SpecError(path, f"expected a distribution ({{type: ...}}) or a mapping of them, got '{node}'")
    if "type" in node:
        yield prefix, typed(Dim, node, path, as_object=True)
        return
    for key, sub in node.items():
        yield from _leaves(sub, f"{prefix}.{key}" if prefix else str(key), f"{path}.{key}")


def _check_dims(cfg: SearchConfig, steps: dict[str, dict]) -> dict[str, tuple[str, str, Dim]]:
    dims = {}
    for step, tree in cfg.space.items():
        path = f"pipeline.search.space.{step}"
        if step not in steps:
            raise SpecError(path, f"unknown step '{step}' (steps: {sorted(steps)})")
        for key, dim in _leaves(tree, "", path):
            for v in _probe_values(dim, f"{path}.{key}"):
                params = _set_dotted(steps[step].get("params") or {}, key, v)
                typed_params(steps[step]["task"], params, path)
                check_model_parts(params, path)
            dims[f"{step}.{key}"] = (step, f"params.{key}", dim)
    if not dims:
        raise SpecError("pipeline.search.space", "the search space is empty")
    return dims


def _split(cfg: SearchConfig, steps: dict[str, dict]) -> tuple[list[str], list[str], list[str]]:
    """(prefix, chain, final) step names, each in pipeline order."""
    if cfg.deployed not in steps:
        raise SpecError("pipeline.search.deployed", f"unknown step '{cfg.deployed}' (steps: {sorted(steps)})")
    graph = _graph(steps)
    to_deployed = closure(graph, {cfg.deployed})
    for step in cfg.space:
        if step not in to_deployed:
            raise SpecError(f"pipeline.search.space.{step}", f"step '{step}' does not lead to '{cfg.deployed}'")
    chain = closure(graph, set(cfg.space), down=True) & to_deployed
    prefix = closure(graph, chain) - chain
    for n in sorted(chain):
        if steps[n].get("sweep"):
            raise SpecError(f"pipeline.steps.{n}.sweep", "a searched step cannot sweep as well (search the key)")
    order, _ = toposort(graph)  # a cycle is the validator's error (spec.py)
    order += [n for n in steps if n not in order]
    final = [n for n in order if n not in chain | prefix]
    return [n for n in order if n in prefix], [n for n in order if n in chain], final


def _check_numbers(cfg: SearchConfig, prefix: list[str]) -> None:
    checks = [
        (cfg.num_samples >= 1, "num_samples", f"must be >= 1, got {cfg.num_samples}"),
        (cfg.max_concurrent >= 1, "max_concurrent", f"must be >= 1, got {cfg.max_concurrent}"),
        (cfg.startup_trials >= 1, "startup_trials", f"must be >= 1, got {cfg.startup_trials}"),
        (cfg.trial_cpus > 0, "trial_cpus", f"must be > 0, got {cfg.trial_cpus}"),
        (cfg.time_budget_s is None or cfg.time_budget_s > 0, "time_budget_s", "must be > 0 or null"),
        (cfg.constraint.budget >= 0 and math.isfinite(cfg.constraint.budget), "constraint.budget", "must be >= 0"),
        (bool(cfg.objectives), "objectives", "name at least one objective"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise SpecError(f"pipeline.search.{key}", msg)
    for name in cfg.objectives:
        if name not in MEASURES:
            raise SpecError(f"pipeline.search.objectives.{name}", f"unknown objective (known: {sorted(MEASURES)})")
    if cfg.constraint.reference_value is None and cfg.constraint.reference not in prefix:
        raise SpecError(
            "pipeline.search.constraint.reference",
            f"'{cfg.constraint.reference}' is not a step upstream of the search (prefix: {prefix})",
        )


def plan(pipeline: dict) -> SearchPlan | None:
    """The checked search plan of a resolved ``pipeline`` mapping, or None (no search section,
    or ``enabled: false``). Raises ``SpecError`` naming the key."""
    raw = pipeline.get("search")
    if raw is None:
        return None
    cfg: SearchConfig = typed(SearchConfig, container(raw, "pipeline.search"), "pipeline.search", as_object=True)
    if not cfg.enabled:
        return None
    steps = {n: dict(s) for n, s in (pipeline.get("steps") or {}).items()}
    dims = _check_dims(cfg, steps)
    prefix, chain, final = _split(cfg, steps)
    _check_numbers(cfg, prefix)
    measure = typed_params("benchmark", cfg.measure or {}, "pipeline.search.measure")
    for name in [n for n in cfg.objectives if n.startswith("serve_") and not measure.serving.concurrency]:
        raise SpecError(f"pipeline.search.objectives.{name}", "needs pipeline.search.measure.serving.concurrency >= 1")
    data = (steps[cfg.deployed].get("inputs") or {}).get("data")
    if not isinstance(data, str) or data not in prefix:
        raise SpecError(
            f"pipeline.steps.{cfg.deployed}.inputs.data", "the deployed step needs a `data` input from the prefix"
        )
    for n in chain:
        cpus = float(((steps[n].get("resources") or {}).get("num_cpus")) or 1.0)
        if cpus > cfg.trial_cpus:
            raise SpecError(f"pipeline.steps.{n}.resources.num_cpus", f"{cpus} > search.trial_cpus {cfg.trial_cpus}")
    return SearchPlan(cfg, str(pipeline["name"]), steps, dims, prefix, chain, final, data)
