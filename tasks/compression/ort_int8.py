"""ONNX Runtime INT8 quantization (the ``quantize`` methods ``dynamic_int8``, ``static_int8`` and
the deployment of ``qat``): FP32 ONNX bytes in, INT8 ONNX bytes out.

* dynamic: ``onnxruntime.quantization.quantize_dynamic`` (INT8 weights, activations quantized on
  the fly).
* static: ``quantize_static`` in QDQ format, activation ranges calibrated on seeded random
  batches of the calibration rows (every graph input fed, ``ort_feed``), after
  ``quant_pre_process``.
* ``reduce_range`` (``use_reduce_range``): weights on 7 bits instead of 8. ORT's x86 INT8 kernels
  multiply u8 activations by s8 weights; without VNNI/AMX they use ``VPMADDUBSW``, which adds two
  u8 x s8 products into an int16 that saturates (255 * 127 * 2 > 32767), so the same model's
  outputs differ by CPU (ORT's quantization docs). With 7-bit weights the sum fits. ``auto`` turns
  it on exactly where the CPU of the step's cache key (the node it runs on, checked by the worker)
  lacks VNNI/AMX.
* ``embedding_bits: 4``: every Gather on a weight (an embedding table) first becomes
  ``GatherBlockQuantized``: asymmetric 4-bit blocks along the hidden axis (ORT's
  ``MatMulNBitsQuantizer``), block scales in FP32 or FP16 (``embedding_scale_dtype``).

``onnx`` and ``onnxruntime`` are imported inside the functions, never at import.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from tasks.runtime.onnx import ort_feed, ort_session


class OrtQuantOptions(Protocol):
    """What ``ort_quantize`` reads of a config (the quantize step's ``QuantizeConfig`` has all of it)."""

    @property
    def calibration(self) -> str: ...
    @property
    def calib_batches(self) -> int: ...
    @property
    def calib_batch_size(self) -> int: ...
    @property
    def per_channel(self) -> bool: ...
    @property
    def preprocess(self) -> bool: ...
    @property
    def op_types(self) -> Sequence[str]: ...
    @property
    def embedding_bits(self) -> int: ...
    @property
    def embedding_block_size(self) -> int: ...
    @property
    def embedding_scale_dtype(self) -> str: ...
    @property
    def reduce_range(self) -> str: ...


def use_reduce_range(setting: str, fp: dict | None = None) -> bool:
    """``on``/``off``, or for ``auto``: on for an x86 CPU without VNNI/AMX-INT8 (its u8 x s8 kernels
    can saturate), off elsewhere (VNNI/AMX x86 CPUs, Arm). The CPU is that of the hardware
    fingerprint ``fp``, by default the one the running step's cache key holds
    (``tasks.runtime.hardware.keyed``), never merely the CPU this code happens to run on."""
    from tasks.runtime.hardware import has_vnni, is_x86, keyed

    if setting != "auto":
        return setting == "on"
    fp = fp or keyed()
    return is_x86(fp) and not has_vnni(fp)


def _calib_reader(feeds: list[dict]) -> Any:
    """An ORT ``CalibrationDataReader`` yielding the prepared feed dicts (every graph input), then ``None``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict | None:
            if self.i >= len(feeds):
                return None
            self.i += 1
            return feeds[self.i - 1]

        def rewind(self) -> None:
            self.i = 0

    return Reader()


def calib_rows(x: Tensor, cfg: OrtQuantOptions, seed: int) -> Tensor:
    """The calibration rows: ``calib_batches * calib_batch_size`` rows of ``x`` drawn with the seed."""
    n = min(len(x), cfg.calib_batches * cfg.calib_batch_size)
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def _calib_feeds(fp32: bytes, x: Tensor, cfg: OrtQuantOptions, seed: int) -> list[dict]:
    """``calib_batches`` random batches of ``x`` (seeded) as feed dicts of the FP32 graph's inputs."""
    rows, size = calib_rows(x, cfg, seed), cfg.calib_batch_size
    session = ort_session(fp32, threads=1)
    return [ort_feed(session, rows[i : i + size]) for i in range(0, len(rows), size)]


def _preprocess(src: Path, dst: Path) -> Path:
    """ORT's ``quant_pre_process``. Its symbolic shape inference cannot follow a transformer's
    dynamic sequence axis (``Incomplete symbolic shape inference``), and that failure leaves a
    ``<uuid>.data`` file in the working directory: multi-input graphs skip it up front (ONNX
    shape inference only); any other graph falls back to the same on failure."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    multi_input = len(onnx.load(str(src), load_external_data=False).graph.input) > 1
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=multi_input)
    except Exception:  # noqa: BLE001 - ORT raises a bare Exception for this
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def _fp16_scales(model: Any) -> None:
    """Each ``GatherBlockQuantized`` keeps its block scales in FP16 and casts the rows it looks up
    back to FP32 (its output type is its scales' type): half the bytes of the scales."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type == "GatherBlockQuantized":
            scales = inits[node.input[2]]
            scales.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scales).astype(np.float16), scales.name))
            out = node.output[0]
            node.output[0] = f"{out}_fp16"
            nodes.append(
                helper.make_node("Cast", [f"{out}_fp16"], [out], to=TensorProto.FLOAT, name=f"{node.name}_fp32")
            )
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def embeddings_4bit(src: Path, dst: Path, block_size: int, scale_dtype: str = "float32") -> Path:
    """Every Gather on a weight as ``GatherBlockQuantized``: asymmetric 4-bit blocks of
    ``block_size`` along the hidden axis (ORT's ``MatMulNBitsQuantizer``, Gather only), scales in
    ``scale_dtype`` (``float32`` or ``float16``). The graph keeps its ``ai.onnx`` opset: the
    quantizer raises it to 21 for the int4 type (an IR-version matter), and at opset 21 ORT's
    graph optimizer rebuilds a QDQ graph's ``QuantizeLinear`` nodes into ones it then refuses."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    opsets = {o.domain: o.version for o in model.opset_import}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    tables = [n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in weights]
    if not tables:
        raise ValueError("quantize.embedding_bits: 4, but the model has no embedding table (a Gather on a weight)")
    for name in tables:  # OpenVINO refuses a table whose width is not a whole number of blocks
        if weights[name][-1] % block_size:
            width = weights[name][-1]
            raise ValueError(f"quantize.embedding_block_size: {block_size} does not divide '{name}' (width {width})")
    conf = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=False,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=conf)
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it warns that it raises the opset (undone below)
    try:  # an all-zero block (a padding row) has scale 0: ORT divides by it before masking
        with np.errstate(divide="ignore", invalid="ignore"):
            quantizer.process()
    finally:
        logger.setLevel(level)
    out = quantizer.model.model
    for opset in out.opset_import:
        opset.version = opsets.get(opset.domain, opset.version)
    if scale_dtype == "float16":
        _fp16_scales(out)
    onnx.save(out, str(dst))
    return dst


def tables_4bit(onnx_bytes: bytes, cfg: OrtQuantOptions) -> bytes:
    """``embeddings_4bit`` of a quantized model's remaining FP32 tables (NNCF INT8, weight-only INT4)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(onnx_bytes)
        dst = Path(tmp) / "emb4.onnx"
        return embeddings_4bit(src, dst, cfg.embedding_block_size, cfg.embedding_scale_dtype).read_bytes()


