"""Top-k distillation (``tasks.llm.distill``) as a data-parallel, checkpointed training loop.

``distill_loop(session, config)`` runs on every worker of a ``tasks.core.train_session.TrainSession``
(Ray Train workers, or this process as rank 0 of 1). Every rank walks the same ``schedule`` (a pure
function of the seed, so a resumed run replays exactly the steps not yet done) and trains on its
DistributedSampler-like shard of each step's rows: ``rows[rank::world_size]``. DDP averages the
gradients over ranks, so each rank scales its loss by ``n_rank · world_size / n`` (n rows in the
step): the average is then the gradient of the mean loss over ALL the step's rows, the same as one
process training on the whole batch (a short last batch splits unevenly; a rank left with no row
runs one row at weight 0, since every rank must take part in DDP's gradient all-reduce).

Rank 0 measures held-out perplexity every ``eval_every`` steps (``tasks.llm.quality``); every rank
reports each step's global loss (all-reduced), and the state (student weights, AdamW state, step) goes
with the report every ``checkpoint_every`` steps and at the last step.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from tasks.core.train_session import TrainSession
from tasks.llm.distill import make_optimizer, schedule, topk_kd_loss
from tasks.llm.model import build_causal_lm, lm_state, load_lm_state
from tasks.llm.quality import doc_nll, perplexity

KEYS = ("model_config", "state", "ids", "values", "indices")
DEFAULTS = dict(epochs=1, batch=4, lr=1e-4, temperature=1.0, max_steps=0, seed=0, checkpoint_every=1)
EVAL_DEFAULTS = dict(eval_every=0, docs=None, window=512)


def loop_config(model_config: dict, state: dict, ids, values, indices, **options) -> dict:
    """The plain dict ``distill_loop`` reads: the student (config + tensors), the rows and the
    teacher's top-k, and the options of ``DEFAULTS`` / ``EVAL_DEFAULTS`` (unknown keys refused)."""
    unknown = sorted(set(options) - set(DEFAULTS) - set(EVAL_DEFAULTS))
    if unknown:
        raise ValueError(f"{unknown[0]}: not an option of distill_loop")
    config = {**DEFAULTS, **EVAL_DEFAULTS, **options}
    config.update(model_config=model_config, state=state, ids=ids, values=values, indices=indices)
    if values.shape[:2] != ids.shape or indices.shape != values.shape:
        raise ValueError(f"values: shape {tuple(values.shape)} does not match ids {tuple(ids.shape)} + [k]")
    for key in ("epochs", "batch", "checkpoint_every"):
        if int(config[key]) < 1:
            raise ValueError(f"{key}: must be >= 1, got {config[key]}")
    if config["eval_every"] and not config["docs"]:
        raise ValueError("docs: eval_every needs held-out documents")
    return config


def evaluate(model, docs: list[list[int]], window: int, device: str) -> dict[str, float]:
    """{"ppl", "ppl_lo", "ppl_hi"}: held-out perplexity and its 95% document-bootstrap interval."""

    def fn(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(device)
            return model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()

    was_training = model.training
    model.eval()
    try:
        ppl = perplexity(*doc_nll(fn, docs, window))
    finally:
        model.train(was_training)
    return {"ppl": ppl["ppl"], "ppl_lo": ppl["ci95"][0], "ppl_hi": ppl["ci95"][1]}


def _shard(rows: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """This rank's rows of one step and its loss weight ``n_rank · world / n`` (module docstring)."""
    mine = rows[rank::world]
    if len(mine) == 0:
        return rows[:1], 0.0
    return mine, len(mine) * world / len(rows)


def _step(session: TrainSession, wrapped, opt, tensors, weight: float, temperature: float) -> float:
    """One optimisation step on this rank's shard; returns the loss of the whole step (all ranks)."""
    ids, values, indices = (t.to(session.device) for t in tensors)
    opt.zero_grad(set_to_none=True)
    loss = topk_kd_loss(wrapped(input_ids=ids, use_cache=False).logits, values, indices, temperature)
    (loss * weight).backward()
    opt.step()
    total = loss.detach() * weight / session.world_size
    if session.world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return float(total)


def distill_loop(session: TrainSession, config: dict) -> None:
    """Train the student of ``config`` (``loop_config``), resuming from ``session.restore()``."""
    torch.manual_seed(int(config["seed"]))
    model = build_causal_lm(config["model_config"])
    load_lm_state(model, config["state"])
    resumed = session.restore()
    if resumed is not None:
        load_lm_state(model, resumed["model"])
    model.train()
    wrapped = session.prepare(model)
    opt = make_optimizer(model, float(config["lr"]), resumed["optimizer"] if resumed else None)
    ids, values, indices = config["ids"], config["values"], config["indices"]
    steps = schedule(ids.shape[0], int(config["batch"]), int(config["epochs"]), int(config["seed"]))
    last = min(len(steps), int(config["max_steps"])) if config["max_steps"] else len(steps)
    start = int(resumed["step"]) if resumed else 0
    tokens = sum(len(rows) for rows in steps[:start]) * ids.shape[1]
    every, eval_every = int(config["checkpoint_every"]), int(config["eval_every"])
    for step in range(start, last):
        rows, weight = _shard(steps[step], session.rank, session.world_size)
        loss = _step(session, wrapped, opt, (ids[rows], values[rows], indices[rows]), weight, config["temperature"])
        tokens += len(steps[step]) * ids.shape[1]
        row = {"step": step + 1, "tokens": tokens, "loss": loss}
        if eval_every and (step + 1) % eval_every == 0 and session.rank == 0:
            row.update(evaluate(model, config["docs"], int(config["window"]), session.device))
        due = (step + 1) % every == 0 or step + 1 == last
        state = {"model": lm_state(model), "optimizer": opt.state_dict(), "step": step + 1} if due else None
        session.report(row, state)
    model.eval()
