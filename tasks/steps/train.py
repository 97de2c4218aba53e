"""The ``train`` step: a model trained from scratch on the labeled data (teacher or scratch student)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.core.context import StepContext
from tasks.core.options import ModelKind
from tasks.core.types import Dataset, ModelArtifact
from tasks.models.build import build_model, complete_arch, count_params, make_artifact
from tasks.training.loop import OptimConfig, fit
from tasks.training.losses import ce_loss


@dataclass
class TrainConfig:
    model: Any = field(default_factory=lambda: {"_target_": "tasks.models.zoo.CNN1D"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    kind: ModelKind = ModelKind.teacher


def run(data: Dataset, *, cfg: TrainConfig, ctx: StepContext) -> ModelArtifact:
    """Train a model from scratch on the labeled data (teacher or scratch student)."""
    arch = complete_arch(cfg.model, data.input_shape, data.num_classes)
    ctx.seed_everything()  # seeded initial weights: reruns and the KD student start alike
    model = build_model(arch, ctx.trusted_targets)
    best = fit(
        model, data.x_train, (data.y_train,), loss_fn=ce_loss, cfg=cfg.optim, ctx=ctx, val=(data.x_val, data.y_val)
    )
    metrics = {"val_acc": best["val_acc"], "params": float(count_params(model))}
    ctx.log_metrics({"params": metrics["params"]})
    return make_artifact(model, arch, name=ctx.step, kind=cfg.kind, metrics=metrics)
