"""The ``lm_distill`` step: a pruned causal language model healed by distillation on the teacher's
cached top-k log-probabilities (``lm_topk``): KL divergence on the teacher's top-k support
(``tasks.llm.distill.topk_kd_loss``), AdamW, on the distillation rows only.

The learning curve (loss per step, and perplexity on the held-out documents every ``eval_every``
steps, against distillation tokens seen) is logged as metrics with the tokens as the MLflow step,
so the UI draws perplexity against tokens; its table goes with the model's ``metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.checks import at_least, require
from tasks.core.context import StepContext
from tasks.core.types import Logits
from tasks.llm.types import CausalLM, TokenSet


@dataclass
class LmDistillConfig:
    epochs: int = 1
    batch_size: int = 4
    lr: float = 1e-4
    temperature: float = 1.0
    max_steps: int = 0  # 0: every row, `epochs` times
    eval_every: int = 0  # held-out perplexity every this many steps (0: before and after only)
    window: int = 512  # tokens per forward pass when measuring perplexity

    def __post_init__(self) -> None:
        at_least("epochs", self.epochs, 1)
        at_least("batch_size", self.batch_size, 1)
        at_least("max_steps", self.max_steps, 0)
        at_least("eval_every", self.eval_every, 0)
        at_least("window", self.window, 2)
        require("lr", self.lr > 0, "must be > 0")
        require("temperature", self.temperature > 0, "must be > 0")


def run(student: CausalLM, logits: Logits, data: TokenSet, *, cfg: LmDistillConfig, ctx: StepContext) -> CausalLM:
    """``student`` trained to match the teacher's top-k distribution on ``data.distill``."""
    from tasks.llm.distill import distill
    from tasks.llm.model import build_causal_lm, config_dict, lm_state, load_lm_state
    from tasks.llm.quality import doc_nll, perplexity, torch_logits

    require("logits", logits.train.shape[:2] == data.distill.shape, "were not computed on this data's distill rows")
    model = build_causal_lm(student.config)
    load_lm_state(model, student.state_dict)
    docs = data.docs()
    curve: list[dict] = []

    def evaluate(step: int, tokens: int) -> None:
        model.eval()
        ppl = perplexity(*doc_nll(torch_logits(model), docs, cfg.window))
        model.train()
        curve.append({"step": step, "tokens": tokens, "ppl": ppl["ppl"], "ppl_ci95": ppl["ci95"]})
        ctx.log_metrics({"ppl": ppl["ppl"]}, step=tokens)

    def on_step(record: dict) -> None:
        ctx.log_metrics({"kd_loss": record["loss"]}, step=record["tokens"])
        ctx.progress(f"lm_distill: step {record['step']}, {record['tokens']} tokens, loss {record['loss']:.4f}")
        if cfg.eval_every and record["step"] % cfg.eval_every == 0:
            evaluate(record["step"], record["tokens"])

    evaluate(0, 0)
    history = distill(
        model,
        data.distill,
        logits.train,
        logits.features["indices"],
        epochs=cfg.epochs,
        batch=cfg.batch_size,
        lr=cfg.lr,
        temperature=cfg.temperature,
        max_steps=cfg.max_steps or None,
        on_step=on_step,
        seed=ctx.seed,
    )
    last = history[-1] if history else {"step": 0, "tokens": 0}
    if not curve or curve[-1]["step"] != last["step"]:
        evaluate(last["step"], last["tokens"])
    model.eval()
    return CausalLM(
        name=ctx.step,
        config=config_dict(model),
        state_dict=lm_state(model),
        tokenizer=student.tokenizer,
        parent=student.name,
        metrics={**student.metrics, "distill_tokens": last["tokens"], "learning_curve": curve},
    )
