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
class Registration:
    """A model a step wants in the model registry: ``name@alias`` pointing at these ONNX bytes."""

    name: str
    onnx: bytes
    alias: str = "candidate"


@dataclass
class Publication:
    """What a step wants shown on the pipeline's parent run.

    Tasks never write to a run other than their own: they return this inside their output
    (``Report.publish``) and the engine publishes it on the parent run, on the computed path
    and on the cache-hit path alike.
    """

    files: dict[str, bytes] = field(default_factory=dict)  # artifacts of the parent run
    metrics: dict[str, float] = field(default_factory=dict)  # headline metrics of the parent run
    description: str = ""  # Markdown: the parent run's description
    console: str = ""  # text shown after the step table
    models: list[Registration] = field(default_factory=list)


@dataclass
class Report:
    """Any step's documents: JSON results plus files (PNG, Markdown) by name."""

    data: dict
    files: dict[str, bytes] = field(default_factory=dict)
    publish: Publication | None = None


ARTIFACT_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (Value, Dataset, ModelArtifact, Logits, Registration, Publication, Report)
}
