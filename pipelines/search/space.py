"""The search space in Ray Tune's terms, and the same space as a grid of Hydra overrides.

Optuna's categorical distribution takes scalars only, so a choice among lists (a student's
``channels``) is sampled as the index of the value; ``decode`` maps a trial's config back.
"""

from __future__ import annotations

import json
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines.search.config import Dim, Dist, SearchPlan


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def tune_space(plan: SearchPlan) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for name, (_, _, dim) in plan.dims.items():
        if dim.type == Dist.choice:
            vals = dim.values if all(_scalar(v) for v in dim.values) else list(range(len(dim.values)))
            space[name] = tune.choice(list(vals))
        elif dim.type == Dist.uniform:
            space[name] = tune.uniform(float(dim.low or 0.0), float(dim.high or 0.0))
        elif dim.type == Dist.loguniform:
            space[name] = tune.loguniform(float(dim.low or 0.0), float(dim.high or 0.0))
        else:  # randint: Tune's upper bound is exclusive, ours inclusive
            space[name] = tune.randint(int(dim.low or 0), int(dim.high or 0) + 1)
    return space


def decode(plan: SearchPlan, config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial config -> the param values (a choice among lists back from its index)."""
    out = {}
    for name, (_, _, dim) in plan.dims.items():
        v = config[name]
        if dim.type == Dist.choice and not all(_scalar(x) for x in dim.values):
            v = dim.values[int(v)]
        elif dim.type == Dist.randint:
            v = int(v)
        out[name] = v
    return out


def label(values: dict[str, Any]) -> str:
    """A short trial label: 'temperature=2.1,amount=0.55,method=channel'."""
    parts = []
    for name, v in values.items():
        key = name  # "step.param": two steps may search a key of the same name (method)
        parts.append(
            f"{key}={v:.3g}" if isinstance(v, float) else f"{key}={json.dumps(v) if isinstance(v, list) else v}"
        )
    return ",".join(parts)


def grid_values(dim: Dim, points: int) -> list[Any]:
    """A dimension as grid values: a choice's values; ``points`` values across a range
    (geometric for loguniform; integers for randint, all of them if there are few)."""
    if dim.type == Dist.choice:
        return list(dim.values)
    lo, hi = float(dim.low or 0.0), float(dim.high or 0.0)
    if dim.type == Dist.randint:
        ints = range(int(lo), int(hi) + 1)
        if len(ints) <= points:
            return list(ints)
        return sorted({round(lo + (hi - lo) * i / (points - 1)) for i in range(points)})
    if points == 1:
        return [math.sqrt(lo * hi) if dim.type == Dist.loguniform else (lo + hi) / 2]
    if dim.type == Dist.loguniform:
        return [
            round(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (points - 1)), 6) for i in range(points)
        ]
    return [round(lo + (hi - lo) * i / (points - 1), 6) for i in range(points)]


def _hydra_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def override_path(cfg: DictConfig | None, path: str) -> str:
    """``path`` as an override can reach it: a node that is an interpolation
    (``student: ${student_model}``) is overridden at its source (``student_model.channels``)."""
    if cfg is None:
        return path
    parts, node = path.split("."), cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, DictConfig) or part not in node:
            return path
        if OmegaConf.is_interpolation(node, part):
            raw = OmegaConf.to_container(node, resolve=False)
            source = str(raw[part] if isinstance(raw, dict) else "").strip()  # "${student_model}"
            if source.startswith("${") and source.endswith("}") and ":" not in source:
                return override_path(cfg, ".".join([source[2:-1], *parts[i + 1 :]]))
            return path
        node = node[part]
    return path


def grid_overrides(plan: SearchPlan, points: int = 3, cfg: DictConfig | None = None) -> list[str]:
    """The space as Hydra multirun overrides (``slimray -m <these>``): one comma list per
    dimension, plus ``pipeline.search.enabled=false`` so each grid point runs as a plain
    pipeline. Search keys become override paths under ``pipeline.steps`` (or, given the composed
    ``cfg``, the config node an interpolated param comes from)."""
    out = []
    for _, (step, key, dim) in plan.dims.items():
        values = ",".join(_hydra_value(v) for v in grid_values(dim, points))
        out.append(f"{override_path(cfg, f'pipeline.steps.{step}.{key}')}={values}")
    return [*out, "pipeline.search.enabled=false"]
