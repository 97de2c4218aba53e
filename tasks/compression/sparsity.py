"""Pruning helpers of the ``prune`` step (``tasks/steps/prune.py``): unstructured (magnitude)
pruning, the AGP schedule, and what channel pruning needs to know of a model it has never seen
(its output layer, its attention blocks).

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


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layer that produces the model's output (the last conv/linear to run): its outputs are
    the classes (or the embedding), never pruned; Torch-Pruning then also leaves every channel
    group coupled to it (a residual stream feeding the output) whole."""
    ran: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.append(mod)) for m, _ in prunable(model)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return ran[-1:] or [m for m, _ in prunable(model)][-1:]


ATTENTION_LAYOUTS = (
    # (heads attribute, projections whose outputs are split into heads, fused qkv?)
    ("num_attention_heads", ("query", "key", "value"), False),  # Hugging Face BERT, RoBERTa, XLM-R, MiniLM
    ("num_attention_heads", ("query_proj", "key_proj", "value_proj"), False),  # DeBERTa-v2/v3
    ("num_attention_heads", ("q", "k", "v"), False),  # MPNet
    ("n_heads", ("q_lin", "k_lin", "v_lin"), False),  # DistilBERT
    ("num_heads", ("q_proj", "k_proj", "v_proj"), False),
    ("num_heads", ("qkv",), True),  # timm-style fused projection
)
# projections also split into the same heads when a block has them (DeBERTa's relative positions
# without share_att_key): pruned with the heads they belong to
HEAD_SPLIT_EXTRAS = ("pos_key_proj", "pos_query_proj")


def attention_modules(model: nn.Module) -> list[tuple[nn.Module, str, tuple[nn.Linear, ...], bool]]:
    """Attention blocks of a known layout: (module, heads attribute, projections, fused)."""
    found: list[tuple[nn.Module, str, tuple[nn.Linear, ...], bool]] = []
    for m in model.modules():
        for attr, names, fused in ATTENTION_LAYOUTS:
            projs = tuple(p for n in names if isinstance(p := getattr(m, n, None), nn.Linear))
            if isinstance(getattr(m, attr, None), int) and len(projs) == len(names):
                extras = tuple(p for n in HEAD_SPLIT_EXTRAS if isinstance(p := getattr(m, n, None), nn.Linear))
                found.append((m, attr, projs + extras, fused))
                break
    return found


def update_attention(model: nn.Module, heads: dict[nn.Module, int]) -> None:
    """After head pruning: write the new head counts and sizes back into the attention modules
    (the attributes their ``forward`` reshapes with), as Torch-Pruning's BERT/ViT examples do."""
    for m, attr, projs, fused in attention_modules(model):
        n = heads.get(projs[0], getattr(m, attr))
        width = projs[0].out_features // (3 if fused else 1)
        setattr(m, attr, n)
        for size_attr in ("attention_head_size", "head_dim"):
            if isinstance(getattr(m, size_attr, None), int):
                setattr(m, size_attr, width // n)
        if isinstance(getattr(m, "all_head_size", None), int):
            setattr(m, "all_head_size", width)  # noqa: B010 (a module attribute mypy cannot see)
