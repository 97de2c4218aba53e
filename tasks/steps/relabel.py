"""The ``relabel`` step: the same inputs with a derived label set (a teacher for that task trains on it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tasks.core.context import StepContext
from tasks.core.options import LabelMap
from tasks.core.types import Dataset
from tasks.models.multihead import derive_labels, head_classes


@dataclass
class RelabelConfig:
    labels: LabelMap = LabelMap.parity


def run(data: Dataset, *, cfg: RelabelConfig, ctx: StepContext) -> Dataset:
    """The same inputs with the labels of task ``cfg.labels`` (a teacher for that task trains on it)."""
    n = head_classes(str(cfg.labels), data.num_classes)
    if cfg.labels != LabelMap.identity and data.num_classes < 2:
        raise ValueError(f"relabel.labels: '{cfg.labels}' needs class labels, the data has {data.num_classes}")
    out = dataclasses.replace(
        data,
        name=f"{data.name}-{cfg.labels}",
        y_train=derive_labels(data.y_train, str(cfg.labels)),
        y_val=derive_labels(data.y_val, str(cfg.labels)),
        y_test=derive_labels(data.y_test, str(cfg.labels)),
        num_classes=n,
    )
    ctx.log_metrics({"num_classes": float(n), "positive_rate": float(out.y_train.float().mean()) if n == 2 else -1.0})
    return out
