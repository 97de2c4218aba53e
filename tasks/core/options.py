"""The fixed choices of task options, as Enums, so a typo fails when the config is composed.

OmegaConf validates Enum fields (not ``Literal``): ``prune.method: chanel`` is rejected with the
list of valid values before anything runs. Every member's name equals its value and the
classes are ``StrEnum``, so ``cfg.method == "channel"``, dict lookups and f-strings behave as
with the plain strings they replace.
"""

from __future__ import annotations

from enum import StrEnum


class ModelKind(StrEnum):
    """What a model artifact is, for benchmark and report (``teacher`` is the reference)."""

    teacher = "teacher"
    student_scratch = "student_scratch"
    student_kd = "student_kd"
    pruned = "pruned"
    quantized = "quantized"


class DataSource(StrEnum):
    mnist1d = "mnist1d"
    digits = "digits"
    cifar10 = "cifar10"
    npz = "npz"


class Normalize(StrEnum):
    channel = "channel"  # per channel (a scalar for [N, L] inputs)
    feature = "feature"
    none = "none"


class Optimizer(StrEnum):
    adamw = "adamw"
    sgd = "sgd"


class Scheduler(StrEnum):
    cosine = "cosine"
    none = "none"


class PruneMethod(StrEnum):
    magnitude = "magnitude"
    channel = "channel"
    gradual = "gradual"


class GradualBase(StrEnum):
    """The pruner each round of ``gradual`` pruning uses."""

    magnitude = "magnitude"
    channel = "channel"


# ``global`` is a Python keyword, hence the functional form (names must equal values: OmegaConf
# looks members up by name).
PruneScope = StrEnum("PruneScope", [("global", "global"), ("layer", "layer")])
PruneScope.__doc__ = "One threshold/ranking for all layers (global) or one per layer."


class Importance(StrEnum):
    """Channel importance criterion of structured pruning (Torch-Pruning)."""

    l1 = "l1"
    l2 = "l2"
    bn_scale = "bn_scale"
    lamp = "lamp"
    fpgm = "fpgm"
    random = "random"


class QuantMethod(StrEnum):
    fake_kbit = "fake_kbit"
    dynamic_int8 = "dynamic_int8"
    static_int8 = "static_int8"
    qat = "qat"
    int4_weight = "int4_weight"
    nncf_int8 = "nncf_int8"


class ReduceRange(StrEnum):
    """ONNX Runtime INT8 weights on 7 bits (``reduce_range``): ``auto`` = on for an x86 CPU without
    an INT8 dot-product instruction (VNNI, AMX), where the u8 x s8 kernels can saturate."""

    auto = "auto"
    on = "on"
    off = "off"


class Calibration(StrEnum):
    """ONNX Runtime static-quantization calibration method."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class TaskKind(StrEnum):
    """What a model's output means, hence how its quality is measured (``tasks.evaluation.quality``).

    ``classification``: logits scored by accuracy against labels. ``embedding``: vectors scored
    by cosine similarity and nearest-neighbour agreement with a reference model's vectors.
    """

    classification = "classification"
    embedding = "embedding"


class Quantizer(StrEnum):
    """Weight quantizer of ``quantize.method: fake_kbit`` (formulas: ``tasks.compression.quantizers``)."""

    uniform = "uniform"  # round(w / s) * s on a uniform grid (symmetric or asymmetric)
    mean = "mean"  # uniform grid over mean +- k * std
    log2 = "log2"  # sign * 2^round(log2|w|): power-of-two levels


class DistillMethod(StrEnum):
    """How ``distill`` trains: one-way Hinton KD, two-way Deep Mutual Learning, or multi-task KD."""

    hinton = "hinton"
    mutual = "mutual"
    multitask = "multitask"


class LabelMap(StrEnum):
    """A label set derived from class labels (``tasks.training.multitask``): the task a head/teacher solves."""

    identity = "identity"  # the class itself
    parity = "parity"  # class % 2
    gt4 = "gt4"  # class > 4
