"""The ``benchmark`` step: every candidate model on the same test set and the same runtime.

All candidates run as ONNX on ONNX Runtime CPU with a fixed thread count (recorded), so
latency/throughput compare like with like. Torch-only candidates (FP32, pruned, fake k-bit)
are exported with ``to_onnx``; ORT INT8 candidates use their stored ONNX. Static measures come
from the torch architecture in ``state_dict``/``arch`` (for INT8 models: the FP32 weights they
were quantized from): params, nonzero params and FLOPs of one sample
(``torch.utils.flop_counter``; multiply-add = 2 FLOPs).

``no_speedup`` flags a candidate with >= 2x fewer FLOPs than the teacher but < 1.2x its
throughput (e.g. unstructured sparsity on dense kernels). ``targets`` holds the ratios that
the project's goals are stated in: selected vs teacher, and each INT8 model vs its FP32 parent,
all computed by ``Comparison.between``.

Beyond accuracy (``tasks.runtime.measure``, timed by ``tasks.runtime.timing``): embedding
candidates carry their agreement with the reference model's vectors (``cos_*``, ``top*_agree``);
``speed`` holds batch-1 latency and batch-``throughput_batch`` throughput for each of
``speed_threads``; ``torch_reference`` adds the teacher as torch FP32 (row ``torch_fp32``, the
reference the ratios are stated against). A candidate that failed its parity gate is ``rejected``
(with the figures) and never selected: a rejected ``selected`` input is replaced by ``choose``'s
pick and the report says so. With ``choose`` and no ``selected`` input, benchmark picks
(``tasks.evaluation.selection``): the highest ``throughput_b256`` among candidates that are not
rejected and meet the quality floors on the validation split; candidates whose throughput
spread over the timing rounds overlaps the fastest one's count as equally fast, and the smallest
of them is taken (``speed_tie``, 10%, only for a row without a spread). ``confidence: 0.95``
makes the quality floors hold at the interval's bound instead of the point value. ``objective``
names another figure to pick on (``selection.OBJECTIVES``); with ``serving.concurrency`` every
deployable candidate is also measured through Ray Serve over HTTP (``tasks.serving.load``:
``serve_p50_ms``, ``serve_p99_ms``, ``serve_rps``), which ``objective`` may name.

Every quality figure carries its 95% interval (``<field>_ci95``, ``tasks.evaluation.evidence``:
Wilson over the rows for accuracies, bootstrap for macro-F1 and mean cosines; MLflow gets
``_ci95_low`` / ``_ci95_high``), each accuracy delta in ``targets`` its paired interval and McNemar
p-value, and ``runner_up`` compares the selected model with the next eligible one (a note says
when the two cannot be told apart). Classification rows carry the test split's ``per_class``
figures; ``quality_metric: macro_f1`` puts ``choose``'s budget on val macro-F1 (point rule).
Every timed figure has its median and spread in ``row.timing``.

The result is a typed ``BenchmarkReport`` (rows are ``BenchmarkRow``, see ``tasks/core/types.py``):
``report`` reads it as is, and ``benchmark.json`` on the step's run is its ``to_dict()``.

Timing comes after every candidate's quality, in ``rounds`` rounds that take all candidates in
turn; each speed figure is the median over the rounds (``tasks.runtime.measure.time_rows``). Two
shared cores time one model up to ~10% apart from minute to minute; with one round, the model
timed in a slow minute looks slower than it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch

from tasks.core.checks import at_least, each_at_least, fraction, one_of, positive
from tasks.core.context import StepContext
from tasks.core.options import TaskKind
from tasks.core.types import BenchmarkReport, BenchmarkRow, Dataset, ModelArtifact
from tasks.evaluation import evidence
from tasks.evaluation.evidence import Evidence, interval_metrics, with_interval
from tasks.evaluation.selection import QUALITY_FIELDS, check_confidence, mark_selected
from tasks.evaluation.targets import flag_no_speedup, targets
from tasks.models.build import count_nonzero, count_params, flops_one_sample, load_model
from tasks.runtime import measure
from tasks.runtime import openvino as runtimes
from tasks.runtime.measure import NewTimer
from tasks.runtime.onnx import data_onnx, ort_session
from tasks.serving.load import SERVE_FIELDS, ServingLoad, check_objective, serve_rows

MEASURES = True  # timings: the cache key holds the hardware (tasks.runtime.hardware)


@dataclass
class BenchmarkConfig:
    threads: int = 1  # ORT intra-op threads for every candidate
    warmup: int = 10  # untimed runs before each timing
    iters_b1: int = 200  # timed batch-1 runs (latency percentiles)
    iters_b256: int = 50  # timed batch-256 runs (throughput)
    throughput_batch: int = 256
    rounds: int = 1  # timing rounds over all candidates in turn; each speed figure is the median
    eval_batch_size: int = 1024
    no_speedup_flops_ratio: float = 2.0  # teacher/candidate FLOPs at or above which ...
    no_speedup_throughput_ratio: float = 1.2  # ... a throughput gain below this is flagged
    int8_min_speedup: float = 1.5  # INT8 target: throughput vs its FP32 parent
    int8_max_acc_drop: float = 0.005  # INT8 target: test accuracy drop vs its FP32 parent
    speed_threads: list[int] = field(default_factory=list)  # extra thread counts timed into row.speed
    torch_reference: bool = False  # add the teacher as torch FP32 (row torch_fp32): the reference
    choose: bool = False  # without a `selected` input, pick the selected model here (see module doc)
    min_cos_mean: float = 0.99  # choose, embedding: validation cos_mean floor vs the reference
    min_cos_min: float = 0.97  # choose, embedding: validation worst-row cosine floor
    max_acc_drop: float = 0.01  # choose, classification: val accuracy (or macro-F1) floor below the teacher's
    quality_metric: str = "accuracy"  # choose, classification: what max_acc_drop is on: accuracy | macro_f1
    speed_tie: float = 0.1  # choose: within this fraction of the fastest counts as as fast; the smallest wins
    confidence: float = 0.0  # choose: 0.95 = quality floors must hold at the interval's bound (0 = point rule)
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime"])  # + openvino: tasks/runtime/openvino.py
    objective: str = "throughput_b256"  # choose: what it maximises/minimises (selection.OBJECTIVES)
    serving: ServingLoad = field(default_factory=ServingLoad)  # served figures (concurrency 0 = off)

    def __post_init__(self) -> None:
        for key in ("threads", "iters_b1", "iters_b256", "throughput_batch", "rounds", "eval_batch_size"):
            at_least(key, getattr(self, key), 1)
        at_least("warmup", self.warmup, 0)
        each_at_least("speed_threads", self.speed_threads, 1)
        for key in ("no_speedup_flops_ratio", "no_speedup_throughput_ratio", "int8_min_speedup"):
            positive(key, getattr(self, key))
        fraction("int8_max_acc_drop", self.int8_max_acc_drop)
        fraction("max_acc_drop", self.max_acc_drop)  # 1: no accuracy floor (the cosine floors are left free)
        one_of("quality_metric", self.quality_metric, QUALITY_FIELDS)
        fraction("speed_tie", self.speed_tie, open_high=True)
        check_confidence(self.confidence, "benchmark.confidence")
        check_objective(self.objective, self.serving)


def measure_row(
    art: ModelArtifact,
    data: Dataset,
    cfg: BenchmarkConfig,
    trusted: tuple[str, ...] = (),
    ref: dict | None = None,
    evid: Evidence | None = None,
    blobs: dict[str, bytes] | None = None,
) -> tuple[BenchmarkRow, NewTimer | None]:
    """One candidate's row without its speed - quality (ORT), size, params, FLOPs - and a maker of
    its timer (None for a simulated model, whose speed is never claimed)."""
    try:
        net = load_model(art, trusted)
    except Exception as e:  # noqa: BLE001 - a broken artifact is bad input, name it
        raise ValueError(f"benchmark: candidate '{art.name}' cannot be rebuilt from arch/state_dict: {e}") from None
    onnx_bytes = art.onnx if art.onnx is not None else data_onnx(net, data)
    if blobs is not None:  # what benchmark.serving deploys
        blobs[art.name] = onnx_bytes
    simulated = bool(art.metrics.get("simulated"))
    classify = data.task == TaskKind.classification
    sess = ort_session(onnx_bytes, cfg.threads) if classify else None
    rejected, reason = measure.rejection(art)
    per_row = measure.correct_splits(sess, data, cfg.eval_batch_size) if sess else None
    row = BenchmarkRow(
        name=art.name,
        kind=art.kind,
        parent=art.parent,
        test_acc=None,  # with its interval from the per-row outcomes (tasks.evaluation.evidence)
        val_acc=None,
        params=count_params(net),
        nonzero_params=count_nonzero(net),
        flops=flops_one_sample(net, data.x_test),
        size_bytes=int(art.metrics["bit_size_bytes"]) if simulated else len(onnx_bytes),
        latency_ms_p50_b1=None,  # set by timing rounds (``timed``); a simulated model is never timed
        latency_ms_p95_b1=None,
        throughput_b256=None,
        int8_onnx=art.onnx is not None and art.kind == "quantized",
        simulated=simulated,
        rejected=rejected,
        rejected_reason=reason,
    )
    if per_row is not None:
        evidence.set_fields(row, evidence.classification_fields(per_row, evidence.labels_of(data)))
    if ref is not None:
        out = measure.ort_outputs(onnx_bytes, data, cfg.eval_batch_size)
        fields = measure.embedding_fields(out, ref)
        for key, value in fields.items():
            setattr(row, key, value)
        per_row = measure.cosine_splits(out, ref)
        evidence.set_fields(row, evidence.embedding_fields(per_row, row.top1_agree))
    if evid is not None and per_row is not None:
        evid[art.name] = per_row
    return row, (None if simulated else lambda: measure.ort_timer(onnx_bytes, data.x_test, cfg.warmup))


def torch_reference_row(
    teacher: ModelArtifact,
    data: Dataset,
    cfg: BenchmarkConfig,
    trusted: tuple[str, ...],
    ref: dict | None,
    evid: Evidence | None = None,
) -> tuple[BenchmarkRow, NewTimer]:
    """The teacher as torch FP32 eager (``torch_fp32``): the baseline a plain deployment would run."""
    net = load_model(teacher, trusted)
    row = BenchmarkRow(
        name="torch_fp32",
        kind="reference",
        parent=teacher.name,
        test_acc=None,
        val_acc=None,
        params=count_params(net),
        nonzero_params=count_nonzero(net),
        flops=flops_one_sample(net, data.x_test),
        size_bytes=measure.weights_bytes(net),
        latency_ms_p50_b1=None,
        latency_ms_p95_b1=None,
        throughput_b256=None,
        runtime=f"torch {torch.__version__}",
    )
    if data.task == TaskKind.classification:
        per_row = measure.torch_correct_splits(net, data)
        evidence.set_fields(row, evidence.classification_fields(per_row, evidence.labels_of(data)))
        if evid is not None:
            evid[row.name] = per_row
    elif ref is not None:
        for key, value in measure.embedding_fields(ref, ref).items():
            setattr(row, key, value)
    return row, lambda: measure.torch_timer(net, data.x_test, cfg.warmup)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def metric_key(name: str, key: str) -> str:
    """``<candidate>/<key>`` with characters MLflow rejects in metric names (``[``, ``]``, ``=``, ...) as ``_``."""
    return re.sub(r"[^\w./\- :]", "_", name) + "/" + key


def _cell(v) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _markdown(report: BenchmarkReport) -> str:
    classify = report.task == TaskKind.classification
    quality = ["test_acc", "test_macro_f1"] if classify else ["cos_mean", "cos_min", "top1_agree"]
    cols = ["name", "kind", *quality, "params", "flops", "size_bytes", "latency_ms_p50_b1", "throughput_b256"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report.candidates:
        cells = [with_interval(r, c, lambda _, v: _cell(v)) for c in cols]  # quality figures with their 95% interval
        mark = " | ← selected" if r.selected else (f" | rejected: {r.rejected_reason}" if r.rejected else " |")
        mark = " | simulated (size at its bit width, no speed claimed)" if r.simulated else mark
        lines.append("| " + " | ".join(cells) + mark)
    title = f"Benchmark on {report.dataset} ({report.runtime}, {report.threads} thread(s))"
    return title + "\n\n" + "\n".join(lines) + "\n"


def _measure_rows(
    cands: list[ModelArtifact], data: Dataset, cfg: BenchmarkConfig, ctx: StepContext, ref: dict | None
) -> tuple[list[tuple[BenchmarkRow, NewTimer | None]], Evidence, dict[str, bytes]]:
    """Every candidate's row on ONNX Runtime, then its rows on the other ``cfg.runtimes`` (untimed
    yet), the per-row outcomes behind every row's intervals, and each candidate's ONNX."""
    measured, evid, blobs = [], Evidence(), dict[str, bytes]()
    for i, art in enumerate(cands):
        ctx.progress(f"benchmarking {art.name} ({i + 1}/{len(cands)})")
        measured.append(measure_row(art, data, cfg, ctx.trusted_targets, ref, evid, blobs))
    return measured + runtimes.runtime_rows(cands, measured, data, cfg, ref, ctx, evid), evid, blobs  # <name>@openvino


def run(
    models: list[ModelArtifact],
    data: Dataset,
    selected: ModelArtifact | None = None,
    *,
    cfg: BenchmarkConfig,
    ctx: StepContext,
) -> BenchmarkReport:
    """Benchmark ``models`` (plus ``selected`` if it is not among them) on ``data.x_test``."""
    cands = list(models)
    if selected is not None and selected.name not in {m.name for m in models}:
        cands.append(selected)
    names = [m.name for m in cands]
    if not cands or len(set(names)) != len(names):
        raise ValueError(f"benchmark.models: need >= 1 candidates with unique names, got {names}")
    ctx.seed_everything()
    cands = runtimes.with_runtimes(cands, data, cfg, ctx.trusted_targets)  # exported once for every runtime
    teacher_art = next((m for m in cands if m.kind == "teacher"), None)
    ref = None
    if data.task == TaskKind.embedding and teacher_art is not None:
        ref = measure.reference_outputs(load_model(teacher_art, ctx.trusted_targets), data)
    measured, evid, blobs = _measure_rows(cands, data, cfg, ctx, ref)
    if cfg.torch_reference and teacher_art is not None:
        measured.insert(0, torch_reference_row(teacher_art, data, cfg, ctx.trusted_targets, ref, evid))
    measure.time_rows(measured, cfg, ctx)
    rows, serve_notes = serve_rows(measured, blobs, data.x_test, cfg.threads, cfg.serving, ctx)
    sel, notes = mark_selected(rows, selected, cfg, data.task, evid)
    for note in notes:
        ctx.note(note)
    reference = rows[0] if rows[0].kind == "reference" else next((r for r in rows if r.kind == "teacher"), None)
    flag_no_speedup(rows, reference, cfg)
    report = BenchmarkReport(
        dataset=data.name,
        threads=cfg.threads,
        runtime=f"onnxruntime {_ort_version()} CPU",
        candidates=rows,
        targets=targets(rows, reference, sel, cfg, evid),
        task=str(data.task),
        notes=notes + serve_notes,
    )
    for r in rows:
        ctx.log_metrics(
            {
                metric_key(r.name, k): float(getattr(r, k))
                for k in ("test_acc", "val_acc", "test_macro_f1", "val_macro_f1", "size_bytes", "flops")
                + ("latency_ms_p50_b1", "throughput_b256", "cos_mean", "cos_min", "top1_agree", *SERVE_FIELDS)
                if getattr(r, k) is not None
            }
            | {metric_key(r.name, k): v for k, v in r.speed.items()}
            | {metric_key(r.name, k): v for k, v in [("rejected", float(r.rejected)), *interval_metrics(r).items()]}
        )
    ctx.log_file("benchmark.json", json.dumps(report.to_dict(), indent=2).encode())
    ctx.log_file("benchmark.md", _markdown(report).encode())
    return report
