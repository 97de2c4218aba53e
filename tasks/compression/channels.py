"""Structured channel pruning on Torch-Pruning's dependency graph (Fang et al., "DepGraph", CVPR 2023).

Coupled layers are pruned together and the model really shrinks; attention blocks of a known
layout lose whole heads. The pruned structure is stored as JSON in the arch config (``_pruned_``),
so the result reloads as ``build_model(arch)`` + strict safetensors weights (never a pickle).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from tasks.compression.sparsity import agp_schedule, attention_modules, output_layers, update_attention
from tasks.models.build import PRUNED, build_model, structure_of

if TYPE_CHECKING:
    import torch_pruning as tp

log = logging.getLogger(__name__)
# Torch-Pruning is imported when a pruner is built, never at import (the step table stays light)
IMPORTANCES: dict[str, Callable[[Any], Any]] = {
    "l1": lambda tp: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda tp: tp.importance.MagnitudeImportance(p=2),
    "bn_scale": lambda tp: tp.importance.BNScaleImportance(),
    "lamp": lambda tp: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda tp: tp.importance.FPGMImportance(p=2),
    "random": lambda tp: tp.importance.RandomImportance(),
}


class ChannelOptions(Protocol):
    """What ``channel_pruner`` reads of a config (the prune step's ``PruneConfig`` has all of it)."""

    @property
    def importance(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def max_layer_amount(self) -> float: ...
    @property
    def round_to(self) -> int: ...
    @property
    def ignore(self) -> Sequence[str]: ...


@dataclass
class ChannelSettings:
    """``ChannelOptions`` for a caller without a ``PruneConfig`` (e.g. ``prune_embedding``)."""

    importance: str = "l2"
    scope: str = "layer"
    max_layer_amount: float = 0.9
    round_to: int = 0
    ignore: Sequence[str] = field(default_factory=list)


def pruned_arch(model: nn.Module, arch: dict, trusted: Iterable[str] = ()) -> dict:
    """The arch config of a channel-pruned ``model``: the original constructor config plus the
    pruned structure (``_pruned_``, see ``tasks.models.build.structure_of``), verified to rebuild the
    exact tensor shapes. Works for any class: no per-architecture width readers."""
    base_arch = {k: v for k, v in copy.deepcopy(arch).items() if k != PRUNED}
    structure = structure_of(model, build_model(base_arch, trusted))
    new = {**base_arch, PRUNED: structure} if structure["shapes"] or structure["attributes"] else base_arch
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in build_model(new, trusted).state_dict().items()}
    if want != got:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise ValueError(
            f"prune: the stored structure of '{arch.get('_target_')}' does not rebuild it (mismatched: {bad[:4]})"
        )
    return new


def ignored_layers(model: nn.Module, example: torch.Tensor, names: Sequence[str]) -> list[nn.Module]:
    """The output layer plus the modules ``prune.ignore`` names (each must exist). A name is a full
    module path, or its last parts when they name one module only (``embeddings`` is
    ``model.bert.embeddings`` in a BERT classifier, ``model.distilbert.embeddings`` in DistilBERT)."""
    modules = dict(model.named_modules())
    chosen = []
    for n in names:
        found = [n] if n in modules else [k for k in modules if k.endswith("." + n)]
        if len(found) != 1:
            why = "no module" if not found else f"{len(found)} modules ({found[:3]}): give the full path of"
            raise ValueError(f"prune.ignore: the model has {why} '{n}' (e.g. {sorted(modules)[1:6]})")
        chosen.append(modules[found[0]])
    return output_layers(model, example) + chosen


def channel_pruner(
    model: nn.Module, example: torch.Tensor, cfg: ChannelOptions, amount: float, steps: int = 1, initial: float = 0.0
) -> tp.pruner.MetaPruner:
    """A Torch-Pruning ``MetaPruner`` reaching channel ratio ``amount`` in ``steps`` (AGP) rounds.

    ``cfg``: importance, scope, max_layer_amount, round_to, ignore (``ChannelOptions``).

    ``scope=global`` ranks channels of all layers together (capped at ``max_layer_amount`` per
    layer); ``layer`` removes the same fraction from every layer. The output layer keeps its
    outputs; its inputs shrink with the layer before it (the dependency graph couples them).
    Attention blocks of a known layout lose whole heads (the same ratio) and keep the head size.
    """
    import torch_pruning as tp

    blocks = attention_modules(model)
    ignored = ignored_layers(model, example, list(cfg.ignore))
    if _shared_head_bias(model):  # MPNet: one position bias per head for all layers; heads stay, FFNs shrink
        log.warning("prune: %s shares a per-head position bias across layers: its heads are kept", type(model).__name__)
        ignored += [p for _, _, projs, _ in blocks for p in projs]
        blocks = []
    heads = {p: getattr(m, attr) for m, attr, projs, _ in blocks for p in projs}
    return tp.pruner.MetaPruner(
        model,
        example,
        importance=IMPORTANCES[cfg.importance](tp),
        pruning_ratio=amount,
        global_pruning=cfg.scope == "global",
        max_pruning_ratio=cfg.max_layer_amount if cfg.scope == "global" else 1.0,
        iterative_steps=steps,
        iterative_pruning_ratio_scheduler=lambda r, n: agp_schedule(r, n, initial),
        ignored_layers=ignored,
        round_to=cfg.round_to or None,
        num_heads=heads,
        prune_num_heads=bool(heads),
        prune_head_dims=not heads,
        head_pruning_ratio=amount if heads else 0.0,
    )


def _shared_head_bias(model: nn.Module) -> bool:
    """Whether attention scores get a learned per-head bias from one table for every layer (MPNet's
    ``relative_attention_bias``): pruning a layer's heads would have to cut that shared table."""
    return any(isinstance(getattr(m, "relative_attention_bias", None), nn.Embedding) for m in model.modules())


def channel_step(pruner: tp.pruner.MetaPruner, model: nn.Module, example: torch.Tensor) -> None:
    """One pruning round, then the attention attributes, then a check that the model still runs
    and gives outputs of the same shape (a layout Torch-Pruning cannot see fails here, by name)."""
    with torch.no_grad():
        before = model.eval()(example).shape
    pruner.step()
    update_attention(model, pruner.num_heads)
    try:
        with torch.no_grad():
            after = model(example).shape
    except RuntimeError as e:
        raise ValueError(
            f"prune: the channel-pruned {type(model).__name__} no longer runs ({str(e).splitlines()[0]}); "
            f"add the failing module to prune.ignore or use method=magnitude"
        ) from None
    if after != before:
        raise ValueError(f"prune: channel pruning changed the output shape {list(before)} -> {list(after)}")
