"""The ``distill`` task: train a student from a teacher's precomputed logits (knowledge distillation).

Logit KD (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"), per row:

    loss_i = alpha * T^2 * KL(softmax(t_i / T) || softmax(s_i / T)) + (1 - alpha) * CE(s_i, y_i)

The T^2 factor keeps the soft-target gradients at the same scale when T changes. Rows of the
unlabeled transfer pool carry label -1: their CE term is masked out, so they train on the KD term
only. The batch loss is the mean over rows. Distilling over a large transfer pool is what makes KD
beat training from scratch on MNIST-1D (see benchmarks/kd_gain.py).

Feature KD (FitNets, Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): a learned regressor
r (1x1 convolution or linear map) takes the student's hint layer to the teacher's guided layer, and
``beta * MSE(r(h_s), h_t)`` is added. The teacher features come from ``Logits.features``.

Several teachers (``extra_logits``) are combined by averaging their logits (an ensemble teacher).

``method`` picks the training: ``hinton`` (the above), ``mutual`` (two students learning from each
other, Deep Mutual Learning: ``tasks/mutual.py``) or ``multitask`` (one student with one head per
teacher's task: ``tasks/multitask.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.context import StepContext
from tasks.infer import capture
from tasks.models import build_model, complete_arch, count_params, make_artifact
from tasks.multitask import MultitaskConfig, train_multitask
from tasks.mutual import MutualConfig, train_mutual
from tasks.options import DistillMethod, ModelKind
from tasks.train import OptimConfig, fit
from tasks.types import Dataset, Logits, ModelArtifact


@dataclass
class DistillConfig:
    student: Any = field(default_factory=lambda: {"_target_": "tasks.models.CNN1D", "channels": [8, 8, 8]})
    # measured by benchmarks/kd_gain.py on MNIST-1D (3600 labeled + 25k transfer rows)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=10, batch_size=512, lr=1e-2))
    temperature: float = 2.0
    alpha: float = 0.9  # weight of the KD term on labeled rows (unlabeled rows: KD term only)
    use_transfer: bool = True  # also distill over the unlabeled transfer pool
    hint_layer: str = ""  # FitNets: student module name whose output is regressed ...
    teacher_feature: str = ""  # ... onto this key of Logits.features
    beta: float = 1.0  # weight of the FitNets hint loss
    kind: ModelKind = ModelKind.student_kd
    method: DistillMethod = DistillMethod.hinton
    mutual: MutualConfig = field(default_factory=MutualConfig)  # method: mutual
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)  # method: multitask


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton KD loss averaged over rows; rows with ``labels == -1`` get no CE term."""
    t = temperature
    kl = (F.softmax(teacher / t, dim=1) * (F.log_softmax(teacher / t, dim=1) - F.log_softmax(student / t, dim=1))).sum(
        dim=1
    )
    labeled = labels >= 0
    ce = F.cross_entropy(student, labels.clamp_min(0), reduction="none") * labeled
    return (alpha * t * t * kl + (1.0 - alpha) * ce).mean()


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


def use_pool(data: Dataset, use_transfer: bool, ctx: StepContext) -> bool:
    """Whether to distill over the transfer pool; without one, say so once and use the labeled rows.

    The pool is optional (an ``.npz`` need not hold ``x_unlabeled``): a step asked to use it falls
    back to the labeled training inputs instead of failing, and records ``transfer_rows = 0``.
    """
    if not use_transfer:
        return False
    rows = 0 if data.x_transfer is None else len(data.x_transfer)
    ctx.log_metrics({"transfer_rows": float(rows)})
    if rows == 0:
        ctx.note(
            "use_transfer: the data has no transfer pool (x_transfer); distilling over the labeled training inputs only"
        )
    return rows > 0


