"""The report's k-bit section: test accuracy against bits, one line per quantizer (``kbit.png``),
and a table that says what each k-bit model is - a simulation.

The ``fake_kbit`` models (``tasks/compression/quantizers.py``) hold quantized values in FP32 weights. ONNX
Runtime has integer kernels for the uniform 8-bit grid only, and that grid is deployed by the
``static_int8``/``qat`` paths, not by these models; so every row here gives the size computed at
its bit width (``bit_size_bytes``), says "simulated", and claims no speed. Accuracy is measured
(the benchmark's test accuracy of the candidate).
"""

from __future__ import annotations

from tasks.compression.quantizers import QUANTIZER_CODES
from tasks.core.types import BenchmarkReport, ModelArtifact
from tasks.reporting.plots import png_bytes, pyplot

MARKERS = {"uniform": "o", "mean": "s", "log2": "^"}


def kbit_points(bench: BenchmarkReport, kbit: list[ModelArtifact]) -> list[dict]:
    """One dict per k-bit model that the benchmark measured: quantizer, bits, accuracy, sizes."""
    names = {code: name for name, code in QUANTIZER_CODES.items()}
    points = []
    for art in kbit:
        row, m = bench.row(art.name), art.metrics
        if row is None or row.test_acc is None or "quantizer_code" not in m:
            continue
        quantizer = names.get(float(m["quantizer_code"]), "?")
        points.append(
            {
                "name": art.name,
                "quantizer": quantizer + ("" if m.get("symmetric", 1.0) else " (asym)"),
                "bits": int(m["bits"]),
                "test_acc": row.test_acc,
                "val_acc": row.val_acc,
                "bit_size_bytes": m.get("bit_size_bytes"),
                "fp32_weight_bytes": m.get("fp32_weight_bytes"),
                "parent": art.parent,
            }
        )
    return sorted(points, key=lambda p: (p["quantizer"], p["bits"]))


def kbit_markdown(points: list[dict], bench: BenchmarkReport) -> str:
    """The k-bit table; the FP32 parent's accuracy first when the benchmark has it."""
    lines = [
        "## Accuracy against bits per quantizer (simulated k-bit weights)",
        "",
        "Simulated: no ONNX Runtime integer kernel runs these models; size is computed at the bit width, "
        "speed is not claimed. The deployed INT8 model is the `static_int8`/`qat` row above.",
        "",
        "| quantizer | bits | test acc | val acc | size at bit width | FP32 weights | deployment |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        size = "–" if p["bit_size_bytes"] is None else f"{p['bit_size_bytes'] / 1024:.1f} KiB"
        fp32 = "–" if p["fp32_weight_bytes"] is None else f"{p['fp32_weight_bytes'] / 1024:.1f} KiB"
        lines.append(
            f"| {p['quantizer']} | {p['bits']} | {100 * p['test_acc']:.2f}% | {100 * p['val_acc']:.2f}% "
            f"| {size} | {fp32} | simulated |"
        )
    parents = {p["parent"] for p in points}
    for parent in sorted(x for x in parents if x):
        row = bench.row(parent)
        if row is not None and row.test_acc is not None:
            lines += ["", f"FP32 parent `{parent}`: test accuracy {100 * row.test_acc:.2f}%."]
    return "\n".join(lines) + "\n"


def kbit_figure_png(points: list[dict], bench: BenchmarkReport, dpi: int) -> bytes:
    """Test accuracy against bits, one line per quantizer, the FP32 parent as a dashed line."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for q in sorted({p["quantizer"] for p in points}):
        sub = [p for p in points if p["quantizer"] == q]
        ax.plot([p["bits"] for p in sub], [p["test_acc"] for p in sub], marker=MARKERS.get(q.split()[0], "x"), label=q)
    for parent in sorted({p["parent"] for p in points if p["parent"]}):
        row = bench.row(parent)
        if row is not None and row.test_acc is not None:
            ax.axhline(row.test_acc, ls="--", color="k", lw=1, label=f"FP32 ({parent})")
    ax.set_xticks(sorted({p["bits"] for p in points}))
    ax.set_xlabel("weight bits")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{bench.dataset}: accuracy vs bits per quantizer (simulated)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig, dpi)


def kbit_section(bench: BenchmarkReport, kbit: list[ModelArtifact], dpi: int) -> tuple[dict[str, bytes], str, dict]:
    """Files (``kbit.png``), Markdown and JSON data of the k-bit section; empty without k-bit models."""
    points = kbit_points(bench, kbit)
    if not points:
        return {}, "", {}
    return {"kbit.png": kbit_figure_png(points, bench, dpi)}, kbit_markdown(points, bench), {"kbit": points}
