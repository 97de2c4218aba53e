"""Training and inference helpers for embedding models (task kind ``embedding``).

The counterpart of ``tasks.training.loop.fit`` for models judged against a reference model's vectors
rather than labels: the loss is ``tasks.evaluation.quality.embedding_loss`` to the teacher's vectors and the
epoch kept is the one with the best validation ``cos_mean`` to the teacher (``fit`` would pick
by accuracy, which embeddings do not have). Used by ``distill`` (embedding students) and usable
by any fine-tuning of an embedding model (e.g. after pruning).

Token batches (``Dataset.input_names`` with an ``attention_mask``, stacked ``[B, 3, L]``) are
cut to their longest real row before the forward pass: padding is masked out of the pooled
embedding anyway, and sentences average ~20 of 64 tokens, so this saves most of the compute.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from tasks.core.context import StepContext
from tasks.evaluation.quality import embedding_loss, embedding_quality
from tasks.training.loop import OptimConfig, make_optimizer

MASK_INDEX = 1  # position of attention_mask in stacked token rows (tasks.models.transformer.TEXT_INPUTS)


def trim_padding(x: Tensor) -> Tensor:
    """Stacked token rows ``[B, 3, L]`` cut to the longest real row (other inputs returned as is)."""
    if x.dim() != 3 or x.is_floating_point() or x.shape[1] <= MASK_INDEX:
        return x
    length = int(x[:, MASK_INDEX].sum(1).max()) if len(x) else x.shape[2]
    return x[..., : max(1, length)]


@torch.no_grad()
def embed(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 64) -> Tensor:
    """``model`` outputs over ``x`` (padding-trimmed batches of rows sorted by length, original order
    returned). ``model`` is a torch module (run in eval mode) or any batch -> outputs callable
    (e.g. an ONNX Runtime session wrapper: the graph's sequence axis is dynamic)."""
    if isinstance(model, nn.Module):
        model.eval()
    if len(x) == 0:
        return torch.empty(0)
    order = torch.argsort(x[:, MASK_INDEX].sum(1)) if x.dim() == 3 and not x.is_floating_point() else None
    xs = x[order] if order is not None else x
    out = torch.cat([model(trim_padding(xs[i : i + batch_size])).float() for i in range(0, len(xs), batch_size)])
    if order is None:
        return out
    result = torch.empty_like(out)
    result[order] = out
    return result


def fit_embedding(
    model: nn.Module,
    x: Tensor,
    teacher: Tensor,
    *,
    cfg: OptimConfig,
    ctx: StepContext,
    val: tuple[Tensor, Tensor],
    mse_weight: float = 1.0,
) -> dict[str, float]:
    """Train ``model`` in place towards ``teacher`` vectors of ``x``; keep the best val ``cos_mean``
    (the starting weights included).

    ``val = (x_val, teacher_val)``. Logs ``train_loss`` and ``epoch_cos_mean`` per epoch, then the
    kept weights' ``cos_mean``, ``cos_min``, ``top1_agree``, ``top5_agree`` and ``best_epoch``.
    """
    gen = ctx.seed_everything()
    opt = make_optimizer(list(model.parameters()), cfg)
    total = max(1, cfg.epochs * math.ceil(len(x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    # the starting weights are a candidate too (best_epoch -1): a student initialised from the
    # teacher's layers may already beat a short, noisy training run
    best = {**embedding_quality(embed(model, val[0], cfg.eval_batch_size), val[1]), "best_epoch": -1.0}
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(cfg.epochs):
        model.train()
        perm, seen = torch.randperm(len(x), generator=gen), 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = embedding_loss(model(trim_padding(x[idx])), teacher[idx], mse_weight=mse_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += float(loss.detach()) * len(idx)
        q = embedding_quality(embed(model, val[0], cfg.eval_batch_size), val[1])
        ctx.log_metrics({"train_loss": seen / max(1, len(x)), "epoch_cos_mean": q["cos_mean"]}, step=epoch)
        ctx.progress(f"epoch {epoch + 1}/{cfg.epochs} cos_mean={q['cos_mean']:.4f}")
        if q["cos_mean"] > best["cos_mean"] or math.isnan(q["cos_mean"]):
            best, best_state = {**q, "best_epoch": float(epoch)}, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    ctx.log_metrics(best)
    return best
