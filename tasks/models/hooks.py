"""Forward hooks that read a model's intermediate outputs (FitNets hints, teacher features)."""

from __future__ import annotations

import torch
from torch import nn


def capture(model: nn.Module, names: list[str]) -> tuple[dict[str, torch.Tensor], list]:
    """Register forward hooks storing the outputs of modules ``names``; return (store, handles)."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(
            f"features: no module named {unknown} in {type(model).__name__} (modules: {[n for n in modules if n][:12]})"
        )
    store: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            store[name] = output

        return hook

    return store, [modules[n].register_forward_hook(hook_for(n)) for n in names]
