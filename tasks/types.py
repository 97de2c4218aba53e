"""Values that flow between pipeline steps.

Every step returns one of these small dataclasses. They hold tensors, plain JSON-able
metadata and (for deployable models) raw ONNX bytes, so the engine can move them through
Ray's object store and persist them with safe codecs (safetensors + JSON, never pickle).
Add a new type here and to ``ARTIFACT_TYPES`` so the codec can restore it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Value:
    """A tensor with a name: the engine's toy tasks pass these around."""

    value: Tensor
    meta: dict = field(default_factory=dict)


@dataclass
class Dataset:
    """A classification data set split into train / val / test (+ an unlabeled transfer pool).

    Selection and early stopping read ``val`` only; ``test`` is for the final benchmark.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    x_transfer: Tensor | None = None  # unlabeled inputs for distillation

    @property
    def input_shape(self) -> list[int]:
        return list(self.x_train.shape[1:])


@dataclass
class ModelArtifact:
    """A model as architecture config (``_target_`` + kwargs, incl. pruned widths) + weights.

    ``kind`` is one of teacher | student_scratch | student_kd | pruned | quantized.
    ``onnx`` holds the deployable file when the model only exists as ONNX (INT8 models).
    ``metrics`` carries the step's summary (val_acc, sparsity, ...) for selection/benchmarks.
    """

    name: str
    kind: str
    arch: dict
    state_dict: dict[str, Tensor]
    parent: str | None = None
    metrics: dict = field(default_factory=dict)
    onnx: bytes | None = None


@dataclass
class Logits:
    """Teacher outputs over the training inputs (and transfer pool), computed once."""

    train: Tensor
    transfer: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)  # name -> [N, ...] on train+transfer
    teacher: str = "teacher"


@dataclass
class Report:
    """Any step's documents: JSON results plus files (PNG, Markdown) by name."""

    data: dict
    files: dict[str, bytes] = field(default_factory=dict)


ARTIFACT_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (Value, Dataset, ModelArtifact, Logits, Report)
}
