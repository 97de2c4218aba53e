"""Task ``benchmark``: every candidate model on the same test set and the same runtime.

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

The result is a typed ``BenchmarkReport`` (rows are ``BenchmarkRow``, see ``tasks/types.py``):
``report`` reads it as is, and ``benchmark.json`` on the step's run is its ``to_dict()``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from tasks.context import StepContext
from tasks.models import count_nonzero, count_params, load_model
from tasks.onnx_utils import ort_accuracy, ort_session, time_ort, to_onnx
from tasks.types import BenchmarkReport, BenchmarkRow, Comparison, Dataset, ModelArtifact, Targets


@dataclass
class BenchmarkConfig:
    threads: int = 1  # ORT intra-op threads for every candidate
    warmup: int = 10  # untimed runs before each timing
    iters_b1: int = 200  # timed batch-1 runs (latency percentiles)
    iters_b256: int = 50  # timed batch-256 runs (throughput)
    throughput_batch: int = 256
    eval_batch_size: int = 1024
    no_speedup_flops_ratio: float = 2.0  # teacher/candidate FLOPs at or above which ...
    no_speedup_throughput_ratio: float = 1.2  # ... a throughput gain below this is flagged
    int8_min_speedup: float = 1.5  # INT8 target: throughput vs its FP32 parent
    int8_max_acc_drop: float = 0.005  # INT8 target: test accuracy drop vs its FP32 parent


def flops_one_sample(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass on one sample (``FlopCounterMode`` counts a multiply-add as 2).

    The project's one FLOP counter: ``prune`` reports its ``flops`` with it too.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.cpu().eval()(x[:1].cpu())
    return int(counter.get_total_flops())


def measure(art: ModelArtifact, data: Dataset, cfg: BenchmarkConfig, trusted: tuple[str, ...] = ()) -> BenchmarkRow:
    """One candidate's row: accuracy (ORT), size, params, FLOPs, batch-1 latency, batch-N throughput."""
    try:
        net = load_model(art, trusted)
    except Exception as e:  # noqa: BLE001 - a broken artifact is bad input, name it
        raise ValueError(f"benchmark: candidate '{art.name}' cannot be rebuilt from arch/state_dict: {e}") from None
    onnx_bytes = art.onnx if art.onnx is not None else to_onnx(net, data.x_test[:2])
    sess = ort_session(onnx_bytes, cfg.threads)
    b1 = time_ort(sess, data.x_test, 1, cfg.warmup, cfg.iters_b1)
    bn = time_ort(sess, data.x_test, cfg.throughput_batch, cfg.warmup, cfg.iters_b256)
    return BenchmarkRow(
        name=art.name,
        kind=art.kind,
        parent=art.parent,
        test_acc=ort_accuracy(sess, data.x_test, data.y_test, cfg.eval_batch_size),
        val_acc=ort_accuracy(sess, data.x_val, data.y_val, cfg.eval_batch_size),
        params=count_params(net),
        nonzero_params=count_nonzero(net),
        flops=flops_one_sample(net, data.x_test),
        size_bytes=len(onnx_bytes),
        latency_ms_p50_b1=b1["p50_ms"],
        latency_ms_p95_b1=b1["p95_ms"],
        throughput_b256=bn["throughput"],
        int8_onnx=art.onnx is not None and art.kind == "quantized",
    )


def targets(
    rows: list[BenchmarkRow], teacher: BenchmarkRow | None, selected: BenchmarkRow | None, cfg: BenchmarkConfig
) -> Targets:
    """Selected-vs-teacher ratios (None without either) and INT8-vs-FP32-parent checks."""
    by_name = {r.name: r for r in rows}
    int8 = []
    for r in rows:
        parent = by_name.get(r.parent) if r.int8_onnx and r.parent else None
        if parent is not None:
            c = Comparison.between(r, parent)
            c.meets_target = bool(
                (c.throughput_speedup or 0.0) >= cfg.int8_min_speedup and c.test_acc_delta >= -cfg.int8_max_acc_drop
            )
            int8.append(c)
    return Targets(
        teacher=teacher.name if teacher else None,
        selected=selected.name if selected else None,
        selected_vs_teacher=Comparison.between(selected, teacher) if teacher and selected else None,
        int8_vs_fp32=int8,
        int8_target={"min_speedup": cfg.int8_min_speedup, "max_acc_drop": cfg.int8_max_acc_drop},
    )


def _flag_no_speedup(rows: list[BenchmarkRow], teacher: BenchmarkRow | None, cfg: BenchmarkConfig) -> None:
    for r in rows:
        if teacher is None or r is teacher:
            r.no_speedup = None if teacher is None else False
            continue
        c = Comparison.between(r, teacher)
        r.no_speedup = bool(
            (c.flops_reduction or 0.0) >= cfg.no_speedup_flops_ratio
            and (c.throughput_speedup or 0.0) < cfg.no_speedup_throughput_ratio
        )


def metric_key(name: str, key: str) -> str:
    """``<candidate>/<key>`` with characters MLflow rejects in metric names (``[``, ``]``, ``=``, ...) as ``_``."""
    return re.sub(r"[^\w./\- :]", "_", name) + "/" + key


def _markdown(report: BenchmarkReport) -> str:
    cols = ["name", "kind", "test_acc", "params", "flops", "size_bytes", "latency_ms_p50_b1", "throughput_b256"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report.candidates:
        cells = [f"{getattr(r, c):.4g}" if isinstance(getattr(r, c), float) else str(getattr(r, c)) for c in cols]
        lines.append("| " + " | ".join(cells) + (" | ← selected" if r.selected else " |"))
    title = f"Benchmark on {report.dataset} ({report.runtime}, {report.threads} thread(s))"
    return title + "\n\n" + "\n".join(lines) + "\n"


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
    if cfg.threads < 1 or cfg.throughput_batch < 1:
        raise ValueError(f"benchmark.threads/throughput_batch must be >= 1, got {cfg.threads}/{cfg.throughput_batch}")
    ctx.seed_everything()
    rows = []
    for i, art in enumerate(cands):
        ctx.progress(f"benchmarking {art.name} ({i + 1}/{len(cands)})")
        rows.append(measure(art, data, cfg, ctx.trusted_targets))
    for r in rows:
        r.selected = selected is not None and r.name == selected.name
    teacher = next((r for r in rows if r.kind == "teacher"), None)
    _flag_no_speedup(rows, teacher, cfg)
    sel = next((r for r in rows if r.selected), None)
    report = BenchmarkReport(
        dataset=data.name,
        threads=cfg.threads,
        runtime=f"onnxruntime {ort.__version__} CPU",
        candidates=rows,
        targets=targets(rows, teacher, sel, cfg),
    )
    for r in rows:
        ctx.log_metrics(
            {
                metric_key(r.name, k): float(getattr(r, k))
                for k in ("test_acc", "val_acc", "size_bytes", "flops", "latency_ms_p50_b1", "throughput_b256")
                if getattr(r, k) is not None
            }
        )
    ctx.log_file("benchmark.json", json.dumps(report.to_dict(), indent=2).encode())
    ctx.log_file("benchmark.md", _markdown(report).encode())
    return report
