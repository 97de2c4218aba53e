"""Width pruning of a Llama-family causal LM: FFN channels and whole KV groups of attention heads,
ranked by activations on calibration text (Minitron, Muralidharan et al. 2024, arXiv:2407.14679,
sec. 2.2: activation-based importance from a small calibration set, no gradients).

- FFN channel j of a layer: mean over calibration tokens of |act(gate_j(x)) * up_j(x)|, the input
  of ``down_proj`` (Minitron's neuron score; the |activation| half of Wanda, Sun et al. 2023).
- Attention: grouped-query attention (Ainslie et al. 2023) shares one K/V head between
  ``num_attention_heads / num_key_value_heads`` query heads, so heads are pruned by WHOLE KV group
  (the KV head plus its query heads) and the ratio, hence ``num_key_value_groups``, stays valid.
  Group g scores the mean over tokens of || o_proj restricted to the group's columns applied to the
  group's attention output ||_2, i.e. the norm of what the group writes into the residual stream.

Every layer keeps the same number of channels and groups (the config describes one shape for all
layers) but each layer keeps its own best ones. The ``nn.Linear`` weights are sliced by hand
rather than through torch-pruning: the cut is a handful of ``index_select`` calls on known
projections, the ranking is activation-based from calibration hooks (torch-pruning's built-in
importances are weight/gradient-based and its dependency graph traces the model), and the result
must stay a stock ``from_config`` architecture, which explicit slicing guarantees by construction.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from tasks.llm.depth import check_calib, decoder_layers, run_calibration


def _sizes(config) -> tuple[int, int, int]:
    """(query heads, KV heads, head_dim) of a config, head_dim explicit or hidden/heads."""
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, head_dim


@torch.no_grad()
def width_importance(model: Any, calib: torch.Tensor, batch: int = 4) -> tuple[list, list]:
    """Per layer: FFN channel scores [intermediate] and KV-group scores [num_key_value_heads],
    both as mean over calibration tokens (see the module docstring for the formulas)."""
    check_calib(calib, batch)
    heads, kv, head_dim = _sizes(model.config)
    layers: list[Any] = list(decoder_layers(model))
    ffn = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    groups = [torch.zeros(kv, dtype=torch.float64) for _ in layers]
    handles = []

    def ffn_hook(i):
        def record(module, args):
            ffn[i] += args[0].detach().abs().double().sum(dim=(0, 1))

        return record

    def attn_hook(i):
        def record(module, args):
            x = args[0].detach().float()
            b, t, _ = x.shape
            w = module.weight.float().view(module.out_features, kv, heads // kv * head_dim)
            out = torch.einsum("btgc,dgc->btgd", x.view(b, t, kv, -1), w)
            groups[i] += out.norm(dim=-1).double().sum(dim=(0, 1))

        return record

    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(ffn_hook(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(attn_hook(i)))
    run_calibration(model, calib, batch, handles)
    n = calib.numel()
    return [f / n for f in ffn], [g / n for g in groups]


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (dim=0, output features, bias follows) or columns (dim=1, input
    features, bias unchanged) ``index`` of ``linear``."""
    weight = linear.weight.data.index_select(dim, index).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    new = new.to(dtype=weight.dtype, device=weight.device)
    new.weight.data = weight
    if linear.bias is not None:
        new.bias.data = (linear.bias.data.index_select(0, index) if dim == 0 else linear.bias.data).clone()
    return new


def _check_llama(model: Any) -> None:
    """One-line ValueError unless the decoder layers have the Llama-family Linear projections sliced here."""
    first = decoder_layers(model)[0]
    for name in (
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
    ):
        try:
            found = isinstance(first.get_submodule(name), nn.Linear)
        except AttributeError:
            found = False
        if not found:
            raise ValueError(f"model: {type(model).__name__}: no Linear {name} (width pruning is Llama-family only)")


def _keep_size(total: int, share: float) -> int:
    """``share`` of ``total`` channels rounded to a multiple of 8 (SIMD/GEMM friendly), in 8..total."""
    if share >= 1.0:
        return total
    return int(min(total, max(8, round(total * share / 8) * 8)))


def _group_rows(groups: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of the blocks ``groups`` of ``width`` consecutive rows each."""
    return (groups[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


def _prune_layer(layer: Any, ffn_idx: torch.Tensor, kv_idx: torch.Tensor, sizes: tuple[int, int, int]) -> None:
    """Slice one decoder layer in place to the kept FFN channels and KV groups."""
    heads, kv, head_dim = sizes
    mlp = layer.mlp
    mlp.gate_proj = _slice_linear(mlp.gate_proj, ffn_idx, 0)
    mlp.up_proj = _slice_linear(mlp.up_proj, ffn_idx, 0)
    mlp.down_proj = _slice_linear(mlp.down_proj, ffn_idx, 1)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(ffn_idx)
    if len(kv_idx) == kv:
        return
    attn = layer.self_attn
    q_rows = _group_rows(kv_idx, heads // kv * head_dim)
    kv_rows = _group_rows(kv_idx, head_dim)
    attn.q_proj = _slice_linear(attn.q_proj, q_rows, 0)
    attn.k_proj = _slice_linear(attn.k_proj, kv_rows, 0)
    attn.v_proj = _slice_linear(attn.v_proj, kv_rows, 0)
    attn.o_proj = _slice_linear(attn.o_proj, q_rows, 1)


def width_prune(
    model: Any, calib: torch.Tensor, ffn_keep: float = 1.0, kv_groups_keep: int | None = None
) -> tuple[nn.Module, dict]:
    """A new, narrower model (deep copy): every layer keeps its top ``ffn_keep`` share of FFN
    channels (rounded to a multiple of 8) and its top ``kv_groups_keep`` KV groups (None: all),
    ranked on ``calib``. The config follows (intermediate_size, num_attention_heads,
    num_key_value_heads; head_dim written explicitly so it no longer derives from hidden/heads),
    so ``from_config`` rebuilds the same architecture and the KV cache is sized right.
    Returns (model, info) with the new sizes, kept groups per layer and parameter counts."""
    heads, kv, head_dim = _sizes(model.config)
    _check_llama(model)
    if not 0.0 < float(ffn_keep) <= 1.0:
        raise ValueError(f"ffn_keep: must be in (0, 1], got {ffn_keep}")
    kv_keep = kv if kv_groups_keep is None else int(kv_groups_keep)
    if not 1 <= kv_keep <= kv:
        raise ValueError(f"kv_groups_keep: must be in 1..{kv} (num_key_value_heads), got {kv_groups_keep}")
    ffn_scores, group_scores = width_importance(model, calib)
    inter = _keep_size(len(ffn_scores[0]), float(ffn_keep))
    new = copy.deepcopy(model)
    kept_groups = []
    for layer, f_score, g_score in zip(decoder_layers(new), ffn_scores, group_scores):
        ffn_idx = torch.topk(f_score, inter).indices.sort().values
        kv_idx = torch.topk(g_score, kv_keep).indices.sort().values
        _prune_layer(layer, ffn_idx, kv_idx, (heads, kv, head_dim))
        kept_groups.append(kv_idx.tolist())
    config = new.config
    config.intermediate_size = inter
    config.num_attention_heads = heads // kv * kv_keep
    config.num_key_value_heads = kv_keep
    config.head_dim = head_dim
    info = {
        "intermediate_size": inter,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": kv_keep,
        "head_dim": head_dim,
        "kv_groups_kept": kept_groups,
        "group_importance": [g.tolist() for g in group_scores],
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in new.parameters()),
    }
    return new, info