def training_rows(data: Dataset, teacher: Logits, use_transfer: bool):
    """Inputs, labels (-1 = unlabeled) and teacher logits over train (+ transfer pool)."""
    n = len(data.x_train)
    if len(teacher.train) != n:
        raise ValueError(f"distill: logits.train has {len(teacher.train)} rows, data.x_train {n}")
    if not use_transfer or data.x_transfer is None:
        return data.x_train, data.y_train, teacher.train
    if teacher.transfer is None or len(teacher.transfer) != len(data.x_transfer):
        got = None if teacher.transfer is None else len(teacher.transfer)
        raise ValueError(f"distill: logits.transfer has {got} rows, data.x_transfer {len(data.x_transfer)}")
    labels = torch.cat([data.y_train, torch.full((len(data.x_transfer),), -1, dtype=torch.long)])
    return torch.cat([data.x_train, data.x_transfer]), labels, torch.cat([teacher.train, teacher.transfer])


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


def run(
    data: Dataset, logits: Logits, extra_logits: list[Logits] | None = None, *, cfg: DistillConfig, ctx: StepContext
) -> ModelArtifact:
    """Train ``cfg.student`` on the (averaged) teacher logits with the Hinton loss (+ FitNets hint)."""
    if cfg.temperature <= 0 or not 0.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"distill: need temperature > 0 and alpha in [0, 1], got {cfg.temperature}, {cfg.alpha}")
    if bool(cfg.hint_layer) != bool(cfg.teacher_feature):
        raise ValueError("distill: set hint_layer and teacher_feature together (FitNets) or neither")
    if cfg.method == DistillMethod.multitask:  # one teacher per task: no averaging
        pool, teachers = use_pool(data, cfg.use_transfer, ctx), [logits, *(extra_logits or [])]
        rows = [training_rows(data, t, pool) for t in teachers]
        return train_multitask(data, rows, "+".join(t.teacher for t in teachers), cfg, ctx)
    teacher = average_logits([logits] + list(extra_logits or []))
    x, labels, t_logits = training_rows(data, teacher, use_pool(data, cfg.use_transfer, ctx))
    arch = complete_arch(cfg.student, data.input_shape, data.num_classes)
    if cfg.method == DistillMethod.mutual:
        return train_mutual(data, x, labels, t_logits, arch, teacher.teacher, cfg, ctx)
    ctx.seed_everything()  # seeded init: a scratch student with the same seed starts from the same weights
    student = build_model(arch, ctx.trusted_targets)
    targets: tuple[torch.Tensor, ...] = (labels, t_logits)
    extra: list[nn.Parameter] = []
    hint = None
    if cfg.hint_layer:
        if cfg.teacher_feature not in teacher.features:
            raise ValueError(
                f"distill.teacher_feature: '{cfg.teacher_feature}' not in logits.features "
                f"{sorted(teacher.features)} (set infer.features)"
            )
        feats = teacher.features[cfg.teacher_feature][: len(x)]
        store, regressor = _hint_setup(student, x, feats, cfg)
        regressor.to(ctx.device)
        extra, targets, hint = list(regressor.parameters()), targets + (feats,), (store, regressor)

    def loss_fn(s: torch.Tensor, y: torch.Tensor, t: torch.Tensor, *feat: torch.Tensor) -> torch.Tensor:
        loss = kd_loss(s, t, y, temperature=cfg.temperature, alpha=cfg.alpha)
        if hint is not None:
            loss = loss + cfg.beta * F.mse_loss(hint[1](hint[0][cfg.hint_layer]), feat[0])
        return loss

    best = fit(
        student, x, targets, loss_fn=loss_fn, cfg=cfg.optim, ctx=ctx, val=(data.x_val, data.y_val), extra_params=extra
    )
    metrics = {"val_acc": best["val_acc"], "params": float(count_params(student)), "rows": float(len(x))}
    ctx.log_metrics({"params": metrics["params"], "rows": metrics["rows"]})
    return make_artifact(student, arch, name=ctx.step, kind=cfg.kind, parent=teacher.teacher, metrics=metrics)
