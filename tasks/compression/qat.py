"""Quantization-aware training (the ``quantize`` method ``qat``): fake-quantized weights and
activations with a straight-through estimator (Bengio et al. 2013, "Estimating or Propagating
Gradients Through Stochastic Neurons"; Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference").

Weights: symmetric per-output-channel uniform grid (``quantize_weight``, the ``uniform``
quantizer of ``tasks.compression.quantizers``) as a parametrization, ``w + (q(w) - w).detach()``
(forward sees ``q(w)``, the gradient passes to ``w`` unchanged). Activations (optional): ReLU
outputs fake-quantized to unsigned ``bits`` with an EMA range (``ActFakeQuant``), the grid ORT's
static INT8 deploys. ``fake_quantized`` installs both for a training run and then bakes the
weights onto their grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tasks.compression.quantizers import quant_layers, uniform


def quantize_weight(w: Tensor, bits: int) -> Tensor:
    """Symmetric per-output-channel (dim 0) uniform quantization: ``round(w / s) * s``.

    ``s_c = max|w_c| / (2^(bits-1) - 1)``; an all-zero channel stays zero. ``torch.round``
    rounds half to even.
    """
    return uniform(w, bits, symmetric=True)


class FakeQuantWeight(nn.Module):
    """Parametrization ``w -> quantize_weight(w)`` with a straight-through gradient (d/dw = 1)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, w: Tensor) -> Tensor:
        return w + (quantize_weight(w, self.bits) - w).detach()


class ActFakeQuant:
    """Forward hook fake-quantizing a non-negative activation (ReLU output) to ``bits`` unsigned.

    The range is an EMA of the batch maximum, updated in training mode only (as ORT's static
    calibration fixes it at deploy time); gradients pass straight through.
    """

    def __init__(self, bits: int = 8, momentum: float = 0.1):
        self.levels, self.momentum = 2**bits - 1, momentum
        self.max_val: Tensor | None = None

    def __call__(self, module: nn.Module, inputs, out: Tensor) -> Tensor:
        if module.training:
            batch_max = out.detach().max()
            self.max_val = (
                batch_max if self.max_val is None else (1 - self.momentum) * self.max_val + self.momentum * batch_max
            )
        if self.max_val is None or float(self.max_val) <= 0:
            return out
        scale = self.max_val / self.levels
        q = torch.clamp(torch.round(out / scale), 0, self.levels) * scale
        return out + (q - out).detach()


@contextmanager
def fake_quantized(net: nn.Module, bits: int, activations: bool = False) -> Iterator[nn.Module]:
    """``net`` with fake-quantized weights (and ReLU outputs) inside the block; on leaving, the
    activation hooks are removed and the weights baked onto their ``bits``-bit grid."""
    for layer in quant_layers(net):
        parametrize.register_parametrization(layer, "weight", FakeQuantWeight(bits))
    hooks = [m.register_forward_hook(ActFakeQuant()) for m in net.modules() if activations and isinstance(m, nn.ReLU)]
    try:
        yield net
    finally:
        for h in hooks:
            h.remove()
        for layer in quant_layers(net):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
