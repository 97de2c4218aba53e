"""The ``quantize`` step: k-bit fake quantization of the weights, ONNX Runtime INT8 (dynamic / static
QDQ) and quantization-aware training (QAT) followed by static INT8.

Methods (``cfg.method``):

* ``fake_kbit`` - symmetric per-output-channel uniform quantizer on every Conv/Linear weight,
  ``y = round(w / s) * s`` with ``s = max|w_c| / (2^(k-1) - 1)`` and round-half-to-even
  (``torch.round``), so each channel holds at most ``2^k - 1`` distinct values. E.g. with
  ``s = 0.1``, ``-0.02 -> round(-0.2) * 0.1 = 0`` (not ``-0.1``). Biases and BatchNorm stay FP32.
  Returns a torch model (weights replaced by their quantized values); sweep ``bits`` to get
  accuracy vs bits. ``quantizer: uniform | mean | log2`` picks the grid (``tasks/compression/quantizers.py``:
  formulas, references, the size at the bit width); every fake_kbit model is simulated, not deployed.
* ``dynamic_int8`` - ``onnxruntime.quantization.quantize_dynamic`` on the FP32 ONNX
  (``tasks/compression/ort_int8.py``, as ``static_int8``): INT8
  weights, activations quantized on the fly. Measured slower than FP32 for a small Conv1d net.
* ``static_int8`` - ``quantize_static`` in QDQ format, activations calibrated on
  ``calib_batches`` training batches (after ``quant_pre_process``). The fast CPU path.
* ``int4_weight`` - weight-only INT4 of every Linear weight (ORT ``MatMulNBits``, blocks of
  ``int4_block_size`` along K, ``int4_accuracy_level``; ``tasks/compression/int4.py``); activations
  stay FP32. Judged by the same parity gate as INT8.
* ``nncf_int8`` - OpenVINO's own INT8: NNCF post-training quantization of the FP32 ONNX
  (``tasks/compression/nncf_int8.py``; ``nncf_model_type: transformer`` for a transformer), an
  INT8 QDQ ONNX that OpenVINO runs on its INT8 kernels; calibrated on ``calib_batches *
  calib_batch_size`` rows. Needs the nlp extra.
* ``qat`` - fine-tune (the shared loop ``fit``) with fake-quantized weights (per-channel,
  ``bits``; straight-through estimator, Bengio et al. 2013 / Jacob et al. 2018:
  ``tasks/compression/qat.py``) and optionally fake-quantized ReLU outputs, then bake the
  weights onto their grid and deploy via ``static_int8``. The deployed
  artifact is the ORT static INT8 model; ``state_dict`` holds the baked QAT weights. Since
  export folds BatchNorm into Conv by scaling each output channel, and ORT's symmetric
  per-channel INT8 grid scales with the channel, 8-bit QAT weights stay exactly representable.

Embedding tables (``cfg.embedding_bits: 4``, ONNX methods): a ``Gather`` on a weight (a
transformer's word/position embeddings - half of MiniLM's parameters) is stored as asymmetric
4-bit blocks of ``embedding_block_size`` values along the hidden axis, each block with its own
scale (FP32, or FP16 with ``embedding_scale_dtype: float16``) and zero point, by ORT's
``MatMulNBitsQuantizer`` (op ``GatherBlockQuantized``: the looked-up rows are
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

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tasks.compression.int4 import check_int4, int4_weights
from tasks.compression.nncf_int8 import check_model_type, nncf_quantize
from tasks.compression.ort_int8 import ort_quantize, tables_4bit, use_reduce_range
from tasks.compression.qat import fake_quantized
from tasks.compression.quantizers import simulate_kbit
from tasks.core.checks import at_least, positive
from tasks.core.context import StepContext
from tasks.core.options import Calibration, Quantizer, QuantMethod, ReduceRange, Scheduler, TaskKind
from tasks.core.types import Dataset, ModelArtifact
from tasks.evaluation.quality import GateConfig, gate_failures, parity, quality
from tasks.models.build import load_model, make_artifact
from tasks.runtime.onnx import data_onnx, ort_predict, ort_session
from tasks.training.loop import OptimConfig, fit, predict
from tasks.training.losses import ce_loss

MEASURES = True  # INT8 accuracy and parity depend on the CPU's kernels: the cache key holds the hardware

METHODS = ("fake_kbit", "dynamic_int8", "static_int8", "qat", "int4_weight", "nncf_int8")
EMBEDDING_4BIT_METHODS = ("dynamic_int8", "static_int8", "int4_weight", "nncf_int8")
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
    embedding_scale_dtype: str = "float32"  # the 4-bit blocks' scales: float32 | float16 (half their bytes)
    nncf_model_type: str = ""  # nncf_int8: '' or 'transformer' (NNCF's transformer preset, nncf_int8.py)
    reduce_range: ReduceRange = ReduceRange.auto  # ORT weights on 7 bits; auto: the key's CPU is x86 without VNNI/AMX
    int4_block_size: int = 16  # int4_weight: values per 4-bit block along K (a power of 2 >= 16)
    int4_accuracy_level: int = 4  # int4_weight: MatMulNBits compute type (0 unset, 1 fp32, 4 int8)
    int4_symmetric: bool = False  # int4_weight: True = no zero points (tasks/compression/int4.py)
    threads: int = 1  # ORT intra-op threads for the quality evaluation
    eval_batch_size: int = 1024
    gate: GateConfig = field(default_factory=GateConfig)  # parity of the ORT model with its reference
    # fake_kbit weight quantizer and its knobs (tasks/compression/quantizers.py)
    quantizer: Quantizer = Quantizer.uniform
    symmetric: bool = True  # uniform only: grid symmetric around 0, or spanning [min, max]
    clip_std: float = 3.0  # mean only: clip at mean +- clip_std * std

    def __post_init__(self) -> None:
        _check_values(self)
        at_least("threads", self.threads, 1)
        at_least("eval_batch_size", self.eval_batch_size, 1)
        positive("clip_std", self.clip_std)


def _check_values(cfg: QuantizeConfig) -> None:
    """The settings on their own (``QuantizeConfig.__post_init__``: checked at validation)."""
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
    if cfg.embedding_bits == 4 and cfg.method not in EMBEDDING_4BIT_METHODS:
        raise ValueError(f"quantize.embedding_bits: 4 is for {', '.join(EMBEDDING_4BIT_METHODS)}, not {cfg.method}")
    if cfg.embedding_scale_dtype not in ("float32", "float16"):
        raise ValueError(f"quantize.embedding_scale_dtype: '{cfg.embedding_scale_dtype}' (float32 or float16)")
    check_model_type(cfg.nncf_model_type)
    check_int4(cfg.int4_block_size, cfg.int4_accuracy_level)
    bs = cfg.embedding_block_size
    if bs < 16 or bs & (bs - 1):
        raise ValueError(f"quantize.embedding_block_size: {bs} is not a power of 2 >= 16")


def _validate(model: ModelArtifact, data: Dataset, cfg: QuantizeConfig) -> None:
    """The settings against the inputs (the settings alone were checked when ``cfg`` was built)."""
    if model.kind == "quantized":
        raise ValueError(f"model '{model.name}' is already quantized (kind=quantized); quantize its parent")
    if cfg.method == "qat" and data.task != TaskKind.classification:
        raise ValueError(f"quantize.method: qat needs labels (a classification data set), '{data.name}' is {data.task}")


def _qat_finetune(net: nn.Module, data: Dataset, cfg: QuantizeConfig, ctx: StepContext) -> dict:
    """Fine-tune ``net`` in place with fake-quantized weights (and ReLU outputs), then bake the weights."""
    with fake_quantized(net, cfg.bits, cfg.qat_activations):
        val = (data.x_val, data.y_val)
        return fit(net, data.x_train, (data.y_train,), loss_fn=ce_loss, cfg=cfg.optim, ctx=ctx, val=val, prefix="qat_")


def _quality(data: Dataset, out: Tensor, ref: Tensor) -> dict[str, float]:
    """The kind's quality of outputs on the validation rows (``val_acc`` or the embedding metrics)."""
    if data.task == TaskKind.classification:
        return {"val_acc": quality(data.task, out, labels=data.y_val)["acc"]}
    return quality(data.task, out, reference=ref)


