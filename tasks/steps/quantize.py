"""Task ``quantize``: k-bit fake quantization of the weights, ONNX Runtime INT8 (dynamic / static
QDQ) and quantization-aware training (QAT) followed by static INT8.

Methods (``cfg.method``):

* ``fake_kbit`` - symmetric per-output-channel uniform quantizer on every Conv/Linear weight,
  ``y = round(w / s) * s`` with ``s = max|w_c| / (2^(k-1) - 1)`` and round-half-to-even
  (``torch.round``), so each channel holds at most ``2^k - 1`` distinct values. E.g. with
  ``s = 0.1``, ``-0.02 -> round(-0.2) * 0.1 = 0`` (not ``-0.1``). Biases and BatchNorm stay FP32.
  Returns a torch model (weights replaced by their quantized values); sweep ``bits`` to get
  accuracy vs bits. ``quantizer: uniform | mean | log2`` picks the grid (``tasks/compression/quantizers.py``:
  formulas, references, the size at the bit width); every fake_kbit model is simulated, not deployed.
* ``dynamic_int8`` - ``onnxruntime.quantization.quantize_dynamic`` on the FP32 ONNX: INT8
  weights, activations quantized on the fly. Measured slower than FP32 for a small Conv1d net.
* ``static_int8`` - ``quantize_static`` in QDQ format, activations calibrated on
  ``calib_batches`` training batches (after ``quant_pre_process``). The fast CPU path.
* ``qat`` - fine-tune with fake-quantized weights (per-channel, ``bits``; straight-through
  estimator, Bengio et al. 2013 / Jacob et al. 2018) and optionally fake-quantized ReLU
  outputs, then bake the weights onto their grid and deploy via ``static_int8``. The deployed
  artifact is the ORT static INT8 model; ``state_dict`` holds the baked QAT weights. Since
  export folds BatchNorm into Conv by scaling each output channel, and ORT's symmetric
  per-channel INT8 grid scales with the channel, 8-bit QAT weights stay exactly representable.

Embedding tables (``cfg.embedding_bits: 4``, ORT methods): a ``Gather`` on a weight (a
transformer's word/position embeddings - half of MiniLM's parameters) is stored as asymmetric
4-bit blocks of ``embedding_block_size`` values along the hidden axis, each block with its own
scale and zero point, by ORT's ``MatMulNBitsQuantizer`` (op ``GatherBlockQuantized``: the looked-up rows are
dequantized at run time, so the model is this small on disk and in memory, not simulated). The
rest is then quantized to INT8 as usual. A lookup does no arithmetic, so the table's bits cost
no speed. On MiniLM, asymmetric blocks of 16 keep the cosine to FP32 where plain dynamic INT8 has
it (evaluation mean/min 0.9917/0.9781 vs 0.9925/0.9782); symmetric blocks of 16 fall to a
worst sentence of 0.967-0.974, blocks of 32 or more lose more.

ONNX methods store the INT8 model in ``ModelArtifact.onnx`` and keep FP32 weights in
``state_dict`` (so params/FLOPs can still be counted); quality is measured with ORT.

Parity gate (``cfg.gate``, ``tasks.evaluation.quality``): the INT8 model's ORT outputs on the held-out
validation rows are compared with its reference - the torch model it was made from (FP32, or for
``qat`` the fake-quant simulation with baked weights). A model that misses the bounds is returned
with ``metrics["rejected"] = 1`` and its ``parity_*`` figures, so benchmark and report show why and
selection never takes it. (ORT static QDQ with default settings quietly destroys a transformer's
embeddings - cosine ~0.5 - this is what the gate is for.)

Task kinds: ``classification`` reports ``val_acc`` (and its delta to FP32); ``embedding`` reports
the reference-agreement metrics (``cos_mean``, ``cos_min``, ``top1_agree``, ``top5_agree``) on the
validation rows. Multi-input models are calibrated and evaluated with all their inputs
(``ort_feed``); calibration reads ``data.x_calib`` when the data set holds one.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tasks.compression.quantizers import quant_layers, simulate_kbit, uniform
from tasks.core.context import StepContext
from tasks.core.options import Calibration, Quantizer, QuantMethod, Scheduler, TaskKind
from tasks.core.types import Dataset, ModelArtifact
from tasks.evaluation.quality import GateConfig, gate_failures, parity, quality
from tasks.models.build import load_model, make_artifact
from tasks.runtime.onnx import data_onnx, ort_feed, ort_predict, ort_session
from tasks.training.loop import OptimConfig, ce_loss, fit, predict

METHODS = ("fake_kbit", "dynamic_int8", "static_int8", "qat")
CALIBRATIONS = ("minmax", "entropy", "percentile")


@dataclass
class QuantizeConfig:
    method: QuantMethod = QuantMethod.static_int8
    bits: int = 8  # weight bits for fake_kbit and qat (2..8)
    per_channel: bool = True  # static_int8 / qat: per-output-channel weight scales in ORT
    calib_batches: int = 8  # training batches used to calibrate activation ranges
    calib_batch_size: int = 128
    calibration: Calibration = Calibration.minmax
    preprocess: bool = True  # run ORT's quant_pre_process (shape inference + graph optimization)
    qat_activations: bool = False  # qat: also fake-quantize ReLU outputs to uint8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=3, lr=5e-4, scheduler=Scheduler.cosine))
    op_types: list[str] = field(default_factory=list)  # ORT op types to quantize ([] = all it supports)
    embedding_bits: int = 8  # 4: embedding tables (Gather on a weight) as 4-bit blocks (see module doc)
    embedding_block_size: int = 16  # values per 4-bit block (a power of 2, >= 16)
    threads: int = 1  # ORT intra-op threads for the quality evaluation
    eval_batch_size: int = 1024
    gate: GateConfig = field(default_factory=GateConfig)  # parity of the ORT model with its reference
    # fake_kbit weight quantizer and its knobs (tasks/compression/quantizers.py)
    quantizer: Quantizer = Quantizer.uniform
    symmetric: bool = True  # uniform only: grid symmetric around 0, or spanning [min, max]
    clip_std: float = 3.0  # mean only: clip at mean +- clip_std * std


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


class _CalibReader(CalibrationDataReader):
    """ORT ``CalibrationDataReader``: yields the prepared feed dicts (every graph input), then ``None``."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def _calib_feeds(fp32: bytes, x: Tensor, cfg: QuantizeConfig, seed: int) -> list[dict]:
    """``calib_batches`` random batches of ``x`` (seeded) as feed dicts of the FP32 graph's inputs."""
    n = min(len(x), cfg.calib_batches * cfg.calib_batch_size)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    session = ort_session(fp32, threads=1)
    return [ort_feed(session, x[idx[i : i + cfg.calib_batch_size]]) for i in range(0, n, cfg.calib_batch_size)]


