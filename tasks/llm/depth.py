"""Depth pruning of a causal LM: score every decoder block by how little it changes the residual
stream on calibration text and drop the least important ones.

The score is ShortGPT's Block Influence (Men et al. 2024, "ShortGPT: Layers in Large Language
Models are More Redundant Than You Expect", arXiv:2403.03853, eq. 2):

    BI_i = 1 - E_tokens[ cos(x_i, x_{i+1}) ]

with x_i the hidden state entering block i and x_{i+1} the one leaving it. A block whose output
points where its input did (cos ~ 1) barely moves the residual stream, so removing it changes the
network least; Minitron (Muralidharan et al. 2024, arXiv:2407.14679) uses the same score for its
depth axis. The states are read with forward hooks on the blocks rather than from
``output_hidden_states``: transformers replaces the last entry of that tuple with the output of
the final norm, which would score the last block against a differently scaled vector.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def _body(model: Any) -> nn.Module | None:
    """The decoder stack under the LM head: ``model.model`` (Llama family) or ``model.transformer`` (GPT-2)."""
    body = getattr(model, "model", None)
    return body if body is not None else getattr(model, "transformer", None)


def _layer_attr(model: Any) -> str | None:
    """The attribute of the decoder stack holding the block list, or None."""
    body = _body(model)
    for name in ("layers", "h"):
        if isinstance(getattr(body, name, None), nn.ModuleList):
            return name
    return None


def decoder_layers(model: Any) -> nn.ModuleList:
    """The ModuleList of decoder blocks of a Hugging Face causal LM (Llama/Qwen2/Mistral:
    ``model.model.layers``; GPT-2: ``model.transformer.h``)."""
    name = _layer_attr(model)
    if name is not None:
        return getattr(_body(model), name)
    raise ValueError(f"model: no decoder layer list found on {type(model).__name__} (model.layers or transformer.h)")


def check_calib(calib: torch.Tensor, batch: int) -> None:
    if not isinstance(calib, torch.Tensor) or calib.dim() != 2 or calib.dtype != torch.long or calib.numel() == 0:
        raise ValueError(f"calib: need a non-empty torch.long tensor [n, T], got {getattr(calib, 'shape', calib)!r}")
    if batch < 1:
        raise ValueError(f"batch: must be >= 1, got {batch}")


@torch.no_grad()
@torch.no_grad()
def run_calibration(model: Any, calib: torch.Tensor, batch: int, handles: list) -> None:
    """``calib`` through ``model`` in eval mode, ``batch`` rows at a time and without the KV cache, for
    the forward hooks in ``handles`` to record; the hooks are removed and the mode restored after."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, calib.shape[0], batch):
            model(input_ids=calib[start : start + batch], use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def block_importance(model: Any, calib: torch.Tensor, batch: int = 4) -> list[float]:
    """ShortGPT Block Influence per decoder layer, BI_i = 1 - mean over calibration tokens of
    cos(x_i, x_{i+1}) (Men et al. 2024, eq. 2). One score per layer, in layer order; higher means
    the block changes the hidden state more, so it matters more. No gradients, eval mode."""
    check_calib(calib, batch)
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    handles = []

    def hook(index):
        def record(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
            sums[index] += cos.double().sum()

        return record

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(hook(i), with_kwargs=True))
    run_calibration(model, calib, batch, handles)
    return [float(1.0 - s / calib.numel()) for s in sums]


def drop_layers(model: Any, keep: list[int]) -> nn.Module:
    """A new model (deep copy; the input is untouched) keeping the decoder layers ``keep`` in that
    order. ``config.num_hidden_layers`` and ``config.layer_types`` (when present) follow, and each
    kept attention's ``layer_idx`` is renumbered 0..len(keep)-1 so the KV cache, which is indexed
    by layer_idx, has one slot per remaining layer and ``generate`` works."""
    total = len(decoder_layers(model))
    keep = [int(i) for i in keep]
    if not keep:
        raise ValueError("keep: empty, at least one decoder layer must stay")
    bad = [i for i in keep if not 0 <= i < total]
    if bad:
        raise ValueError(f"keep: layer {bad[0]} out of range 0..{total - 1}")
    if len(set(keep)) != len(keep):
        raise ValueError(f"keep: duplicate layers in {keep}")
    new = copy.deepcopy(model)
    old_layers = decoder_layers(new)
    kept = nn.ModuleList([old_layers[i] for i in keep])
    for new_idx, layer in enumerate(kept):
        numbered: list[Any] = [m for m in layer.modules() if hasattr(m, "layer_idx")]
        for module in numbered:
            module.layer_idx = new_idx
    setattr(_body(new), str(_layer_attr(new)), kept)
    config = new.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    return new


def depth_prune(model: Any, calib: torch.Tensor, layers: int) -> tuple[nn.Module, dict]:
    """Keep ``layers`` decoder layers: drop the (L - layers) with the lowest Block Influence, as
    ShortGPT does, without protecting the first or last layer. Their BI is measured on the same
    footing as the others and is high in practice (the first block rewrites the embeddings, the
    last prepares the logits), so the score alone keeps them (SmolLM2-135M-Instruct on torch
    source: BI 0.98 for block 0, 0.49 for block 29, 0.03-0.16 in between); forcing them would
    override the measurement. Scores come from one pass on the full model (ShortGPT's one-shot removal).
    Returns (new model, {"kept", "dropped", "importance"})."""
    total = len(decoder_layers(model))
    if not 1 <= int(layers) <= total:
        raise ValueError(f"layers: must be in 1..{total}, got {layers}")
    importance = block_importance(model, calib)
    order = sorted(range(total), key=lambda i: (importance[i], i))
    dropped = sorted(order[: total - int(layers)])
    kept = [i for i in range(total) if i not in dropped]
    return drop_layers(model, kept), {"kept": kept, "dropped": dropped, "importance": importance}