def _quantize_file(src: Path, out: Path, fp32: bytes, x_calib: Tensor, cfg: OrtQuantOptions, seed: int, static: bool):
    """ORT's ``quantize_static`` (QDQ, calibrated on ``x_calib``) or ``quantize_dynamic`` of ``src`` to ``out``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    op_types = list(cfg.op_types) or None
    if not static:
        quantize_dynamic(
            str(src),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=cfg.per_channel,
            reduce_range=use_reduce_range(cfg.reduce_range),
            op_types_to_quantize=op_types,
        )
        return
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.calibration]
    quantize_static(
        str(src),
        str(out),
        _calib_reader(_calib_feeds(fp32, x_calib, cfg, seed)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        per_channel=cfg.per_channel,
        reduce_range=use_reduce_range(cfg.reduce_range),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
    )


def ort_quantize(fp32: bytes, x_calib: Tensor, cfg: OrtQuantOptions, seed: int, static: bool) -> bytes:
    """INT8 ONNX from FP32 ONNX bytes with ORT (static QDQ with calibration, or dynamic)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        if cfg.preprocess:
            src = _preprocess(src, Path(tmp) / "pre.onnx")
        if cfg.embedding_bits == 4:
            src = embeddings_4bit(src, Path(tmp) / "emb4.onnx", cfg.embedding_block_size, cfg.embedding_scale_dtype)
        _quantize_file(src, out, fp32, x_calib, cfg, seed, static)
        return out.read_bytes()
