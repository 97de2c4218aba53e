"""Quality per task kind: the metrics and the primary metric of each kind, and the parity gate.

A pipeline has one ``TaskKind`` (``tasks.core.options``); distillation, fine-tuning after pruning,
quantization, benchmark, report and selection ask this module what "good" means for it instead
of assuming classification accuracy (the training loss of each kind: ``tasks.training.losses``):

* ``classification`` - outputs are logits. Quality = top-1 accuracy against labels
  (``val_acc`` on the validation split). Loss = Hinton KD + CE (``tasks.training.losses.kd_loss``).
* ``embedding`` - outputs are vectors (e.g. mean-pooled sentence embeddings). There are no
  labels: quality is agreement with a *reference* model's vectors on the same inputs (the FP32
  teacher), ``embedding_quality``: cosine similarity per row (mean and worst row) and retrieval
  agreement (does the candidate find the same nearest neighbours as the reference). Loss =
  cosine distance + MSE to the teacher's vectors (``tasks.training.losses.embedding_loss``).

``parity`` and ``gate_failures`` are the parity gate: a deployed model (e.g. ORT INT8) compared
with its reference (the FP32 model, or the fake-quant simulation it came from) on held-out rows;
a model that misses the bounds is ``rejected`` and never selected.

Metric names are plain (``cos_mean``); a caller prefixes the split where it matters
(``val_acc`` is the historical name of classification quality on the validation split).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.core.checks import fraction
from tasks.core.options import TaskKind

PRIMARY_METRIC: dict[TaskKind, str] = {
    TaskKind.classification: "val_acc",
    TaskKind.embedding: "cos_mean",
}
"""The one number per kind that selection, early stopping and gates compare (higher is better)."""

EMBEDDING_METRICS = ("cos_mean", "cos_min", "top1_agree", "top5_agree")


def primary_metric(kind: TaskKind | str) -> str:
    """Name of the kind's headline quality metric (higher is better); a bad kind names itself."""
    try:
        return PRIMARY_METRIC[TaskKind(kind)]
    except ValueError:
        raise ValueError(f"task kind: unknown value '{kind}' ({' | '.join(TaskKind)})") from None


