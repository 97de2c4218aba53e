"""Task ``report``: turn the benchmark JSON into a Pareto plot, a Markdown table and a registered model.

The benchmark lists every candidate (teacher, students, pruned, quantized) with accuracy, size and
speed. A candidate is on the Pareto frontier when no other candidate is at least as good on every
objective and strictly better on one; the plot shows accuracy against throughput and against size,
so the trade-off the pipeline's selection made is visible at a glance. The selected model's ONNX
is registered in the model registry under alias ``candidate``; promotion is a human's call.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import NullFormatter  # noqa: E402
import torch  # noqa: E402

from tasks.context import StepContext  # noqa: E402
from tasks.types import ModelArtifact, Report  # noqa: E402

KINDS = ("teacher", "student_scratch", "student_kd", "pruned", "quantized")
COLORS = {"teacher": "tab:blue", "student_scratch": "tab:gray", "student_kd": "tab:green",
          "pruned": "tab:orange", "quantized": "tab:purple"}
COLUMNS = [("name", "model"), ("kind", "kind"), ("test_acc", "test acc"), ("val_acc", "val acc"),
           ("params", "params"), ("nonzero_params", "nonzero"), ("flops", "FLOPs"), ("size_bytes", "size"),
           ("latency_ms_p50_b1", "p50 ms (b1)"), ("latency_ms_p95_b1", "p95 ms (b1)"),
           ("throughput_b256", "samples/s (b256)")]


@dataclass
class ReportConfig:
    pipeline: str = "compress"  # names the registered model: <pipeline>-<dataset>
    registry_name: str = ""  # overrides the registered model's name when set
    alias: str = "candidate"
    dpi: int = 110


def pareto_front(points: list[dict], objectives: dict[str, str]) -> list[str]:
    """Names of the non-dominated points; ``objectives`` maps a key to "max" or "min".

    ``a`` dominates ``b`` when it is no worse on every objective and better on at least one.
    Points missing an objective value (None) are left out. Input order is kept.
    """
    sign = {k: 1.0 if d == "max" else -1.0 for k, d in objectives.items()}
    pts = [p for p in points if all(p.get(k) is not None for k in objectives)]
    vals = [tuple(sign[k] * float(p[k]) for k in objectives) for p in pts]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))
    return [p["name"] for p, v in zip(pts, vals) if not any(dominates(w, v) for w in vals)]


def _fmt(key: str, v) -> str:
    if v is None:
        return "–"
    if key in ("test_acc", "val_acc"):
        return f"{100 * float(v):.2f}%"
    if key == "size_bytes":
        return f"{float(v) / 1024:.1f} KiB"
    if key in ("params", "nonzero_params", "flops", "throughput_b256"):
        return f"{float(v):,.0f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _sorted(cands: list[dict]) -> list[dict]:
    """Teacher first, then by kind in pipeline order, best test accuracy first within a kind."""
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(cands, key=lambda c: (order.get(c.get("kind"), len(KINDS)), -float(c.get("test_acc") or 0)))


def _ratios(sel: dict | None, teacher: dict | None) -> list[str]:
    """Selected vs teacher: accuracy change, x smaller, x faster (throughput and p50 latency)."""
    if sel is None or teacher is None:
        return ["No selected model or no teacher among the candidates: no ratios."]

    def ratio(a, b):
        return f"{float(a) / float(b):.2f}×" if a is not None and b not in (None, 0) else "–"
    d_acc = (f"{100 * (float(sel['test_acc']) - float(teacher['test_acc'])):+.2f} points"
             if sel.get("test_acc") is not None and teacher.get("test_acc") is not None else "–")
    return [f"Selected **{sel['name']}** ({sel.get('kind')}) vs teacher **{teacher['name']}**:", "",
            f"- test accuracy: {d_acc}",
            f"- size: {ratio(teacher.get('size_bytes'), sel.get('size_bytes'))} smaller",
            f"- params (nonzero): {ratio(teacher.get('nonzero_params'), sel.get('nonzero_params'))} fewer",
            f"- throughput (b256): {ratio(sel.get('throughput_b256'), teacher.get('throughput_b256'))} higher",
            f"- latency p50 (b1): {ratio(teacher.get('latency_ms_p50_b1'), sel.get('latency_ms_p50_b1'))} lower"]


def markdown(bench: dict, front: list[str]) -> str:
    """A table of every candidate (★ selected, ◆ on the accuracy/throughput frontier) + ratios."""
    cands = _sorted(bench["candidates"])
    head = [label for _, label in COLUMNS] + ["note"]
    lines = [f"# Compression report: {bench.get('dataset', '?')}", "",
             f"Benchmark threads: {bench.get('threads', '?')}. ★ selected, ◆ Pareto frontier "
             "(test accuracy vs throughput).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cands:
        marks = ("★ " if c.get("selected") else "") + ("◆ " if c["name"] in front else "")
        cells = [marks + _fmt(k, c.get(k)) if k == "name" else _fmt(k, c.get(k)) for k, _ in COLUMNS]
        cells.append("no speedup" if c.get("no_speedup") else "")
        lines.append("| " + " | ".join(cells) + " |")
    sel = next((c for c in cands if c.get("selected")), None)
    teacher = next((c for c in cands if c.get("kind") == "teacher"), None)
    return "\n".join(lines + [""] + _ratios(sel, teacher)) + "\n"


def _panel(ax, cands: list[dict], xkey: str, front: list[str], xlabel: str, logx: bool) -> None:
    pts = [c for c in cands if c.get(xkey) is not None and c.get("test_acc") is not None]
    for kind in sorted({c.get("kind") for c in pts}, key=str):
        sub = [c for c in pts if c.get("kind") == kind]
        ax.scatter([c[xkey] for c in sub], [c["test_acc"] for c in sub], s=36, alpha=0.8,
                   color=COLORS.get(kind, "black"), label=kind)
    on = sorted((c for c in pts if c["name"] in front), key=lambda c: c[xkey])
    ax.plot([c[xkey] for c in on], [c["test_acc"] for c in on], "k--", lw=1, label="Pareto frontier")
    ax.scatter([c[xkey] for c in on], [c["test_acc"] for c in on], s=80, facecolors="none", edgecolors="k")
    for c in pts:
        if c.get("selected"):
            ax.scatter([c[xkey]], [c["test_acc"]], marker="*", s=260, color="red", zorder=5, label="selected")
        ax.annotate(c["name"], (c[xkey], c["test_acc"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)


def pareto_png(bench: dict, front_speed: list[str], front_size: list[str], dpi: int) -> bytes:
    """Two panels: accuracy vs throughput (b256) and vs size (log x); frontier dashed, selected ★."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    try:
        _panel(a, bench["candidates"], "throughput_b256", front_speed, "throughput, samples/s (batch 256)", False)
        _panel(b, bench["candidates"], "size_bytes", front_size, "model size, bytes (log)", True)
        a.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"Accuracy / speed / size trade-off: {bench.get('dataset', '?')}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _onnx_bytes(selected: ModelArtifact, trusted: tuple[str, ...] = ()) -> bytes:
    """The artifact's ONNX, or an export of its torch model at batch 1 when it has none."""
    if selected.onnx is not None:
        return selected.onnx
    from tasks.models import load_model
    from tasks.onnx_utils import to_onnx  # written alongside; imported only when needed
    example = torch.zeros(1, *selected.arch["input_shape"])
    return to_onnx(load_model(selected, trusted), example)


