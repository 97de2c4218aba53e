"""The report's plots: accuracy (or embedding quality) against throughput and against size,
with the Pareto frontier, the selected model and the teacher marked.

matplotlib is imported when a plot is drawn (``pyplot``), never at import: it costs ~0.5 s of
every CLI start. ``png_bytes`` renders a figure and closes it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from tasks.core.types import BenchmarkReport, BenchmarkRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

KINDS = ("reference", "teacher", "student_scratch", "student_kd", "pruned", "quantized")
COLORS = {
    "reference": "black",
    "teacher": "tab:blue",
    "student_scratch": "tab:gray",
    "student_kd": "tab:green",
    "pruned": "tab:orange",
    "quantized": "tab:purple",
}

MAX_LABELS = 12  # per panel: beyond this, labels overlap on a 11-inch figure


def quality_key(bench: BenchmarkReport) -> str:
    """The row field on the quality axis: ``test_acc``, or ``cos_mean`` for embedding benchmarks."""
    return "cos_mean" if bench.task == "embedding" else "test_acc"


def _labelled(pts: list[BenchmarkRow], front: list[str]) -> list[BenchmarkRow]:
    """Rows that get a text label: selected, teacher, then frontier points (evenly, up to MAX_LABELS)."""
    must = [r for r in pts if r.selected or r.kind == "teacher"]
    on = [r for r in pts if r.name in front and r not in must]
    room = max(MAX_LABELS - len(must), 0)
    if len(on) > room:
        on = [on[round(i * (len(on) - 1) / max(room - 1, 1))] for i in range(room)] if room else []
    return must + on


def _panel(ax, rows: list[BenchmarkRow], xkey: str, front: list[str], xlabel: str, ykey: str = "test_acc") -> None:
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    pts = [r for r in rows if getattr(r, xkey) is not None and getattr(r, ykey) is not None]
    y = lambda r: getattr(r, ykey)  # noqa: E731
    for kind in sorted({r.kind for r in pts}, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k)):
        sub = [r for r in pts if r.kind == kind]
        ax.scatter(
            [getattr(r, xkey) for r in sub],
            [y(r) for r in sub],
            s=30,
            alpha=0.75,
            color=COLORS.get(kind, "black"),
            zorder=3,
        )
    on = sorted((r for r in pts if r.name in front), key=lambda r: getattr(r, xkey))
    ax.plot([getattr(r, xkey) for r in on], [y(r) for r in on], "k--", lw=1, zorder=2)
    ax.scatter([getattr(r, xkey) for r in on], [y(r) for r in on], s=80, facecolors="none", edgecolors="k", zorder=4)
    for r in pts:
        if r.selected:
            ax.scatter([getattr(r, xkey)], [y(r)], marker="*", s=260, color="red", zorder=5)
    for i, r in enumerate(_labelled(pts, front)):
        ax.annotate(
            r.name,
            (getattr(r, xkey), y(r)),
            fontsize=7,
            xytext=(4, 4 if i % 2 else -9),
            textcoords="offset points",
            zorder=6,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
        )
    ax.set_xscale("log")  # 1-2-5 ticks with SI prefixes (20k, 50k, 100k): readable over any range
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(unit="B" if xkey == "size_bytes" else "", sep=""))
    ax.margins(x=0.08)  # room for the labels of the outermost points
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")


def _legend_handles(rows: list[BenchmarkRow]) -> list[Line2D]:
    from matplotlib.lines import Line2D

    kinds = [k for k in KINDS if any(r.kind == k for r in rows)] + sorted({r.kind for r in rows} - set(KINDS))
    handles = [Line2D([], [], ls="", marker="o", color=COLORS.get(k, "black"), label=k) for k in kinds]
    return handles + [
        Line2D([], [], ls="--", color="k", marker="o", mfc="none", label="Pareto frontier"),
        Line2D([], [], ls="", marker="*", ms=14, color="red", label="selected"),
    ]


def pareto_figure(bench: BenchmarkReport, front_speed: list[str], front_size: list[str]) -> Figure:
    """Two panels: test accuracy vs throughput (b256) and vs size, both log x; legend below."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5))
    q = quality_key(bench)
    _panel(a, bench.candidates, "throughput_b256", front_speed, "throughput, samples/s (batch 256, log)", q)
    _panel(b, bench.candidates, "size_bytes", front_size, "model size, bytes (log)", q)
    handles = _legend_handles(bench.candidates)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(
        f"Accuracy / speed / size trade-off: {bench.dataset} ({len(bench.candidates)} candidates; "
        "labels: frontier, selected, teacher)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Figure, dpi: int) -> bytes:
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()
