"""The rows a distilled student trains on: the labeled training rows plus, when the data has one,
the unlabeled transfer pool (label -1: KD term only)."""

from __future__ import annotations

import torch

from tasks.core.context import StepContext
from tasks.core.types import Dataset, Logits


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
