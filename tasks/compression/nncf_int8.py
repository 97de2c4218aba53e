"""OpenVINO's own INT8 (the ``quantize`` method ``nncf_int8``): NNCF post-training quantization of
the FP32 ONNX, ONNX out.

NNCF (OpenVINO's Neural Network Compression Framework) quantizes the ONNX graph itself through its
ONNX back end (``nncf.quantize`` on an ``onnx.ModelProto``): INT8 weights per output channel and
INT8 activations calibrated on the calibration rows, written as ``QuantizeLinear`` /
``DequantizeLinear`` pairs. OpenVINO compiles those pairs into its INT8 kernels (VNNI/AMX where the
CPU has them), so the result is OpenVINO's INT8 model while the artifact stays one ONNX file: the
registry, the parity gate (on ONNX Runtime) and serving take it like any other candidate. ONNX
Runtime runs the same file, more slowly; the benchmark measures both.

``model_type: transformer`` is NNCF's transformer preset: SmoothQuant on the linear layers' inputs
and the patterns that must stay in floating point (softmax, layer norm, the attention's
residual adds) left unquantized. ``embedding_bits: 4`` keeps NNCF off the embedding tables
(``IgnoredScope`` on ``Gather``) and stores them as 4-bit blocks afterwards
(``tasks/compression/ort_int8.tables_4bit``).

Calibration: ``calib_batches * calib_batch_size`` rows of ``x_calib`` drawn with the seed
(``ort_int8.calib_rows``, as ORT's static INT8 draws them), fed one row at a time (every graph
input, ``ort_feed``); NNCF uses all of them (``subset_size``).

``nncf`` and ``onnx`` are imported inside the functions, never at import (``nncf`` is in the nlp
extra).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from tasks.compression.ort_int8 import calib_rows, tables_4bit
from tasks.runtime.onnx import ort_feed, ort_session

MODEL_TYPES = ("", "transformer")


def check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"quantize.nncf_model_type: '{model_type}' ('' or 'transformer')")


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as e:
        raise ImportError("quantize.method: nncf_int8 needs nncf (the nlp extra: make install-nlp)") from e
    return nncf


def nncf_quantize(fp32: bytes, x_calib: Tensor, cfg: Any, seed: int) -> bytes:
    """INT8 QDQ ONNX of the FP32 ONNX bytes by NNCF post-training quantization (see the module doc)."""
    import onnx

    nncf = _nncf()
    check_model_type(cfg.nncf_model_type)
    rows = calib_rows(x_calib, cfg, seed)
    if len(rows) == 0:
        raise ValueError("quantize.method: nncf_int8 needs calibration rows (the data set has none)")
    session = ort_session(fp32, threads=1)
    dataset = nncf.Dataset([rows[i : i + 1] for i in range(len(rows))], lambda x: ort_feed(session, x))
    emb4 = cfg.embedding_bits == 4
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)  # it logs every node it leaves alone at INFO
    try:
        quantized = nncf.quantize(
            onnx.load_from_string(fp32),
            dataset,
            subset_size=len(rows),
            model_type=nncf.ModelType.TRANSFORMER if cfg.nncf_model_type == "transformer" else None,
            ignored_scope=nncf.IgnoredScope(types=["Gather"], validate=False) if emb4 else None,
        )
    finally:
        logger.setLevel(level)
    return tables_4bit(quantized.SerializeToString(), cfg) if emb4 else quantized.SerializeToString()
