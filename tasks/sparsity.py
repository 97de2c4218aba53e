"""Unstructured (magnitude) pruning and the AGP schedule, used by the ``prune`` task.

Masks come from ``torch.nn.utils.prune`` (L1, global or per layer) and are folded into the
weights, so a pruned model stays a plain module; ``mask_applier`` keeps them zero while
fine-tuning. Unstructured sparsity gives no speed-up on dense kernels: the benchmark flags it.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils import prune as tprune


def agp_sparsity(t: int, n: int, final: float, initial: float = 0.0) -> float:
    """AGP target at round ``t`` of ``n`` (Zhu & Gupta 2017): s_f + (s_i - s_f)(1 - t/n)^3."""
    return final + (initial - final) * (1.0 - t / n) ** 3


def agp_schedule(final: float, n: int, initial: float = 0.0) -> list[float]:
    """Targets for rounds 0..n (round 0 = ``initial``); the shape Torch-Pruning's schedulers return."""
    return [agp_sparsity(t, n, final, initial) for t in range(n + 1)]


def _weight(m: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, m.weight)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, "weight") pairs that magnitude pruning touches: all conv and linear weights."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]


def magnitude_prune(model: nn.Module, amount: float, scope: str) -> dict[str, torch.Tensor]:
    """L1 magnitude pruning to ``amount`` sparsity (of the prunable weights); returns the masks.

    Masks are folded into the weights (``prune.remove``), so the model stays a plain module.
    Already-zero weights have the smallest magnitude and are counted first, which makes
    repeated calls with growing ``amount`` (AGP) nested.
    """
    params = prunable(model)
    if scope == "global":
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    else:
        for module, name in params:
            tprune.l1_unstructured(module, name, amount=amount)
    for module, name in params:
        tprune.remove(module, name)
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(m)]: (_weight(m) != 0).to(_weight(m).dtype) for m, _ in params}


def mask_applier(masks: dict[str, torch.Tensor]):
    """``after_step`` hook for ``fit``: zero the pruned weights again after each optimizer step."""

    def apply(model: nn.Module) -> None:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, mask in masks.items():
                w = _weight(modules[name])
                w.mul_(mask.to(w.device))

    return apply


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the prunable (conv/linear) weights."""
    ws = [_weight(m) for m, _ in prunable(model)]
    total = sum(w.numel() for w in ws)
    return float(sum(int((w == 0).sum()) for w in ws)) / max(total, 1)
