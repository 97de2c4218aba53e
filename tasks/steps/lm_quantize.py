"""The ``lm_quantize`` step: weight-only INT8 / INT4 of an exported causal language model.

``nncf_int8`` / ``nncf_int4``: NNCF ``compress_weights`` on the OpenVINO model (data-free, or
data-aware with ``awq`` and ``scale_estimation`` on the calibration rows; ``group_size`` and
``ratio``, the share of weights in INT4 with the rest in the backup precision, are sweep
parameters), stored as OpenVINO IR. ``ort_int4``: ONNX Runtime's ``MatMulNBits`` (block-wise
INT4 of every MatMul weight). The tied embedding / LM head: NNCF compresses the LM head MatMul and
the embedding Gather unless told otherwise; what each variant did is in ``metrics["compression"]``
(``tasks.llm.weights.describe_compression``). The parity gate on perplexity and next-token
agreement is applied by ``lm_benchmark``, which measures every variant against the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.checks import at_least, require
from tasks.core.context import StepContext
from tasks.llm.types import CausalLM, TokenSet

METHODS = ("nncf_int8", "nncf_int4", "ort_int4")


@dataclass
class LmQuantizeConfig:
    method: str = "nncf_int8"  # nncf_int8 | nncf_int4 | ort_int4
    group_size: int = 64  # nncf_int4: weights per scale (must divide the hidden size: 576 -> 64 or 32)
    ratio: float = 1.0  # nncf_int4: share of the weights in INT4 (the rest INT8)
    awq: bool = False  # nncf_int4: activation-aware scaling on the calibration rows (data-aware)
    scale_estimation: bool = False  # nncf_int4: scales fitted on the calibration rows (data-aware)
    calib_rows: int = 8
    block_size: int = 32  # ort_int4: weights per scale

    def __post_init__(self) -> None:
        require("method", self.method in METHODS, f"must be one of {list(METHODS)}")
        at_least("group_size", self.group_size, 1)
        at_least("calib_rows", self.calib_rows, 1)
        at_least("block_size", self.block_size, 16)
        require("ratio", 0 < self.ratio <= 1, "must be in (0, 1]")


def run(model: CausalLM, data: TokenSet, *, cfg: LmQuantizeConfig, ctx: StepContext) -> CausalLM:
    """``model`` (format onnx) with its weights compressed by ``cfg.method``."""
    from tasks.llm.weights import describe_compression, files_size, nncf_weights, ort_int4

    require("model", model.format == "onnx", f"'{model.name}' is {model.format}: quantize an lm_export output")
    if cfg.method == "ort_int4":
        files, fmt = ort_int4(model.files, block_size=cfg.block_size), "onnx"
    else:
        data_aware = cfg.awq or cfg.scale_estimation
        calib = [row.numpy()[None] for row in data.calib[: cfg.calib_rows]] if data_aware else None
        mode = "int8" if cfg.method == "nncf_int8" else "int4"
        files = nncf_weights(
            model.files,
            mode,
            group_size=cfg.group_size,
            ratio=cfg.ratio,
            awq=cfg.awq,
            scale_estimation=cfg.scale_estimation,
            calib=calib,
        )
        fmt = "openvino"
    compression = describe_compression(files)
    size = files_size(files)
    ctx.log_metrics({"size_bytes": size, "size_ratio": files_size(model.files) / size})
    return CausalLM(
        name=ctx.step,
        config=model.config,
        format=fmt,
        files=files,
        tokenizer=model.tokenizer,
        parent=model.name,
        metrics={**model.metrics, "method": cfg.method, "compression": compression},
    )
