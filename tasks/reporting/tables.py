"""The report's Markdown: a table of every benchmark candidate (★ selected, ◆ on the
quality/throughput frontier, a rejected one with the reason it was rejected), the selected
model's ratios against the teacher, and a shorter summary for the run's description (the
teacher, the selected model and the frontier only, bounded: MLflow caps a description at 8000
characters). Embedding benchmarks show cosine mean/min and top-1 agreement instead of accuracy;
classification benchmarks measured with macro-F1 show it beside each accuracy, with its interval.
"""

from __future__ import annotations

from tasks.core.types import BenchmarkReport, BenchmarkRow
from tasks.evaluation.evidence import delta_interval, spread_note, with_interval
from tasks.reporting.plots import KINDS, MAX_LABELS, quality_key

# benchmark.serving on: the served figures beside the model-only ones
SERVED_COLUMNS = [("serve_p50_ms", "served p50 ms"), ("serve_p99_ms", "served p99 ms"), ("serve_rps", "served req/s")]
COLUMNS = [
    ("name", "model"),
    ("kind", "kind"),
    ("test_acc", "test acc"),
    ("val_acc", "val acc"),
    ("params", "params"),
    ("nonzero_params", "nonzero"),
    ("flops", "FLOPs"),
    ("size_bytes", "size"),
    ("latency_ms_p50_b1", "p50 ms (b1)"),
    ("latency_ms_p95_b1", "p95 ms (b1)"),
    ("throughput_b256", "samples/s (b256)"),
]
F1_COLUMNS = [("test_macro_f1", "test macro-F1"), ("val_macro_f1", "val macro-F1")]
EMBEDDING_COLUMNS = [("cos_mean", "cos mean"), ("cos_min", "cos min"), ("top1_agree", "top-1 agree")]


def columns(bench: BenchmarkReport) -> list[tuple[str, str]]:
    served = SERVED_COLUMNS if any(r.serve_rps is not None for r in bench.candidates) else []
    if bench.task == "embedding":
        return COLUMNS[:2] + EMBEDDING_COLUMNS + COLUMNS[4:] + served
    if all(r.test_macro_f1 is None for r in bench.candidates):  # measured before macro-F1 was
        return COLUMNS + served
    (test_acc, val_acc), (test_f1, val_f1) = COLUMNS[2:4], F1_COLUMNS
    return COLUMNS[:2] + [test_acc, test_f1, val_acc, val_f1] + COLUMNS[4:] + served


def _fmt(key: str, v) -> str:
    if v is None:
        return "–"
    if key in ("test_acc", "val_acc"):
        return f"{100 * float(v):.2f}%"
    if key in ("cos_mean", "cos_min", "top1_agree", "test_macro_f1", "val_macro_f1"):
        return f"{float(v):.4f}"
    if key == "size_bytes":
        return f"{float(v) / 1024:.1f} KiB"
    if key in ("params", "nonzero_params", "flops", "throughput_b256"):
        return f"{float(v):,.0f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _sorted(rows: list[BenchmarkRow], key: str = "test_acc") -> list[BenchmarkRow]:
    """Reference and teacher first, then by kind in pipeline order, best quality first within a kind."""
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(rows, key=lambda r: (order.get(r.kind, len(KINDS)), -(getattr(r, key) or 0.0)))


def _ratios(bench: BenchmarkReport) -> list[str]:
    """Selected vs teacher, from ``targets.selected_vs_teacher`` (computed once, by the benchmark)."""
    c = bench.targets.selected_vs_teacher
    if c is None:
        return ["No selected model or no teacher among the candidates: no ratios."]

    def x(v: float | None, word: str) -> str:
        return f"{v:.2f}× {word}" if v is not None else "–"

    kind = bench.selected.kind if bench.selected is not None else "?"
    return [
        f"Selected **{c.candidate}** ({kind}) vs teacher **{c.reference}**:",
        "",
        f"- test accuracy: {100 * c.test_acc_delta:+.2f} points{delta_interval(c)}"
        if c.test_acc_delta is not None
        else f"- cosine to the reference (evaluation set): mean {_fmt('cos_mean', bench.selected.cos_mean)}, "
        f"min {_fmt('cos_min', bench.selected.cos_min)}"
        if bench.selected is not None
        else "",
        f"- size: {x(c.size_reduction, 'smaller')}",
        f"- params: {x(c.params_reduction, 'fewer')} (nonzero: {x(c.nonzero_params_reduction, 'fewer')})",
        f"- FLOPs: {x(c.flops_reduction, 'fewer')}",
        f"- throughput (b256): {x(c.throughput_speedup, 'higher')}{spread_note(bench)}",
        f"- latency p50 (b1): {x(c.latency_speedup_b1, 'lower')}",
    ]


def _table(rows: list[BenchmarkRow], front: list[str], cols: list[tuple[str, str]] = COLUMNS) -> list[str]:
    head = [label for _, label in cols] + ["note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        marks = ("★ " if r.selected else "") + ("◆ " if r.name in front else "")
        cells = [marks + _fmt(k, getattr(r, k)) if k == "name" else with_interval(r, k, _fmt) for k, _ in cols]
        cells.append(f"REJECTED ({r.rejected_reason})" if r.rejected else "no speedup" if r.no_speedup else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(bench: BenchmarkReport, front: list[str]) -> str:
    """A table of every candidate (★ selected, ◆ on the accuracy/throughput frontier) + ratios."""
    lines = [
        f"# Compression report: {bench.dataset}",
        "",
        f"Benchmark: {bench.runtime}, {bench.threads} thread(s). ★ selected, ◆ Pareto frontier "
        f"({quality_key(bench)} vs throughput).",
        "",
    ]
    table = _table(_sorted(bench.candidates, quality_key(bench)), front, columns(bench))
    notes = [f"- {n}" for n in bench.notes]
    return "\n".join(lines + table + [""] + _ratios(bench) + ([""] + notes if notes else [])) + "\n"


def summary_markdown(bench: BenchmarkReport, front: list[str]) -> str:
    """The run description: ratios first, then only the teacher, the selected model and the frontier."""
    rows = _sorted(bench.candidates, quality_key(bench))
    must = [r for r in rows if r.selected or r.kind in ("teacher", "reference") or r.rejected]
    on = [r for r in rows if r.name in front and r not in must][: max(MAX_LABELS - len(must), 0)]
    keep = [r for r in rows if r in must or r in on]  # bounded: MLflow caps a description at 8000 chars
    rest = len(bench.candidates) - len(keep)
    tail = [f"{rest} more candidate(s) in `report.md` and `pareto.png`." if rest else ""]
    return (
        "\n".join(
            [f"## Compression report: {bench.dataset}", ""]
            + _ratios(bench)
            + [""]
            + _table(keep, front, columns(bench))
            + [""]
            + [f"- {n}" for n in bench.notes]
            + tail
        ).rstrip()
        + "\n"
    )
