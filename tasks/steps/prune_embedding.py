"""The ``prune_embedding`` step: structured pruning of an embedding model's attention heads and FFN
widths, then fine-tuning on the teacher's vectors.

The pruning is the ``prune`` step's channel method (``tasks.compression.channels``: Torch-Pruning's
dependency graph, whole attention heads, the pruned structure stored as JSON in the arch). What
differs for an embedding model is what "recovering" means: there are no labels, so the pruned
model is fine-tuned towards the unpruned model's vectors with
``tasks.training.losses.embedding_loss`` and kept at its best validation ``cos_mean``
(``tasks.training.embedding.fit_embedding``: the shared loop ``fit``, honouring ``finetune``'s
scheduler and patience and the step's device). ``ignore`` keeps the embedding layer whole, so the hidden
width - the width of the sentence embedding - stays and only heads and FFN channels go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.compression.channels import ChannelSettings, channel_pruner, channel_step, pruned_arch
from tasks.core.checks import at_least, fraction
from tasks.core.context import StepContext
from tasks.core.options import Importance, ModelKind, Scheduler
from tasks.core.types import Dataset, ModelArtifact
from tasks.evaluation.quality import embedding_quality
from tasks.models.build import count_params, load_model, make_artifact
from tasks.training.embedding import embed, fit_embedding
from tasks.training.loop import OptimConfig


@dataclass
class PruneEmbeddingConfig:
    amount: float = 0.5  # fraction of attention heads and FFN channels removed in every layer
    importance: Importance = Importance.l2
    ignore: list[str] = field(default_factory=lambda: ["encoder.embeddings"])  # kept whole (hidden width)
    finetune: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=1, batch_size=32, lr=1e-4, scheduler=Scheduler.cosine)
    )
    mse_weight: float = 1.0
    kind: ModelKind = ModelKind.pruned

    def __post_init__(self) -> None:
        fraction("amount", self.amount, open_low=True, open_high=True)
        at_least("mse_weight", self.mse_weight, 0)


def run(model: ModelArtifact, data: Dataset, *, cfg: PruneEmbeddingConfig, ctx: StepContext) -> ModelArtifact:
    """Prune ``model``'s heads and FFN widths by ``cfg.amount``, fine-tune on its own vectors."""
    if data.task != "embedding":
        raise ValueError(f"prune_embedding: needs embedding data, '{data.name}' is {data.task} (use prune)")
    ctx.seed_everything()
    teacher = load_model(model, ctx.trusted_targets)
    net = load_model(model, ctx.trusted_targets)
    example = data.x_train[:2]
    options = ChannelSettings(importance=cfg.importance, scope="layer", ignore=list(cfg.ignore))
    channel_step(channel_pruner(net, example, options, cfg.amount), net, example)
    arch = pruned_arch(net, model.arch, ctx.trusted_targets)
    ctx.progress("teacher embeddings")
    bs, teacher = cfg.finetune.eval_batch_size, teacher.to(ctx.device)
    targets = embed(teacher, data.x_train, bs, ctx.device)
    val = (data.x_val, embed(teacher, data.x_val, bs, ctx.device))
    pruned_cos = embedding_quality(embed(net, data.x_val, bs), val[1])["cos_mean"]
    best = fit_embedding(net, data.x_train, targets, cfg=cfg.finetune, ctx=ctx, val=val, mse_weight=cfg.mse_weight)
    metrics = {**best, "cos_mean_pruned": pruned_cos, "params": float(count_params(net)), "amount": cfg.amount}
    ctx.log_metrics({k: metrics[k] for k in ("cos_mean_pruned", "params")})
    return make_artifact(net, arch, name=ctx.step, kind=cfg.kind, parent=model.name, metrics=metrics)
