"""The training losses: cross-entropy, Hinton knowledge distillation and what is built on it
(Deep Mutual Learning, multi-task KD), and embedding distillation. Each is a plain function of
``(outputs, *targets)`` that ``tasks.training.loop.fit`` takes as its ``loss_fn``.

There is one KD formula, ``soft_target_term`` (Hinton, Vinyals & Dean 2015, "Distilling the
Knowledge in a Neural Network"); ``kd_loss``, ``mutual_loss`` and ``multitask_loss`` call it.
Labels of ``-1`` mark rows of the unlabeled transfer pool: they get no cross-entropy term
(``masked_ce``), only the soft-target terms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.core.options import TaskKind
from tasks.evaluation.quality import primary_metric


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy averaged over rows (every row labeled): teacher training, plain fine-tuning."""
    return F.cross_entropy(logits, y)


def masked_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-row cross-entropy; 0 for rows with ``labels == -1`` (unlabeled transfer rows)."""
    return F.cross_entropy(logits, labels.clamp_min(0), reduction="none") * (labels >= 0)


def soft_target_term(student: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Hinton's soft-target term per row (Hinton, Vinyals & Dean 2015):

        T^2 * KL(softmax(t_i / T) || softmax(s_i / T))

    ``target`` is the teacher's (or a peer's) logits. The T^2 factor keeps the soft-target
    gradients at the same scale when the temperature ``T`` changes.
    """
    t = temperature
    log_p = F.log_softmax(target / t, dim=1)
    return t * t * (log_p.exp() * (log_p - F.log_softmax(student / t, dim=1))).sum(dim=1)


def kd_loss(student: Tensor, teacher: Tensor, labels: Tensor, *, temperature: float, alpha: float) -> Tensor:
    """Hinton KD loss averaged over rows; rows with ``labels == -1`` get no CE term:

    loss_i = alpha * T^2 * KL(softmax(t_i / T) || softmax(s_i / T)) + (1 - alpha) * CE(s_i, y_i)
    """
    soft = soft_target_term(student, teacher, temperature)
    return (alpha * soft + (1.0 - alpha) * masked_ce(student, labels)).mean()


def mutual_loss(
    s1: Tensor,
    s2: Tensor,
    labels: Tensor,
    teacher: Tensor | None = None,
    *,
    temperature: float,
    peer_weight: float,
    teacher_weight: float = 0.0,
) -> Tensor:
    """Deep Mutual Learning (Zhang et al. 2018): ``mean(L_1 + L_2)`` over rows, where for student
    ``i`` with peer ``j``

        L_i = CE(s_i, y) + beta * T^2 * KL(p_j || p_i) + gamma * T^2 * KL(p_t || p_i)

    (``p = softmax(. / T)``, the KL terms are ``soft_target_term``). Each peer is a detached
    target of the other, so one step on the sum updates both students as alternating steps do.
    """
    total = torch.zeros((), dtype=s1.dtype, device=s1.device)
    for me, peer in ((s1, s2), (s2, s1)):
        loss = masked_ce(me, labels) + peer_weight * soft_target_term(me, peer.detach(), temperature)
        if teacher is not None and teacher_weight > 0:
            loss = loss + teacher_weight * soft_target_term(me, teacher, temperature)
        total = total + loss.mean()
    return total


def multitask_loss(
    heads: Sequence[Tensor],
    labels: Sequence[Tensor],
    teachers: Sequence[Tensor],
    weights: Sequence[float],
    temperature: float,
    alpha: float,
) -> Tensor:
    """Multi-task KD: ``sum_k w_k * kd_loss(s_k, t_k, y_k)`` over head ``k``'s logits ``s_k``, its
    teacher's logits ``t_k`` and its labels ``y_k`` (one Hinton loss per head)."""
    total = heads[0].new_zeros(())
    for w, s, t, y in zip(weights, heads, teachers, labels):
        total = total + w * kd_loss(s, t, y, temperature=temperature, alpha=alpha)
    return total


def embedding_loss(student: Tensor, teacher: Tensor, *, mse_weight: float = 1.0) -> Tensor:
    """Embedding distillation: ``mean(1 - cos(s_i, t_i)) + mse_weight * MSE(s, t)``.

    The cosine term is what the embedding is judged on (direction); the MSE term also pins the
    scale, so a student can stand in for the teacher where norms matter. (Sentence-embedding
    distillation as in Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings
    Multilingual using Knowledge Distillation", which uses the MSE term alone.)
    """
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=1)
    return (1.0 - cos).mean() + mse_weight * F.mse_loss(student.float(), teacher.float())


def loss_for(
    kind: TaskKind | str, *, temperature: float = 2.0, alpha: float = 0.9, mse_weight: float = 1.0
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The distillation / fine-tuning loss of a kind as ``loss(student_out, labels, teacher_out)``.

    The argument order matches ``tasks.training.loop.fit``'s targets ``(labels, teacher_outputs)``;
    embedding losses ignore ``labels`` (pass any tensor of the right length, e.g. ``-1`` rows).
    """
    primary_metric(kind)  # validates the kind
    if kind == TaskKind.classification:
        return lambda s, y, t: kd_loss(s, t, y, temperature=temperature, alpha=alpha)
    return lambda s, y, t: embedding_loss(s, t, mse_weight=mse_weight)