def _preprocess(src: Path, dst: Path) -> Path:
    """ORT's ``quant_pre_process``. Its symbolic shape inference cannot follow a transformer's
    dynamic sequence axis (``Incomplete symbolic shape inference``), and that failure leaves a
    ``<uuid>.data`` file in the working directory: multi-input graphs skip it up front (ONNX
    shape inference only); any other graph falls back to the same on failure."""
    multi_input = len(onnx.load(str(src), load_external_data=False).graph.input) > 1
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=multi_input)
    except Exception:  # noqa: BLE001 - ORT raises a bare Exception for this
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def _embeddings_4bit(src: Path, dst: Path, block_size: int) -> Path:
    """Every Gather on a weight as ``GatherBlockQuantized``: asymmetric 4-bit blocks of
    ``block_size`` along the hidden axis (ORT's ``MatMulNBitsQuantizer``, Gather only)."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    weights = {i.name for i in model.graph.initializer}
    if not any(n.op_type == "Gather" and n.input[0] in weights for n in model.graph.node):
        raise ValueError("quantize.embedding_bits: 4, but the model has no embedding table (a Gather on a weight)")
    conf = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=False,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=conf)
    # it warns that it raises the opset to 21 for the int4 type: expected, and the gate checks the result
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:  # an all-zero block (a padding row) has scale 0: ORT divides by it before masking
        with np.errstate(divide="ignore", invalid="ignore"):
            quantizer.process()
    finally:
        logger.setLevel(level)
    quantizer.model.save_model_to_file(str(dst), False)
    return dst


def ort_quantize(fp32: bytes, x_calib: Tensor, cfg: QuantizeConfig, seed: int, static: bool) -> bytes:
    """INT8 ONNX from FP32 ONNX bytes with ORT (static QDQ with calibration, or dynamic)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        if cfg.preprocess:
            src = _preprocess(src, Path(tmp) / "pre.onnx")
        if cfg.embedding_bits == 4:
            src = _embeddings_4bit(src, Path(tmp) / "emb4.onnx", cfg.embedding_block_size)
        if static:
            method = {
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[cfg.calibration]
            quantize_static(
                str(src),
                str(out),
                _CalibReader(_calib_feeds(fp32, x_calib, cfg, seed)),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(cfg.op_types) or None,
                per_channel=cfg.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )
        else:
            quantize_dynamic(
                str(src),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=cfg.per_channel,
                op_types_to_quantize=list(cfg.op_types) or None,
            )
        return out.read_bytes()


def _validate(model: ModelArtifact, data: Dataset, cfg: QuantizeConfig) -> None:
    if cfg.method not in METHODS:
        raise ValueError(f"quantize.method: unknown value '{cfg.method}' ({' | '.join(METHODS)})")
    if cfg.method in ("fake_kbit", "qat") and not 2 <= cfg.bits <= 8:
        raise ValueError(f"quantize.bits: {cfg.bits} is outside 2..8")
    if cfg.calibration not in CALIBRATIONS:
        raise ValueError(f"quantize.calibration: unknown value '{cfg.calibration}' ({' | '.join(CALIBRATIONS)})")
    if cfg.calib_batches < 1 or cfg.calib_batch_size < 1:
        raise ValueError(
            f"quantize.calib_batches/calib_batch_size must be >= 1, got {cfg.calib_batches}/{cfg.calib_batch_size}"
        )
    if cfg.quantizer != Quantizer.uniform and cfg.method != "fake_kbit":
        raise ValueError(
            f"quantize.quantizer: '{cfg.quantizer}' is for fake_kbit only ({cfg.method} deploys ORT's uniform INT8)"
        )
    if cfg.embedding_bits not in (4, 8):
        raise ValueError(f"quantize.embedding_bits: {cfg.embedding_bits} (4 or 8)")
    if cfg.embedding_bits == 4 and cfg.method not in ("dynamic_int8", "static_int8"):
        raise ValueError(f"quantize.embedding_bits: 4 is for dynamic_int8 and static_int8, not {cfg.method}")
    bs = cfg.embedding_block_size
    if bs < 16 or bs & (bs - 1):
        raise ValueError(f"quantize.embedding_block_size: {bs} is not a power of 2 >= 16")
    if model.kind == "quantized":
        raise ValueError(f"model '{model.name}' is already quantized (kind=quantized); quantize its parent")
    if cfg.method == "qat" and data.task != TaskKind.classification:
        raise ValueError(f"quantize.method: qat needs labels (a classification data set), '{data.name}' is {data.task}")


def _qat_finetune(net: nn.Module, data: Dataset, cfg: QuantizeConfig, ctx: StepContext) -> dict:
    """Fine-tune ``net`` in place with fake-quantized weights (and ReLU outputs), then bake the weights."""
    for layer in quant_layers(net):
        parametrize.register_parametrization(layer, "weight", FakeQuantWeight(cfg.bits))
    hooks = [
        m.register_forward_hook(ActFakeQuant()) for m in net.modules() if cfg.qat_activations and isinstance(m, nn.ReLU)
    ]
    best = fit(
        net,
        data.x_train,
        (data.y_train,),
        loss_fn=ce_loss,
        cfg=cfg.optim,
        ctx=ctx,
        val=(data.x_val, data.y_val),
        prefix="qat_",
    )
    for h in hooks:
        h.remove()
    for layer in quant_layers(net):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return best


def _quality(data: Dataset, out: Tensor, ref: Tensor) -> dict[str, float]:
    """The kind's quality of outputs on the validation rows (``val_acc`` or the embedding metrics)."""
    if data.task == TaskKind.classification:
        return {"val_acc": quality(data.task, out, labels=data.y_val)["acc"]}
    return quality(data.task, out, reference=ref)


def _gate(data: Dataset, out: Tensor, ref: Tensor, cfg: QuantizeConfig, ctx: StepContext) -> dict[str, float]:
    """``parity_*`` figures of the ORT outputs vs the reference, and ``rejected`` (1 if the gate fails)."""
    stats = parity(data.task, out, ref)
    failed = gate_failures(data.task, stats, cfg.gate)
    if failed:
        ctx.note(f"parity gate: rejected ({', '.join(failed)} on {len(ref)} held-out rows)")
    return {**{f"parity_{k}": v for k, v in stats.items()}, "rejected": float(bool(failed))}


def run(model: ModelArtifact, data: Dataset, *, cfg: QuantizeConfig, ctx: StepContext) -> ModelArtifact:
    """Quantize ``model`` with ``cfg.method``; returns a ``quantized`` artifact whose parent is ``model``."""
    _validate(model, data, cfg)
    ctx.seed_everything()
    net = load_model(model, ctx.trusted_targets)
    fp32_out = predict(net, data.x_val, cfg.eval_batch_size)
    classify = data.task == TaskKind.classification
    metrics: dict[str, float] = {"fp32_val_acc": _quality(data, fp32_out, fp32_out)["val_acc"]} if classify else {}
    onnx_bytes = None
    if cfg.method == "fake_kbit":
        metrics.update(simulate_kbit(net, cfg))
        metrics.update(_quality(data, predict(net, data.x_val, cfg.eval_batch_size), fp32_out), bits=float(cfg.bits))
    else:
        if cfg.method == "qat":
            metrics["qat_best_val_acc"] = _qat_finetune(net, data, cfg, ctx)["val_acc"]
            metrics["bits"] = float(cfg.bits)
        reference = fp32_out if cfg.method != "qat" else predict(net, data.x_val, cfg.eval_batch_size)
        fp32 = model.onnx if (model.onnx is not None and cfg.method != "qat") else data_onnx(net, data)
        calib = data.x_calib if data.x_calib is not None and len(data.x_calib) else data.x_train
        onnx_bytes = ort_quantize(fp32, calib, cfg, ctx.seed, static=cfg.method != "dynamic_int8")
        out = torch.from_numpy(ort_predict(ort_session(onnx_bytes, cfg.threads), data.x_val, cfg.eval_batch_size))
        metrics.update(
            _quality(data, out, fp32_out), size_bytes=float(len(onnx_bytes)), fp32_size_bytes=float(len(fp32))
        )
        metrics.update(_gate(data, out, reference, cfg, ctx))
    if classify:
        metrics["val_acc_delta"] = metrics["val_acc"] - metrics["fp32_val_acc"]
    ctx.log_metrics(metrics)
    return make_artifact(
        net, model.arch, name=ctx.step, kind="quantized", parent=model.name, metrics=metrics, onnx=onnx_bytes
    )
