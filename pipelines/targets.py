"""Model parts in a config: ``_target_`` nodes checked against their constructors, and the
allow-list of targets a step may load from a stored artifact.

A model part is a mapping with a ``_target_`` (e.g. ``params.model``, ``params.student``): the
target must import and be an ``nn.Module`` subclass, and its kwargs must fit the constructor's
signature (``inspect.signature``), with ``input_shape``/``num_classes`` filled from the data
(``tasks.models.DATA_KWARGS``). So a typo in a model YAML fails at validation, not in a Ray task.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from pipelines.errors import SpecError
from tasks.models import DATA_KWARGS, resolve_model


def _parts(node, path: str) -> Iterator[tuple[str, dict]]:
    """Every ``(config path, mapping)`` with a ``_target_`` key under ``node``."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for k, v in node.items():
            yield from _parts(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _parts(v, f"{path}[{i}]")


def model_targets(params: dict) -> set[str]:
    """The model ``_target_``s a step's params name."""
    return {str(part["_target_"]) for _, part in _parts(params, "")}


def _model_class(target, path: str) -> type:
    try:
        return resolve_model(str(target), trusted=(str(target),))  # named by the config: trusted
    except ValueError as e:
        raise SpecError(path, str(e)) from None


def check_model_parts(params: dict, path: str) -> None:
    """Each model part's target imports, is an nn.Module, and takes exactly the kwargs given."""
    for where, part in _parts(params, path):
        cls = _model_class(part["_target_"], f"{where}._target_")
        sig = inspect.signature(cls)
        accepted = {n: p for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        open_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        name = f"{cls.__module__}.{cls.__qualname__}"
        for key in part:
            if key != "_target_" and key not in accepted and not open_kwargs:
                raise SpecError(f"{where}.{key}", f"{name} has no argument '{key}' (arguments: {sorted(accepted)})")
        for key in DATA_KWARGS:
            if key not in accepted and not open_kwargs:
                raise SpecError(where, f"{name} must take '{key}' (slimray fills it from the data)")
        for key, p in accepted.items():
            if p.default is p.empty and key not in part and key not in DATA_KWARGS:
                raise SpecError(f"{where}.{key}", f"missing required argument of {name}")


def trusted_models(targets) -> set[str]:
    """The config's ``trusted_models``: each must import and be an nn.Module subclass."""
    for i, target in enumerate(targets):
        _model_class(target, f"trusted_models[{i}]")
    return {str(t) for t in targets}
