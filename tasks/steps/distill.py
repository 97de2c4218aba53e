"""The ``distill`` step: train a student from a teacher's precomputed logits (knowledge distillation).

Logit KD (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"), per row:

    loss_i = alpha * T^2 * KL(softmax(t_i / T) || softmax(s_i / T)) + (1 - alpha) * CE(s_i, y_i)

The T^2 factor keeps the soft-target gradients at the same scale when T changes. Rows of the
unlabeled transfer pool carry label -1: their CE term is masked out, so they train on the KD term
only. The batch loss is the mean over rows (``tasks.training.losses.kd_loss``); every method trains
through the one loop, ``tasks.training.loop.fit``. Distilling over a large transfer pool is what makes KD
beat training from scratch on MNIST-1D (see benchmarks/kd_gain.py).

Feature KD (FitNets, Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): a learned regressor
r (1x1 convolution or linear map) takes the student's hint layer to the teacher's guided layer, and
``beta * MSE(r(h_s), h_t)`` is added. The teacher features come from ``Logits.features``.

Several teachers (``extra_logits``) are combined by averaging their logits (an ensemble teacher).

``method`` picks the training: ``hinton`` (the above), ``mutual`` (two students learning from each
other, Deep Mutual Learning: ``tasks/training/mutual.py``) or ``multitask`` (one student with one head per
teacher's task: ``tasks/training/multitask.py``).

Embedding data (``Dataset.task == "embedding"``, e.g. a sentence encoder): the student is trained
on the teacher's vectors with ``tasks.training.losses.embedding_loss`` (cosine + MSE) and kept at
its best validation ``cos_mean`` (``tasks.training.embedding.fit_embedding``: the shared loop
``fit`` with the embedding score). The ``teacher`` model input supplies those vectors (or
``logits`` when an ``infer`` step computed them) and, with ``init_layers``, the student's
weights: a shallower copy of the teacher whose layer ``i`` starts as teacher layer
``init_layers[i]`` (DistilBERT's initialisation, Sanh et al. 2019; ``tasks.models.transformer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.core.checks import at_least, fraction, positive, require
from tasks.core.context import StepContext
from tasks.core.options import DistillMethod, ModelKind, TaskKind
from tasks.core.types import Dataset, Logits, ModelArtifact
from tasks.models.build import build_model, complete_arch, count_params, load_model, make_artifact
from tasks.models.hooks import capture
from tasks.models.transformer import layer_student
from tasks.training.embedding import embed, fit_embedding, trim_padding
from tasks.training.loop import OptimConfig, fit
from tasks.training.losses import kd_loss
from tasks.training.multitask import MultitaskConfig, check_multitask, train_multitask
from tasks.training.mutual import MutualConfig, check_mutual, train_mutual
from tasks.training.transfer import training_rows, use_pool


@dataclass
class DistillConfig:
    student: Any = field(default_factory=lambda: {"_target_": "tasks.models.zoo.CNN1D", "channels": [8, 8, 8]})
    # measured by benchmarks/kd_gain.py on MNIST-1D (3600 labeled + 25k transfer rows)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=10, batch_size=512, lr=1e-2))
    temperature: float = 2.0
    alpha: float = 0.9  # weight of the KD term on labeled rows (unlabeled rows: KD term only)
    use_transfer: bool = True  # also distill over the unlabeled transfer pool
    hint_layer: str = ""  # FitNets: student module name whose output is regressed ...
    teacher_feature: str = ""  # ... onto this key of Logits.features
    beta: float = 1.0  # weight of the FitNets hint loss
    kind: ModelKind = ModelKind.student_kd
    init_layers: list[int] = field(default_factory=list)  # transformer: student = these teacher layers
    layer_fraction: float = 0.0  # transformer: student = this share of the teacher's layers, evenly spaced
    mse_weight: float = 1.0  # embedding: weight of the MSE term of the loss
    method: DistillMethod = DistillMethod.hinton
    mutual: MutualConfig = field(default_factory=MutualConfig)  # method: mutual
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)  # method: multitask

    def __post_init__(self) -> None:
        positive("temperature", self.temperature)
        fraction("alpha", self.alpha)
        at_least("beta", self.beta, 0)
        at_least("mse_weight", self.mse_weight, 0)
        fraction("layer_fraction", self.layer_fraction, open_high=True)
        require("layer_fraction", not (self.layer_fraction and self.init_layers), "set it or init_layers, not both")
        require(
            "hint_layer",
            bool(self.hint_layer) == bool(self.teacher_feature),
            "set hint_layer and teacher_feature together (FitNets) or neither",
        )
        if self.method == DistillMethod.mutual:
            check_mutual(self)
        if self.method == DistillMethod.multitask:
            check_multitask(self)


def distill_embedding(
    data: Dataset, logits: Logits | None, teacher: ModelArtifact | None, cfg: DistillConfig, ctx: StepContext
) -> ModelArtifact:
    """An embedding student trained on the teacher's vectors (see the module docstring)."""
    if teacher is None:
        raise ValueError("distill: embedding students need the teacher model (inputs: {teacher: <step>})")
    net = load_model(teacher, ctx.trusted_targets).to(ctx.device)
    ctx.seed_everything()
    if cfg.init_layers or cfg.layer_fraction:
        arch, state = layer_student(teacher.arch, teacher.state_dict, student_layers(cfg, teacher))
        student = build_model(arch, ctx.trusted_targets)
        student.load_state_dict(state, strict=True)
    else:
        arch = dict(cfg.student)
        student = build_model(arch, ctx.trusted_targets)
    ctx.progress("teacher embeddings")
    bs = cfg.optim.eval_batch_size
    targets = logits.train if logits is not None else embed(net, data.x_train, bs, ctx.device)
    if len(targets) != len(data.x_train):
        raise ValueError(f"distill: logits.train has {len(targets)} rows, data.x_train {len(data.x_train)}")
    val = (data.x_val, embed(net, data.x_val, bs, ctx.device))
    best = fit_embedding(student, data.x_train, targets, cfg=cfg.optim, ctx=ctx, val=val, mse_weight=cfg.mse_weight)
    metrics = {**best, "params": float(count_params(student)), "rows": float(len(data.x_train))}
    ctx.log_metrics({"params": metrics["params"], "rows": metrics["rows"]})
    return make_artifact(student, arch, name=ctx.step, kind=cfg.kind, parent=teacher.name, metrics=metrics)


