"""The three weight quantizers of ``quantize.method: fake_kbit``: uniform, mean/std and log2.

Each maps a weight tensor to the values a ``bits``-bit code can hold, per output channel (dim 0),
and returns them in float ("fake" quantization: the accuracy is that of the quantized weights, the
arithmetic stays FP32). Formulas, for one channel ``w`` with ``L = 2^bits``:

* ``uniform`` (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference"):
  symmetric ``s = max|w| / (2^(bits-1) - 1)``, ``y = clamp(round(w / s), -(2^(bits-1)-1), 2^(bits-1)-1) * s``;
  asymmetric ``s = (max w - min w) / (L - 1)``, ``z = round(-min w / s)``,
  ``y = (clamp(round(w / s) + z, 0, L - 1) - z) * s``.
* ``mean`` (clip at the mean +- k standard deviations, as in Lin, Talathi & Annapureddy 2016,
  "Fixed Point Quantization of Deep Convolutional Networks", and Banner et al. 2019, "Post training
  4-bit quantization of convolutional networks for rapid-deployment", ACIQ):
  ``lo = mu - k*sigma``, ``s = 2*k*sigma / (L - 1)``, ``y = lo + clamp(round((w - lo) / s), 0, L - 1) * s``.
  Outliers beyond ``k`` sigma are clipped; the grid is spent where the weights are.
* ``log2`` (Miyashita, Lee & Murmann 2016, "Convolutional Neural Networks using Logarithmic Data
  Representation"; Zhou et al. 2017, "Incremental Network Quantization"):
  ``e = round(log2|w|)``, ``e_max = round(log2 max|w|)``, ``n = 2^(bits-1) - 1`` exponents
  ``e_max - n + 1 .. e_max``; ``y = sign(w) * 2^min(e, e_max)`` if ``e >= e_max - n + 1`` else 0.
  Sign, ``n`` exponents and zero make ``2n + 1 = L - 1`` codes. Multiplying by a power of two is a
  shift on hardware that has it.

``torch.round`` rounds half to even. An all-zero channel (or one with ``sigma = 0`` for ``mean``)
stays as it is.

Deployment: ONNX Runtime runs integer kernels for the uniform 8-bit grid only (the ``static_int8``
and ``qat`` paths); every ``fake_kbit`` model is a simulation whose size is computed at its bit
width (``bit_size_bytes``) and whose speed is that of FP32, so none is reported as deployed.
Activations: ``fake_kbit`` quantizes weights only (a torch artifact cannot carry activation hooks);
QAT's activation fake-quant stays uniform uint8 because that is the grid ORT's static INT8 deploys.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from tasks.core.options import Quantizer

# FP32 numbers stored per output channel next to the codes (scale; zero point / offset)
CHANNEL_PARAMS = {("uniform", True): 1, ("uniform", False): 2, ("mean", True): 2, ("log2", True): 1}


def _per_channel(w: Tensor) -> Tensor:
    return w.detach().reshape(w.shape[0], -1)


def _bcast(v: Tensor, w: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (w.dim() - 1)))


def uniform(w: Tensor, bits: int, symmetric: bool = True) -> Tensor:
    """Uniform grid, per output channel: symmetric around 0 or spanning [min, max] (module docstring)."""
    flat = _per_channel(w)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = flat.abs().amax(dim=1)
        scale = _bcast(torch.where(amax > 0, amax / qmax, torch.ones_like(amax)), w)
        return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    levels = 2**bits - 1
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = hi - lo
    scale = _bcast(torch.where(span > 0, span / levels, torch.ones_like(span)), w)
    zero = torch.round(-_bcast(lo, w) / scale)
    return (torch.clamp(torch.round(w / scale) + zero, 0, levels) - zero) * scale


def mean_std(w: Tensor, bits: int, k: float = 3.0) -> Tensor:
    """``2^bits`` uniform levels over ``mean +- k * std`` of each output channel (module docstring)."""
    flat = _per_channel(w)
    mu = flat.mean(dim=1)
    sigma = flat.std(dim=1, unbiased=False) if flat.shape[1] > 1 else torch.zeros_like(mu)
    levels = 2**bits - 1
    lo = _bcast(mu - k * sigma, w)
    scale = _bcast(2 * k * sigma / levels, w)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = lo + torch.clamp(torch.round((w - lo) / safe), 0, levels) * safe
    return torch.where(scale > 0, q, w)


def log2(w: Tensor, bits: int) -> Tensor:
    """Power-of-two levels ``sign * 2^e`` over ``2^(bits-1) - 1`` exponents below the channel's top (docstring)."""
    n = 2 ** (bits - 1) - 1
    amax = _bcast(_per_channel(w).abs().amax(dim=1), w)
    e_max = torch.round(torch.log2(torch.where(amax > 0, amax, torch.ones_like(amax))))
    mag = w.abs()
    e = torch.round(torch.log2(torch.where(mag > 0, mag, torch.ones_like(mag))))
    keep = (mag > 0) & (e >= e_max - n + 1)
    return torch.where(keep, torch.sign(w) * torch.exp2(torch.minimum(e, e_max)), torch.zeros_like(w))


