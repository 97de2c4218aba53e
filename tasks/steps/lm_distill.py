"""The ``lm_distill`` step: a pruned causal language model healed by distillation on the teacher's
cached top-k log-probabilities (``lm_topk``): KL divergence on the teacher's top-k support
(``tasks.llm.distill.topk_kd_loss``), AdamW, on the distillation rows only.

The learning curve (loss per step, and perplexity on the held-out documents every ``eval_every``
steps, against distillation tokens seen) is logged as metrics with the tokens as the MLflow step,
so the UI draws perplexity against tokens; its table goes with the model's ``metrics``.

The loop (``tasks.llm.distill_loop``) runs through ``ctx.train_workers``: in this process with
``workers: 0``, else on Ray Train with DDP over ``workers`` (each worker trains on its share of every
batch, so the global batch and the loss curve are those of one process), a checkpoint every
``checkpoint_every`` steps under ``storage`` (default: a temporary folder on this machine; a
multi-node cluster needs a shared path or URI), and up to ``max_failures`` restarts from the last
checkpoint when a worker dies. Perplexity during training is measured by rank 0.
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
    workers: int = 0  # 0: in this process; else Ray Train workers (DDP)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0
    max_failures: int = 2  # restarts from the last checkpoint after a worker dies
    checkpoint_every: int = 1  # steps between checkpoints (and the last step)
    storage: str = ""  # checkpoints: an absolute path or URI ("": a temporary folder)

    def __post_init__(self) -> None:
        at_least("epochs", self.epochs, 1)
        at_least("batch_size", self.batch_size, 1)
        at_least("max_steps", self.max_steps, 0)
        at_least("eval_every", self.eval_every, 0)
        at_least("window", self.window, 2)
        at_least("workers", self.workers, 0)
        at_least("max_failures", self.max_failures, 0)
        at_least("checkpoint_every", self.checkpoint_every, 1)
        require("cpus_per_worker", self.cpus_per_worker > 0, "must be > 0")
        require("lr", self.lr > 0, "must be > 0")
        require("temperature", self.temperature > 0, "must be > 0")


def run(student: CausalLM, logits: Logits, data: TokenSet, *, cfg: LmDistillConfig, ctx: StepContext) -> CausalLM:
    """``student`` trained to match the teacher's top-k distribution on ``data.distill``."""
    from tasks.llm.distill_loop import distill_loop, evaluate, loop_config
    from tasks.llm.model import build_causal_lm, config_dict, lm_state, load_lm_state

    require("logits", logits.train.shape[:2] == data.distill.shape, "were not computed on this data's distill rows")
    model = build_causal_lm(student.config)
    load_lm_state(model, student.state_dict)
    docs = data.docs()
    config = loop_config(
        student.config,
        student.state_dict,
        data.distill,
        logits.train,
        logits.features["indices"],
        epochs=cfg.epochs,
        batch=cfg.batch_size,
        lr=cfg.lr,
        temperature=cfg.temperature,
        max_steps=cfg.max_steps,
        seed=ctx.seed,
        checkpoint_every=cfg.checkpoint_every,
        eval_every=cfg.eval_every,
        docs=docs,
        window=cfg.window,
    )
    first = {"step": 0, "tokens": 0, **evaluate(model, docs, cfg.window, "cpu")}
    state, history = ctx.train_workers(
        distill_loop,
        config,
        workers=cfg.workers,
        use_gpu=cfg.use_gpu,
        cpus_per_worker=cfg.cpus_per_worker,
        max_failures=cfg.max_failures,
        storage=cfg.storage,
    )
    if state is not None:
        load_lm_state(model, {k: v.cpu() for k, v in state["model"].items()})
    if history and "ppl" not in history[-1]:
        history[-1] = {**history[-1], **evaluate(model, docs, cfg.window, "cpu")}
    curve = _log_curve(ctx, [first, *history])
    last = history[-1] if history else first
    model.eval()
    return CausalLM(
        name=ctx.step,
        config=config_dict(model),
        state_dict=lm_state(model),
        tokenizer=student.tokenizer,
        parent=student.name,
        metrics={**student.metrics, "distill_tokens": int(last["tokens"]), "learning_curve": curve},
    )


def _log_curve(ctx: StepContext, rows: list[dict]) -> list[dict]:
    """Each row's loss and perplexity as metrics at its token count (the MLflow step), and the
    learning curve: the rows that have a perplexity, with its 95% interval."""
    curve = []
    for row in rows:
        metrics = {"kd_loss": row["loss"]} if "loss" in row else {}
        if "ppl" in row:
            metrics["ppl"] = row["ppl"]
            curve.append(
                {"step": int(row["step"]), "tokens": int(row["tokens"]), "ppl": row["ppl"]}
                | {"ppl_ci95": [row["ppl_lo"], row["ppl_hi"]]}
            )
        ctx.log_metrics(metrics, step=int(row["tokens"]))
    return curve