def _gate(data: Dataset, out: Tensor, ref: Tensor, cfg: QuantizeConfig, ctx: StepContext) -> dict[str, float]:
    """``parity_*`` figures of the ORT outputs vs the reference, and ``rejected`` (1 if the gate fails)."""
    labels = data.y_val if data.task == TaskKind.classification else None
    stats = parity(data.task, out, ref, labels)
    failed = gate_failures(data.task, stats, cfg.gate)
    if failed:
        ctx.note(f"parity gate: rejected ({', '.join(failed)} on {len(ref)} held-out rows)")
    return {**{f"parity_{k}": v for k, v in stats.items()}, "rejected": float(bool(failed))}


def _deploy(fp32: bytes, calib: Tensor, cfg: QuantizeConfig, seed: int) -> bytes:
    """The deployed ONNX: weight-only INT4 (``tasks/compression/int4.py``), NNCF INT8 or ORT INT8."""
    if cfg.method == "nncf_int8":
        return nncf_quantize(fp32, calib, cfg, seed)
    if cfg.method == "int4_weight":
        int4 = int4_weights(fp32, cfg.int4_block_size, cfg.int4_accuracy_level, cfg.int4_symmetric)
        return tables_4bit(int4, cfg) if cfg.embedding_bits == 4 else int4
    return ort_quantize(fp32, calib, cfg, seed, static=cfg.method != "dynamic_int8")


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
        onnx_bytes = _deploy(fp32, calib, cfg, ctx.seed)
        out = torch.from_numpy(ort_predict(ort_session(onnx_bytes, cfg.threads), data.x_val, cfg.eval_batch_size))
        metrics.update(
            _quality(data, out, fp32_out), size_bytes=float(len(onnx_bytes)), fp32_size_bytes=float(len(fp32))
        )
        metrics.update(_gate(data, out, reference, cfg, ctx))
        metrics["reduce_range"] = float(use_reduce_range(cfg.reduce_range))
    if classify:
        metrics["val_acc_delta"] = metrics["val_acc"] - metrics["fp32_val_acc"]
    ctx.log_metrics(metrics)
    return make_artifact(
        net, model.arch, name=ctx.step, kind="quantized", parent=model.name, metrics=metrics, onnx=onnx_bytes
    )