def _validate(bench: Report) -> list[dict]:
    cands = bench.data.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise ValueError("report: bench.data['candidates'] must be a non-empty list")
    for c in cands:
        if "name" not in c or "kind" not in c:
            raise ValueError(f"report: candidate without 'name'/'kind': {sorted(c)}")
    return cands


def run(bench: Report, selected: ModelArtifact | None = None, *, cfg: ReportConfig, ctx: StepContext) -> Report:
    """Write pareto.png + report.md to the pipeline run and register ``selected``'s ONNX."""
    cands = _validate(bench)
    front = pareto_front(cands, {"test_acc": "max", "throughput_b256": "max"})
    front_size = pareto_front(cands, {"test_acc": "max", "size_bytes": "min"})
    md = markdown(bench.data, front)
    png = pareto_png(bench.data, front, front_size, cfg.dpi)
    ctx.log_file("pareto.png", png, parent=True)
    ctx.log_file("report.md", md.encode(), parent=True)
    registered = None
    if selected is not None:
        registered = cfg.registry_name or f"{cfg.pipeline}-{bench.data.get('dataset', 'data')}"
        ctx.register_onnx(registered, _onnx_bytes(selected, ctx.trusted_targets), alias=cfg.alias)
    ctx.log_metrics({"candidates": len(cands), "pareto_size": len(front)})
    data = {"table_md": md, "pareto_front": front, "pareto_front_size": front_size, "console": md,
            "registered": f"{registered}@{cfg.alias}" if registered else None}
    return Report(data=data, files={"pareto.png": png, "report.md": md.encode()})