def classification_quality(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """``{"acc": top-1 accuracy}`` (NaN without rows)."""
    if len(labels) == 0:
        return {"acc": float("nan")}
    return {"acc": float((torch.as_tensor(logits).argmax(1) == torch.as_tensor(labels)).float().mean())}


def _neighbours(emb: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` most cosine-similar *other* rows of each row, best first: [N, k]."""
    unit = F.normalize(emb.float(), dim=1)
    sim = unit @ unit.T
    sim.fill_diagonal_(-float("inf"))  # a row is not its own neighbour
    return sim.topk(min(k, len(emb) - 1), dim=1).indices


def embedding_quality(emb: Tensor, reference: Tensor) -> dict[str, float]:
    """How closely ``emb`` reproduces ``reference`` (both [N, D], same rows in the same order).

    * ``cos_mean`` / ``cos_min``: cosine similarity of each row with its reference row, averaged
      and at the worst row (one bad sentence is what a user notices).
    * ``top1_agree``: fraction of rows whose nearest other row (cosine, the retrieval use of a
      sentence embedding) is the same under ``emb`` as under ``reference``.
    * ``top5_agree``: fraction of rows whose reference nearest neighbour is among the 5 nearest
      under ``emb`` (a candidate that reorders near-ties but retrieves the same item scores 1).
    Retrieval needs >= 2 rows (NaN otherwise).
    """
    emb, reference = torch.as_tensor(emb).float(), torch.as_tensor(reference).float()
    if emb.shape != reference.shape or emb.dim() != 2:
        raise ValueError(f"embedding quality: shapes {list(emb.shape)} and {list(reference.shape)} differ or not 2-D")
    if len(emb) == 0:
        return dict.fromkeys(EMBEDDING_METRICS, float("nan"))
    cos = F.cosine_similarity(emb, reference, dim=1)
    out = {"cos_mean": float(cos.mean()), "cos_min": float(cos.min())}
    if len(emb) < 2:
        return {**out, "top1_agree": float("nan"), "top5_agree": float("nan")}
    ref_nn = _neighbours(reference, 1)[:, 0]
    cand = _neighbours(emb, 5)
    out["top1_agree"] = float((cand[:, 0] == ref_nn).float().mean())
    out["top5_agree"] = float((cand == ref_nn[:, None]).any(dim=1).float().mean())
    return out


def quality(
    kind: TaskKind | str, outputs: Tensor, *, labels: Tensor | None = None, reference: Tensor | None = None
) -> dict[str, float]:
    """The kind's quality metrics of ``outputs``: accuracy against ``labels`` (classification,
    key ``acc``) or agreement with ``reference`` (embedding, ``EMBEDDING_METRICS``)."""
    primary_metric(kind)  # validates the kind
    if kind == TaskKind.classification:
        if labels is None:
            raise ValueError("classification quality needs labels")
        return classification_quality(outputs, labels)
    if reference is None:
        raise ValueError("embedding quality needs the reference model's outputs")
    return embedding_quality(outputs, reference)


@dataclass
class GateConfig:
    """Parity gate thresholds: how close a deployed (ORT) model must stay to its reference.

    Classification: top-1 ``agreement`` with the reference's predictions; or, with
    ``max_acc_drop`` set, accuracy on the held-out labels at most that far below the reference's
    (``acc_drop``, Intel Neural Compressor's accuracy criterion) - for a low-margin classifier
    whose top-1 flips between wrong classes under quantization without costing accuracy.
    Embedding: cosine to the reference's vectors, mean and worst row. Measured on held-out rows
    (the validation split).
    """

    enabled: bool = True
    min_agreement: float = 0.97
    max_acc_drop: float | None = None  # classification: gate on accuracy instead of agreement
    min_cos_mean: float = 0.99
    min_cos_min: float = 0.9

    def __post_init__(self) -> None:
        # the floors are left free: one above 1 is how a test forces a rejection
        if self.max_acc_drop is not None:
            fraction("max_acc_drop", self.max_acc_drop, open_high=True)


def parity(kind: TaskKind | str, outputs: Tensor, reference: Tensor, labels: Tensor | None = None) -> dict[str, float]:
    """Agreement of ``outputs`` with ``reference`` on the same rows: top-1 ``agreement`` and
    ``max_abs_diff`` (classification; with ``labels`` also ``acc_drop``, the reference's accuracy
    minus the outputs') or ``EMBEDDING_METRICS`` + ``max_abs_diff`` (embedding)."""
    outputs, reference = torch.as_tensor(outputs).float(), torch.as_tensor(reference).float()
    if outputs.shape != reference.shape:
        raise ValueError(f"parity: output shape {list(outputs.shape)} != reference shape {list(reference.shape)}")
    if len(outputs) == 0:
        raise ValueError("parity: no rows to compare")
    diff = {"max_abs_diff": float((outputs - reference).abs().max())}
    if primary_metric(kind) == PRIMARY_METRIC[TaskKind.classification]:
        top1, ref1 = outputs.argmax(1), reference.argmax(1)
        stats = {**diff, "agreement": float((top1 == ref1).float().mean())}
        if labels is not None:
            y = torch.as_tensor(labels).view(-1)
            stats["acc_drop"] = float((ref1 == y).float().mean() - (top1 == y).float().mean())
        return stats
    return {**diff, **embedding_quality(outputs, reference)}


def gate_failures(kind: TaskKind | str, stats: dict[str, float], cfg: GateConfig) -> list[str]:
    """The gate's verdict on ``parity`` stats: one ``"<metric> <value> < <bound>"`` (or ``>`` for
    ``acc_drop``) per failed bound."""
    if not cfg.enabled:
        return []
    if primary_metric(kind) == PRIMARY_METRIC[TaskKind.classification]:
        if cfg.max_acc_drop is not None:
            if "acc_drop" not in stats:
                raise ValueError("gate.max_acc_drop needs the held-out labels (parity(..., labels=))")
            drop = stats["acc_drop"]
            return [] if drop <= cfg.max_acc_drop else [f"acc_drop {drop:.4f} > {cfg.max_acc_drop}"]
        bounds = {"agreement": cfg.min_agreement}
    else:
        bounds = {"cos_mean": cfg.min_cos_mean, "cos_min": cfg.min_cos_min}
    return [f"{k} {stats[k]:.4f} < {b}" for k, b in bounds.items() if not stats[k] >= b]  # NaN fails
