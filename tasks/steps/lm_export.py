"""The ``lm_export`` step: a causal language model as an ONNX graph with its KV cache as explicit
inputs and outputs (``tasks.llm.export.export_decoder``): one graph does the prompt (an empty
cache) and every decoded token, on ONNX Runtime and on OpenVINO (which reads ONNX), and it is what
weight-only quantization (``lm_quantize``) compresses."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.context import StepContext
from tasks.llm.types import CausalLM


@dataclass
class LmExportConfig:
    pass


def run(model: CausalLM, *, cfg: LmExportConfig, ctx: StepContext) -> CausalLM:
    """``model`` exported (format ``onnx``), its config and tokenizer kept."""
    from tasks.llm.export import export_decoder
    from tasks.llm.model import build_causal_lm, load_lm_state
    from tasks.llm.weights import files_size

    if model.format != "torch":
        raise ValueError(f"lm_export: model '{model.name}' is already {model.format}; export a torch model")
    net = build_causal_lm(model.config)
    load_lm_state(net, model.state_dict)
    files = export_decoder(net)
    ctx.log_metrics({"size_bytes": files_size(files)})
    return CausalLM(
        name=ctx.step,
        config=model.config,
        format="onnx",
        files=files,
        tokenizer=model.tokenizer,
        parent=model.name,
        metrics={k: v for k, v in model.metrics.items() if k != "learning_curve"},
    )
