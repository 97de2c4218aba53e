"""Training and inference helpers for embedding models (task kind ``embedding``).

Models judged against a reference model's vectors rather than labels train through the one loop,
``tasks.training.loop.fit``, with two seams filled in: the loss is
``tasks.training.losses.embedding_loss`` to the teacher's vectors and the score is the validation
``cos_mean`` to the teacher (``embedding_score``; accuracy, the classifiers' score, does not exist
here). ``fit_embedding`` is that call; ``distill`` (embedding students) and ``prune_embedding``
(fine-tuning after pruning) use it.

Token batches (``Dataset.input_names`` with an ``attention_mask``, stacked ``[B, 3, L]``) are
cut to their longest real row before the forward pass: padding is masked out of the pooled
embedding anyway, and sentences average ~20 of 64 tokens, so this saves most of the compute.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from tasks.core.context import StepContext
from tasks.evaluation.quality import embedding_quality
from tasks.training.loop import OptimConfig, Score, fit
from tasks.training.losses import embedding_loss

MASK_INDEX = 1  # position of attention_mask in stacked token rows (tasks.models.transformer.TEXT_INPUTS)


def trim_padding(x: Tensor) -> Tensor:
    """Stacked token rows ``[B, 3, L]`` cut to the longest real row (other inputs returned as is)."""
    if x.dim() != 3 or x.is_floating_point() or x.shape[1] <= MASK_INDEX:
        return x
    length = int(x[:, MASK_INDEX].sum(1).max()) if len(x) else x.shape[2]
    return x[..., : max(1, length)]


@torch.no_grad()
def embed(
    model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 64, device: str = "cpu"
) -> Tensor:
    """``model`` outputs over ``x`` (padding-trimmed batches of rows sorted by length, original order
    returned, on the CPU in FP32). ``model`` is a torch module (run in eval mode, batches sent to
    ``device``) or any batch -> outputs callable (e.g. an ONNX Runtime session wrapper: the
    graph's sequence axis is dynamic)."""
    if isinstance(model, nn.Module):
        model.eval()
    if len(x) == 0:
        return torch.empty(0)
    order = torch.argsort(x[:, MASK_INDEX].sum(1)) if x.dim() == 3 and not x.is_floating_point() else None
    xs = x[order] if order is not None else x
    batches = (trim_padding(xs[i : i + batch_size]).to(device) for i in range(0, len(xs), batch_size))
    out = torch.cat([model(b).float().cpu() for b in batches])
    if order is None:
        return out
    result = torch.empty_like(out)
    result[order] = out
    return result


def embedding_score(x: Tensor, reference: Tensor, batch_size: int = 64) -> Score:
    """``fit``'s score for an embedding model: ``embedding_quality`` of its vectors of ``x`` against
    the ``reference`` vectors, compared on ``cos_mean``; the starting weights are a candidate too
    (a student initialised from the teacher's layers may already beat a short, noisy run)."""

    def measure(model: nn.Module, device: str) -> dict[str, float]:
        return embedding_quality(embed(model, x, batch_size, device), reference)

    return Score("cos_mean", measure, from_start=True)


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
    """``fit`` of ``model`` towards the ``teacher`` vectors of ``x`` with ``embedding_loss``, kept at
    its best validation ``cos_mean`` (the starting weights included); ``val = (x_val, teacher_val)``.

    Logs ``train_loss`` and ``epoch_cos_mean`` per epoch, then the kept weights' ``cos_mean``,
    ``cos_min``, ``top1_agree``, ``top5_agree`` and ``best_epoch``; returns them.
    """
    return fit(
        model,
        x,
        (teacher,),
        loss_fn=lambda out, t: embedding_loss(out, t, mse_weight=mse_weight),
        cfg=cfg,
        ctx=ctx,
        val=embedding_score(val[0], val[1], cfg.eval_batch_size),
        inputs=trim_padding,
    )