def quantize_tensor(w: Tensor, kind: str, bits: int, *, symmetric: bool = True, k: float = 3.0) -> Tensor:
    """``w`` quantized by the quantizer ``kind`` (a ``Quantizer`` value) at ``bits`` bits."""
    if kind == Quantizer.uniform:
        return uniform(w, bits, symmetric)
    if kind == Quantizer.mean:
        return mean_std(w, bits, k)
    if kind == Quantizer.log2:
        return log2(w, bits)
    raise ValueError(f"quantize.quantizer: unknown value '{kind}' ({' | '.join(q.value for q in Quantizer)})")


def quant_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose weights are quantized: every Conv1d/2d/3d and Linear."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]


def quantize_model(model: nn.Module, kind: str, bits: int, *, symmetric: bool = True, k: float = 3.0) -> dict:
    """Replace every Conv/Linear weight in place by its quantized value; returns size figures.

    ``bit_size_bytes`` is what the weights would take stored at their bit width:
    ``ceil(quantized weights * bits / 8)`` + 4 bytes per per-channel FP32 number (scale, zero point or
    offset) + 4 bytes per other parameter/buffer value (biases, BatchNorm) - a computed figure, not a
    file that ONNX Runtime runs.
    """
    symmetric = symmetric or kind != Quantizer.uniform
    quantized, channels, total = 0, 0, 0
    with torch.no_grad():
        for layer in quant_layers(model):
            weight = cast(Tensor, layer.weight)
            weight.copy_(quantize_tensor(weight, kind, bits, symmetric=symmetric, k=k))
            quantized, channels = quantized + weight.numel(), channels + weight.shape[0]
    total = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    per_channel = CHANNEL_PARAMS[(str(kind), symmetric)]
    size = math.ceil(quantized * bits / 8) + 4 * per_channel * channels + 4 * (total - quantized)
    return {"bit_size_bytes": float(size), "fp32_weight_bytes": float(4 * total), "quantized_weights": float(quantized)}


# metrics are numbers: the quantizer a fake_kbit artifact used is recorded as this code
QUANTIZER_CODES = {"uniform": 0.0, "mean": 1.0, "log2": 2.0}


def simulate_kbit(model: nn.Module, cfg) -> dict[str, float]:
    """``fake_kbit`` with ``cfg.quantizer`` (a ``QuantizeConfig``): quantize ``model`` in place.

    Returns the metrics that say what the artifact is: the quantizer (``quantizer_code``, see
    ``QUANTIZER_CODES``), ``symmetric``, ``clip_std``, the size at the bit width
    (``bit_size_bytes``) and ``simulated = 1``: no ONNX Runtime integer kernel runs it, so no
    speed is claimed for it.
    """
    if cfg.clip_std <= 0:
        raise ValueError(f"quantize.clip_std: must be > 0, got {cfg.clip_std}")
    kind = str(cfg.quantizer)
    if kind not in QUANTIZER_CODES:
        raise ValueError(f"quantize.quantizer: unknown value '{kind}' ({' | '.join(QUANTIZER_CODES)})")
    sizes = quantize_model(model, kind, cfg.bits, symmetric=cfg.symmetric, k=cfg.clip_std)
    return {
        **sizes,
        "quantizer_code": QUANTIZER_CODES[kind],
        "symmetric": float(cfg.symmetric or kind != "uniform"),
        "clip_std": float(cfg.clip_std),
        "simulated": 1.0,
    }