def average_logits(teachers: list[Logits]) -> Logits:
    """One ensemble teacher: the mean of the teachers' logits (features from the first teacher)."""
    first = teachers[0]

    def shapes(t: Logits) -> tuple:
        return tuple(t.train.shape), None if t.transfer is None else tuple(t.transfer.shape)

    for other in teachers[1:]:
        if shapes(other) != shapes(first):
            raise ValueError(f"distill: teacher '{other.teacher}' logits do not match '{first.teacher}' in shape")
    pools = [t.transfer for t in teachers if t.transfer is not None]
    transfer = torch.stack(pools).mean(0) if pools else None
    return Logits(
        train=torch.stack([t.train for t in teachers]).mean(0),
        transfer=transfer,
        features=first.features,
        teacher="+".join(t.teacher for t in teachers),
    )


def make_regressor(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> nn.Module:
    """FitNets regressor: 1x1 conv for [B, C, ...] features (pooled to the teacher's spatial size),
    linear for [B, D]."""
    if student_feat.dim() == 2:
        return nn.Linear(student_feat.shape[1], teacher_feat.shape[1])
    if student_feat.dim() not in (3, 4) or teacher_feat.dim() != student_feat.dim():
        raise ValueError(
            f"distill: hint shape {list(student_feat.shape[1:])} cannot map to "
            f"teacher feature shape {list(teacher_feat.shape[1:])}"
        )
    conv = nn.Conv1d if student_feat.dim() == 3 else nn.Conv2d
    pool = nn.AdaptiveAvgPool1d if student_feat.dim() == 3 else nn.AdaptiveAvgPool2d
    return nn.Sequential(conv(student_feat.shape[1], teacher_feat.shape[1], 1), pool(teacher_feat.shape[2:]))


def _hint_setup(student: nn.Module, x: torch.Tensor, feats: torch.Tensor, cfg: DistillConfig):
    """Hook the student's hint layer and build the regressor from one dry forward pass."""
    store, _ = capture(student, [cfg.hint_layer])
    with torch.no_grad():
        student.eval()(x[:2])
    return store, make_regressor(store[cfg.hint_layer], feats[:2])


def _student_arch(cfg: DistillConfig, data: Dataset, teacher: ModelArtifact | None) -> tuple[dict, dict | None]:
    """(arch, initial weights or None) of a classification student: ``cfg.student``, or with
    ``init_layers`` the teacher's layers ``init_layers`` (a transformer classifier, head included)."""
    if not cfg.init_layers and not cfg.layer_fraction:
        return complete_arch(cfg.student, data.input_shape, data.num_classes), None
    if teacher is None:
        raise ValueError("distill.init_layers: needs the teacher model (inputs: {teacher: <step>})")
    return layer_student(teacher.arch, teacher.state_dict, student_layers(cfg, teacher))


def student_layers(cfg: DistillConfig, teacher: ModelArtifact) -> list[int]:
    """``init_layers``, or ``layer_fraction`` of the teacher's layers (at least one) evenly spaced,
    first and last included: one setting fits a user's 6- or 12-layer model alike."""
    if cfg.init_layers:
        return list(cfg.init_layers)
    config = teacher.arch.get("config", {})
    depth = int(config.get("num_hidden_layers", config.get("n_layers", 0)))
    keep = max(1, round(cfg.layer_fraction * depth))
    if depth < 2 or keep >= depth:
        raise ValueError(f"distill.layer_fraction: {cfg.layer_fraction} of the teacher's {depth} layers drops none")
    if keep == 1:
        return [0]
    return sorted({round(i * (depth - 1) / (keep - 1)) for i in range(keep)})


def _build_student(arch: dict, init: dict | None, ctx: StepContext) -> nn.Module:
    """The student's module, loaded with ``init`` when it is a copy of teacher layers (``init_layers``)."""
    student = build_model(arch, ctx.trusted_targets)
    if init is not None:
        student.load_state_dict(init, strict=True)
    return student


def run(
    data: Dataset,
    logits: Logits | None = None,
    extra_logits: list[Logits] | None = None,
    teacher: ModelArtifact | None = None,
    *,
    cfg: DistillConfig,
    ctx: StepContext,
) -> ModelArtifact:
    """Train ``cfg.student`` on the (averaged) teacher logits with the Hinton loss (+ FitNets hint);
    for embedding data, on the teacher's vectors (``distill_embedding``)."""
    if data.task == TaskKind.embedding:
        return distill_embedding(data, logits, teacher, cfg, ctx)
    if logits is None:
        raise ValueError("distill: classification students need the teacher's logits (inputs: {logits: <step>})")
    if cfg.method == DistillMethod.multitask:  # one teacher per task: no averaging
        pool, teachers = use_pool(data, cfg.use_transfer, ctx), [logits, *(extra_logits or [])]
        rows = [training_rows(data, t, pool) for t in teachers]
        return train_multitask(data, rows, "+".join(t.teacher for t in teachers), cfg, ctx)
    ensemble = average_logits([logits] + list(extra_logits or []))
    x, labels, t_logits = training_rows(data, ensemble, use_pool(data, cfg.use_transfer, ctx))
    arch, init = _student_arch(cfg, data, teacher)
    if cfg.method == DistillMethod.mutual:
        return train_mutual(data, x, labels, t_logits, arch, ensemble.teacher, cfg, ctx)
    ctx.seed_everything()  # seeded init: a scratch student with the same seed starts from the same weights
    student = _build_student(arch, init, ctx)
    targets: tuple[torch.Tensor, ...] = (labels, t_logits)
    extra: list[nn.Parameter] = []
    hint = None
    if cfg.hint_layer:
        if cfg.teacher_feature not in ensemble.features:
            raise ValueError(
                f"distill.teacher_feature: '{cfg.teacher_feature}' not in logits.features "
                f"{sorted(ensemble.features)} (set infer.features)"
            )
        feats = ensemble.features[cfg.teacher_feature][: len(x)]
        store, regressor = _hint_setup(student, x, feats, cfg)
        regressor.to(ctx.device)
        extra, targets, hint = list(regressor.parameters()), targets + (feats,), (store, regressor)

    def loss_fn(s: torch.Tensor, y: torch.Tensor, t: torch.Tensor, *feat: torch.Tensor) -> torch.Tensor:
        loss = kd_loss(s, t, y, temperature=cfg.temperature, alpha=cfg.alpha)
        if hint is not None:
            loss = loss + cfg.beta * F.mse_loss(hint[1](hint[0][cfg.hint_layer]), feat[0])
        return loss

    train = partial(fit, extra_params=extra, inputs=trim_padding)  # token rows cut to their longest real row
    best = train(student, x, targets, loss_fn=loss_fn, cfg=cfg.optim, ctx=ctx, val=(data.x_val, data.y_val))
    metrics = {"val_acc": best["val_acc"], "params": float(count_params(student)), "rows": float(len(x))}
    ctx.log_metrics({"params": metrics["params"], "rows": metrics["rows"]})
    return make_artifact(student, arch, name=ctx.step, kind=cfg.kind, parent=ensemble.teacher, metrics=metrics)
