"""Multi-task distillation: one student, one head per task, each head taught by its own teacher
(the ``distill`` method ``multitask``; a task's labels come from ``tasks.models.multihead.derive_labels``,
which the ``relabel`` step, ``tasks/steps/relabel.py``, also applies).

The tasks share their inputs and differ in what they predict: on MNIST-1D the digit class
(``identity``) and a label set derived from it (``parity``: class % 2, ``gt4``: class > 4). Each
task has a teacher trained on its labels; the student is a shared trunk whose output layer is
split into one head per task (``MultiHead``). Per row, with ``s_k`` head k's logits, ``t_k`` task
k's teacher logits and ``y_k`` the derived label (Hinton KD per head, summed with config weights):

    L = sum_k w_k * [ alpha * T^2 * KL(softmax(t_k / T) || softmax(s_k / T)) + (1 - alpha) * CE(s_k, y_k) ]

(unlabeled transfer-pool rows: no CE term; ``tasks.training.losses.multitask_loss``). This is
multi-task knowledge distillation in the sense of Li & Bilen 2020 ("Knowledge Distillation for
Multi-task Learning") and Clark et al. 2019 ("BAM! Born-Again Multi-Task Networks"): task-specific
teachers, one multi-head student. Head 0 must be ``identity``: it is what ``forward`` returns in
eval mode (ONNX export, the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tasks.core.checks import require
from tasks.core.context import StepContext
from tasks.core.options import LabelMap
from tasks.core.types import Dataset, ModelArtifact
from tasks.models.build import complete_arch, count_params, make_artifact
from tasks.models.multihead import MULTIHEAD, MultiHead, derive_labels, head_accuracies, head_classes
from tasks.training.loop import fit
from tasks.training.losses import multitask_loss


@dataclass
class MultitaskConfig:
    # the task of each teacher, in input order (logits, then extra_logits); heads[0] must be identity
    heads: list[LabelMap] = field(default_factory=lambda: [LabelMap.identity, LabelMap.parity])
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0])  # loss weight w_k per task


def check_multitask(cfg: Any) -> None:
    """The values of a ``DistillConfig`` with ``method: multitask`` (its ``__post_init__`` calls
    this); that there is one head per teacher is checked with the inputs (``_check``)."""
    m = cfg.multitask
    require(
        "multitask.weights",
        len(m.heads) == len(m.weights),
        f"one weight per head, got heads={[str(h) for h in m.heads]} weights={list(m.weights)}",
    )
    require(
        "multitask.heads[0]",
        bool(m.heads) and str(m.heads[0]) == LabelMap.identity,
        f"must be identity (the data's own labels), got {[str(h) for h in m.heads][:1]}",
    )
    ok = all(w >= 0 for w in m.weights) and sum(m.weights) > 0
    require("multitask.weights", ok, f"must be >= 0 with a positive sum, got {list(m.weights)}")
    require("hint_layer", not cfg.hint_layer, "FitNets hints are for method hinton, not multitask")


def _check(data: Dataset, rows: list, cfg: Any) -> None:
    m = cfg.multitask
    if not len(m.heads) == len(m.weights) == len(rows):
        raise ValueError(
            f"distill.multitask: {len(rows)} teacher(s) (logits + extra_logits) need as many heads and weights, "
            f"got heads={[str(h) for h in m.heads]} weights={list(m.weights)}"
        )
    for k, (label, (_, _, t)) in enumerate(zip(m.heads, rows)):
        want = head_classes(str(label), data.num_classes)
        if t.shape[1] != want:
            raise ValueError(
                f"distill.multitask.heads[{k}]: '{label}' has {want} classes, its teacher's logits {t.shape[1]}"
            )


def train_multitask(data: Dataset, rows: list, parent: str, cfg: Any, ctx: StepContext) -> ModelArtifact:
    """Train one ``MultiHead`` student from one teacher per head; ``rows[k] = (x, labels, logits_k)``.

    ``cfg`` is the ``DistillConfig`` (``student`` is the trunk; ``temperature``, ``alpha``, ``optim``).
    """
    _check(data, rows, cfg)
    heads, weights = [str(h) for h in cfg.multitask.heads], list(cfg.multitask.weights)
    x, labels = rows[0][0], rows[0][1]
    arch = {**complete_arch({"_target_": MULTIHEAD}, data.input_shape, data.num_classes)}
    arch.update(trunk=dict(cfg.student), heads=heads)  # what load_model rebuilds (trusted_models)
    ctx.seed_everything()
    net = MultiHead(data.input_shape, data.num_classes, dict(cfg.student), heads)
    derived = [derive_labels(labels, h) for h in heads]

    def loss_fn(out: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
        ys, ts = targets[: len(heads)], targets[len(heads) :]
        return multitask_loss(list(torch.split(out, net.sizes, dim=1)), ys, ts, weights, cfg.temperature, cfg.alpha)

    targets = (*derived, *(r[2] for r in rows))
    best = fit(net, x, targets, loss_fn=loss_fn, cfg=cfg.optim, ctx=ctx, val=(data.x_val, data.y_val))
    per_head = head_accuracies(net, data.x_val, data.y_val)
    metrics = {"val_acc": best["val_acc"], "params": float(count_params(net)), "rows": float(len(x))}
    metrics.update({f"val_acc_{h}": a for h, a in per_head.items()})
    ctx.log_metrics(metrics)
    return make_artifact(net, arch, name=ctx.step, kind=cfg.kind, parent=parent, metrics=metrics)
