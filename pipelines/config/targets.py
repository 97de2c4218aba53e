"""Model parts in a config: ``_target_`` nodes checked against their constructors, and the
allow-list of targets a step may load from a stored artifact.

A model part is a mapping with a ``_target_`` (e.g. ``params.model``, ``params.student``): the
target must import and be an ``nn.Module`` subclass, and its kwargs must fit the constructor's
signature (``inspect.signature``). The data fills ``input_shape``/``num_classes`` by those names
(``tasks.models.build.DATA_KWARGS``), or, with ``data_args: {n_classes: num_classes, length:
input_shape[-1]}``, the user's own argument names. So a typo in a model YAML, or a required argument
neither given nor mapped, fails at validation, not in a Ray task.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from pipelines.config.errors import SpecError
from tasks.models.build import DATA_ARGS, DATA_KWARGS, DATA_VALUE_RE, DATA_VALUES, resolve_model


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


def _check_data_args(part: dict, where: str, name: str, accepted: dict, open_kwargs: bool) -> set[str]:
    """The constructor arguments the data fills: ``data_args``' keys (checked), else DATA_KWARGS."""
    mapping = part.get(DATA_ARGS)
    if mapping is None:
        for key in DATA_KWARGS:
            if key not in accepted and not open_kwargs:
                raise SpecError(
                    where,
                    f"{name} takes no '{key}': map the data to its own argument names, "
                    f"e.g. data_args: {{n_classes: num_classes, length: input_shape[-1]}}",
                )
        return set(DATA_KWARGS)
    if not isinstance(mapping, dict):
        raise SpecError(f"{where}.{DATA_ARGS}", f"must map constructor arguments to data values ({DATA_VALUES})")
    for arg, source in mapping.items():
        path = f"{where}.{DATA_ARGS}.{arg}"
        if arg not in accepted and not open_kwargs:
            raise SpecError(path, f"{name} has no argument '{arg}' (arguments: {sorted(accepted)})")
        if arg in part:
            raise SpecError(path, f"'{arg}' is both given and mapped from the data: keep one")
        if not isinstance(source, str) or not DATA_VALUE_RE.match(source):
            raise SpecError(path, f"unknown data value '{source}' ({DATA_VALUES})")
    return set(mapping)


def check_model_parts(params: dict, path: str) -> None:
    """Each model part's target imports, is an nn.Module, and takes exactly the kwargs given;
    every required constructor argument is given or mapped from the data (``data_args``)."""
    for where, part in _parts(params, path):
        cls = _model_class(part["_target_"], f"{where}._target_")
        sig = inspect.signature(cls)
        accepted = {n: p for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        open_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        name = f"{cls.__module__}.{cls.__qualname__}"
        for key in part:
            if key not in ("_target_", DATA_ARGS) and key not in accepted and not open_kwargs:
                raise SpecError(f"{where}.{key}", f"{name} has no argument '{key}' (arguments: {sorted(accepted)})")
        filled = _check_data_args(part, where, name, accepted, open_kwargs)
        for key, p in accepted.items():
            if p.default is p.empty and key not in part and key not in filled:
                raise SpecError(
                    f"{where}.{key}", f"missing required argument of {name} (give it, or map it in data_args)"
                )


def trusted_models(targets) -> set[str]:
    """The config's ``trusted_models``: each must import and be an nn.Module subclass."""
    for i, target in enumerate(targets):
        _model_class(target, f"trusted_models[{i}]")
    return {str(t) for t in targets}
