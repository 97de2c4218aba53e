"""Values that flow between pipeline steps.

Every step returns one of these small dataclasses. They hold tensors, plain JSON-able
metadata and (for deployable models) raw ONNX bytes, so the engine can move them through
Ray's object store and persist them with safe codecs (safetensors + JSON, never pickle).
Add a new type here and to ``ARTIFACT_TYPES`` so the codec can restore it.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

from torch import Tensor

from tasks.core.publication import Publication, Registration
from tasks.core.row_stats import RowStats
from tasks.llm.types import CausalLM, TokenSet  # the causal-LM steps' artifacts (experiment=llm)


@dataclass
class Value:
    """A tensor with a name: the engine's toy tasks pass these around."""

    value: Tensor
    meta: dict = field(default_factory=dict)


@dataclass
class Dataset:
    """A data set split into train / val / test (+ an unlabeled transfer pool, a calibration set).

    Selection and early stopping read ``val`` only; ``test`` is for the final benchmark.

    ``task`` (a ``tasks.core.options.TaskKind``) says how outputs are judged (``tasks.evaluation.quality``):
    ``classification`` data has labels in ``y_*``; ``embedding`` data has none (``y_* = -1``,
    ``num_classes = 0``): models are judged against a reference model's outputs.

    Multi-input models (a transformer's ``input_ids``, ``attention_mask``, ``token_type_ids``):
    ``input_names`` lists the model's inputs and every ``x_*`` stacks them along dim 1
    (``[N, len(input_names), ...]``, one dtype). Rows stay rows, so slicing, batching, Ray
    transfer and the safetensors codec work unchanged; ``tasks.runtime.onnx.ort_feed`` unstacks a
    batch into the ONNX graph's named inputs. Empty ``input_names``: ``x`` is the one input.
    ``x_calib`` holds inputs set aside for quantization calibration (else training rows are used).
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
    task: str = "classification"  # tasks.core.options.TaskKind
    input_names: list[str] = field(default_factory=list)  # stacked model inputs (dim 1 of x_*)
    x_calib: Tensor | None = None  # held out for quantization calibration
    class_names: list[str] = field(default_factory=list)  # label names by class id, when the data has them

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
    """Any step's documents: JSON results plus files (PNG, Markdown) by name.

    ``publish`` is what the step wants on the pipeline's parent run and in the model registry;
    the engine publishes it (the step itself writes only to its own run).
    """

    data: dict
    files: dict[str, bytes] = field(default_factory=dict)
    publish: Publication | None = None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else float(a) / float(b)


@dataclass
class BenchmarkRow(RowStats):
    """One candidate measured by ``benchmark``: the row of ``benchmark.json`` and of the report table.

    Speed is measured on the deployed runtime (ONNX Runtime, CPU, ``BenchmarkReport.threads``
    intra-op threads): ``throughput_b256`` is samples/s at the median latency of a batch of 256
    (``tasks.runtime.timing.time_ort``), the same definition ``prune`` uses for its ``throughput``.
    ``flops`` counts one sample's forward pass with ``torch.utils.flop_counter`` (a multiply-add is
    2 FLOPs); ``size_bytes`` is the length of the ONNX file that is deployed. ``params``,
    ``nonzero_params`` and ``flops`` come from the torch architecture (an INT8 model counts the FP32
    weights it was quantized from) and are None for a candidate that exists only as ONNX.
    """

    name: str
    kind: str
    parent: str | None
    test_acc: float | None  # None for embedding models (no labels): see cos_*
    val_acc: float | None
    params: int | None
    nonzero_params: int | None
    flops: int | None
    size_bytes: int
    latency_ms_p50_b1: float | None  # None for a simulated candidate (no speed claimed)
    latency_ms_p95_b1: float | None
    throughput_b256: float | None
    int8_onnx: bool = False
    no_speedup: bool | None = None  # >= 2x fewer FLOPs than the teacher, < 1.2x its throughput
    selected: bool = False
    runtime: str = "onnxruntime"  # or "torch" (the torch FP32 reference row)
    # embedding models: agreement with the reference model's vectors (tasks.evaluation.quality) on the
    # evaluation split (cos_*, top*_agree) and on the validation split (val_cos_*, what selection reads)
    cos_mean: float | None = None
    cos_min: float | None = None
    top1_agree: float | None = None
    top5_agree: float | None = None
    val_cos_mean: float | None = None
    val_cos_min: float | None = None
    # latency_ms_b1_t<n> and throughput_b<B>_t<n> for every thread count n benchmarked
    speed: dict[str, float] = field(default_factory=dict)
    rejected: bool = False  # failed the parity gate (tasks.evaluation.quality): never selected
    # fake k-bit models (tasks.compression.quantizers): no runtime runs them as integer kernels, so their size
    # is the weights at their bit width, no speed is claimed, and they are never selected
    simulated: bool = False
    rejected_reason: str = ""  # the measured figures that failed
    node: str = ""  # where it was measured (tasks.runtime.hardware.node), and on what hardware (.describe)
    hardware: str = ""
    # benchmark.serving: through Ray Serve over HTTP on loopback at its concurrency (tasks.serving.load)
    serve_p50_ms: float | None = None
    serve_p99_ms: float | None = None
    serve_rps: float | None = None
    # classification: macro-F1 over the classes in each split's labels (a class never predicted: F1 0) and its
    # seeded bootstrap 95% interval over the rows; per_class: the test split's {class id: precision, recall, f1,
    # support} (tasks.evaluation.evidence.macro_f1_fields)
    test_macro_f1: float | None = None
    val_macro_f1: float | None = None
    test_macro_f1_ci95: list[float] | None = None
    val_macro_f1_ci95: list[float] | None = None
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Comparison:
    """``candidate`` against ``reference``: the ratios the project's goals are stated in.

    Every ratio is oriented so that > 1 is better for the candidate: ``throughput_speedup`` =
    cand/ref throughput, ``latency_speedup_b1`` = ref/cand p50 latency, ``*_reduction`` = ref/cand
    size, params, nonzero params, FLOPs. ``test_acc_delta`` = cand - ref (accuracy points as a
    fraction). A ratio is None when either side lacks the value.
    """

    candidate: str
    reference: str
    throughput_speedup: float | None
    latency_speedup_b1: float | None
    size_reduction: float | None
    params_reduction: float | None
    nonzero_params_reduction: float | None
    flops_reduction: float | None
    test_acc_delta: float | None
    meets_target: bool | None = None  # INT8 vs its FP32 parent: does it meet the INT8 target
    test_acc_delta_ci95: list[float] | None = None  # paired (same rows): Agresti-Min interval ...
    test_acc_delta_p: float | None = None  # ... and McNemar p-value (tasks.evaluation.evidence)

    @classmethod
    def between(cls, row: BenchmarkRow, ref: BenchmarkRow) -> Comparison:
        """The one place the candidate-vs-reference ratios are computed."""
        return cls(
            candidate=row.name,
            reference=ref.name,
            throughput_speedup=_ratio(row.throughput_b256, ref.throughput_b256),
            latency_speedup_b1=_ratio(ref.latency_ms_p50_b1, row.latency_ms_p50_b1),
            size_reduction=_ratio(ref.size_bytes, row.size_bytes),
            params_reduction=_ratio(ref.params, row.params),
            nonzero_params_reduction=_ratio(ref.nonzero_params, row.nonzero_params),
            flops_reduction=_ratio(ref.flops, row.flops),
            test_acc_delta=None if row.test_acc is None or ref.test_acc is None else row.test_acc - ref.test_acc,
        )


@dataclass
class Targets:
    """Selected vs teacher (None without either) and each INT8 model vs its FP32 parent."""

    teacher: str | None
    selected: str | None
    selected_vs_teacher: Comparison | None
    int8_vs_fp32: list[Comparison] = field(default_factory=list)
    int8_target: dict[str, float] = field(default_factory=dict)  # min_speedup, max_acc_drop


@dataclass
class BenchmarkReport:
    """What ``benchmark`` returns and ``report`` reads; ``benchmark.json`` is ``to_dict()`` of it."""

    dataset: str
    threads: int
    runtime: str
    candidates: list[BenchmarkRow]
    targets: Targets
    task: str = "classification"  # tasks.core.options.TaskKind: which quality fields the rows carry
    notes: list[str] = field(default_factory=list)  # e.g. a rejected model that was not selected

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BenchmarkReport:
        """Rebuild from ``benchmark.json``; a missing field raises ``ValueError`` naming it."""
        t = _build(Targets, d.get("targets"), "targets")
        t.selected_vs_teacher = (
            None
            if t.selected_vs_teacher is None
            else _build(Comparison, t.selected_vs_teacher, "targets.selected_vs_teacher")
        )
        t.int8_vs_fp32 = [_build(Comparison, c, f"targets.int8_vs_fp32[{i}]") for i, c in enumerate(t.int8_vs_fp32)]
        rows = d.get("candidates")
        if not isinstance(rows, list) or not rows:
            raise ValueError("benchmark report: 'candidates' must be a non-empty list")
        report = _build(cls, {**d, "targets": t}, "benchmark report")
        report.candidates = [_build(BenchmarkRow, r, f"candidates[{i}]") for i, r in enumerate(rows)]
        return report

    def row(self, name: str | None) -> BenchmarkRow | None:
        return next((r for r in self.candidates if r.name == name), None) if name else None

    @property
    def teacher(self) -> BenchmarkRow | None:
        return self.row(self.targets.teacher)

    @property
    def selected(self) -> BenchmarkRow | None:
        return self.row(self.targets.selected)


def _build(cls: type, d, where: str):
    """``cls(**d)`` with known fields only; a missing required field raises a one-line ValueError."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(d))
    if missing:
        raise ValueError(f"{where}{' ' + repr(d['name']) if 'name' in d else ''}: missing field(s) {missing}")
    return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


ARTIFACT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Value,
        Dataset,
        ModelArtifact,
        Logits,
        Registration,
        Publication,
        Report,
        BenchmarkRow,
        Comparison,
        Targets,
        BenchmarkReport,
        TokenSet,
        CausalLM,
    )
}
