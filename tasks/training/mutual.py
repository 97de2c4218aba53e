"""Two-way distillation: Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018, "Deep
Mutual Learning"), the ``distill`` method ``mutual``.

Two students are trained together; each learns from the labels and from the other's softened
outputs (and, optionally, from a teacher's logits). For student ``i`` with peer ``j``, per row:

    L_i = CE(s_i, y) + beta * T^2 * KL(softmax(s_j / T) || softmax(s_i / T))
                     + gamma * T^2 * KL(softmax(t / T) || softmax(s_i / T))

``beta = mutual.peer_weight``, ``gamma = mutual.teacher_weight`` (0: no teacher, the paper's
setting), ``T = temperature`` (the paper uses T = 1); the loss is
``tasks.training.losses.mutual_loss``, whose KL terms are Hinton's soft-target term. Rows of the
unlabeled transfer pool (label -1) get no CE term. The peer's distribution is a constant target
(detached), so the gradient of ``L_1 + L_2`` w.r.t. student 1 is that of ``L_1`` alone: one
optimizer step on the sum updates both students as the paper's alternating steps do, from the
same batch.

The pair trains through the shared loop ``tasks.training.loop.fit``: ``Pair`` returns both students'
logits side by side in training and their mean in eval mode, so ``fit`` keeps the epoch whose
two-student ensemble is best on val. The step returns one student: the better on val
(``keep: -1``) or student 0 / 1 (sweep ``params.mutual.keep: [0, 1]`` to get both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tasks.core.checks import at_least, one_of, require
from tasks.core.context import StepContext
from tasks.core.types import Dataset, ModelArtifact
from tasks.models.build import build_model, complete_arch, count_params, make_artifact
from tasks.training.loop import accuracy, fit
from tasks.training.losses import mutual_loss


@dataclass
class MutualConfig:
    peer: Any = None  # the second student's architecture; None = the same as ``student`` (another init)
    peer_weight: float = 1.0  # beta: weight of the KL toward the peer
    teacher_weight: float = 0.0  # gamma: weight of the KL toward the teacher's logits (0 = pure DML)
    keep: int = -1  # which student the step returns: -1 the better on val, 0 or 1 that one


class Pair(nn.Module):
    """Two students: ``[s1 | s2]`` (concatenated logits) in training, ``(s1 + s2) / 2`` in eval."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.students = nn.ModuleList([first, second])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.students[0](x), self.students[1](x)
        return torch.cat([a, b], dim=1) if self.training else (a + b) / 2


def check_mutual(cfg: Any) -> None:
    """The values of a ``DistillConfig`` with ``method: mutual`` (its ``__post_init__`` calls this)."""
    m = cfg.mutual
    one_of("mutual.keep", m.keep, (-1, 0, 1))  # -1: the better student on val
    at_least("mutual.peer_weight", m.peer_weight, 0)
    at_least("mutual.teacher_weight", m.teacher_weight, 0)
    require("hint_layer", not cfg.hint_layer, "FitNets hints are for method hinton, not mutual")


def train_mutual(
    data: Dataset,
    x: torch.Tensor,
    labels: torch.Tensor,
    t_logits: torch.Tensor,
    arch: dict,
    teacher_name: str,
    cfg: Any,
    ctx: StepContext,
) -> ModelArtifact:
    """Train two students by DML on the rows ``x`` (labels -1 = unlabeled); return one of them.

    ``cfg`` is the ``DistillConfig`` (``student``, ``optim``, ``temperature``, ``mutual``, ``kind``).
    """
    m = cfg.mutual
    peer_arch = arch if m.peer is None else complete_arch(m.peer, data.input_shape, data.num_classes)
    ctx.seed_everything()  # student 0 starts like a scratch/KD student of the same seed
    students = [build_model(arch, ctx.trusted_targets), build_model(peer_arch, ctx.trusted_targets)]
    pair, n = Pair(*students), data.num_classes

    def loss_fn(out: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return mutual_loss(
            out[:, :n],
            out[:, n:],
            y,
            t,
            temperature=cfg.temperature,
            peer_weight=m.peer_weight,
            teacher_weight=m.teacher_weight,
        )

    best = fit(
        pair,
        x,
        (labels, t_logits),
        loss_fn=loss_fn,
        cfg=cfg.optim,
        ctx=ctx,
        val=(data.x_val, data.y_val),
        prefix="pair_",
    )
    accs = [accuracy(s, data.x_val, data.y_val, cfg.optim.eval_batch_size) for s in students]
    keep = m.keep if m.keep >= 0 else int(accs[1] > accs[0])
    chosen, chosen_arch = students[keep], (arch, peer_arch)[keep]
    metrics = {
        "val_acc": accs[keep],
        "student0_val_acc": accs[0],
        "student1_val_acc": accs[1],
        "pair_val_acc": best["val_acc"],
        "kept_student": float(keep),
        "params": float(count_params(chosen)),
        "rows": float(len(x)),
    }
    ctx.log_metrics(metrics)
    parent = teacher_name if m.teacher_weight > 0 else None
    return make_artifact(chosen, chosen_arch, name=ctx.step, kind=cfg.kind, parent=parent, metrics=metrics)
