"""Weight-only INT4 for a transformer's linear layers (the ``quantize`` method ``int4_weight``):
FP32 ONNX bytes in, ONNX with ``MatMulNBits`` out.

Every ``MatMul`` whose second input is a weight (an initializer: the ``Linear`` layers of an
exported encoder - Q/K/V, attention output, the two FFN matrices, a classification head) becomes
ONNX Runtime's contrib op ``MatMulNBits``: the weight is stored as 4-bit integers in blocks of
``block_size`` values along the input (K) axis, each block with its own FP32 scale (and a 4-bit
zero point when ``symmetric`` is false); activations stay FP32. ``accuracy_level`` sets the
compute type of the product (ORT: 0 = unset, 1 = FP32, 2 = FP16, 3 = BF16, 4 = INT8 - the
activations are quantized to INT8 per block at run time, which uses the CPU's integer dot
products and is the fast path on x86). The quantizer is ORT's own
``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` (RTN, round to
nearest), nothing hand-written.

The quantize step stores the embedding tables (``embedding_bits: 4``) as 4-bit blocks afterwards,
as for every ONNX method (``tasks/compression/ort_int8.tables_4bit``).

Defaults (``block_size`` 16, asymmetric, ``accuracy_level`` 4) were chosen by the measurement in
``docs/transformers.md`` (weight-only INT4 section, ``benchmarks/int4_settings.py``): on
all-MiniLM-L6-v2 the cosine to FP32 falls as blocks grow (mean 0.981 at 16 asymmetric, 0.975 at
32, 0.967 at 64, 0.958 at 128) and asymmetric blocks keep more than symmetric ones; the accuracy
level does not change the cosine, only the speed.

``onnx`` and ``onnxruntime`` are imported inside the functions, never at import.
"""

from __future__ import annotations

import logging

import numpy as np

ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def check_int4(block_size: int, accuracy_level: int) -> None:
    """One-line errors for a bad block size / accuracy level (the quantize step's validation)."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"quantize.int4_block_size: {block_size} is not a power of 2 >= 16")
    if accuracy_level not in ACCURACY_LEVELS:
        raise ValueError(f"quantize.int4_accuracy_level: {accuracy_level} (one of {ACCURACY_LEVELS})")


def linear_weights(model) -> int:
    """How many ``MatMul`` nodes of an ``onnx.ModelProto`` multiply by an initializer (a Linear weight)."""
    inits = {i.name for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits)


def int4_weights(fp32: bytes, block_size: int = 16, accuracy_level: int = 4, symmetric: bool = False) -> bytes:
    """Weight-only INT4 (``MatMulNBits``) of every Linear weight of the FP32 ONNX ``fp32``."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    check_int4(block_size, accuracy_level)
    model = onnx.load_from_string(fp32)
    if not linear_weights(model):
        raise ValueError("quantize.method: int4_weight, but the model has no MatMul on a weight (no linear layer)")
    conf = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level or None,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
        quant_axes=(("MatMul", 0),),
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=conf)
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it logs every node it skips at INFO
    try:  # an all-zero block (a padding row) has scale 0: ORT divides by it before masking
        with np.errstate(divide="ignore", invalid="ignore"):
            quantizer.process()
    finally:
        logger.setLevel(level)
    return quantizer.model.model.SerializeToString()
