"""Trial rows, their Pareto set, the best feasible trial, the hypervolume, the plot and table."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    trial_id: str
    values: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "finished"  # finished | stopped | failed
    run_id: str = ""

    @property
    def feasible(self) -> bool:
        return self.status == "finished" and self.metrics.get("feasible", 0.0) >= 1.0


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def dominates(a: Row, b: Row, objectives: dict[str, str]) -> bool:
    ge = all(not _better(b.metrics[k], a.metrics[k], m) for k, m in objectives.items())
    return ge and any(_better(a.metrics[k], b.metrics[k], m) for k, m in objectives.items())


def front(rows: list[Row], objectives: dict[str, str]) -> list[Row]:
    """Non-dominated finished rows over ``objectives`` (metric -> max|min)."""
    done = [r for r in rows if r.status == "finished" and all(k in r.metrics for k in objectives)]
    return [r for r in done if not any(dominates(o, r, objectives) for o in done if o is not r)]


def best(rows: list[Row], objectives: dict[str, str]) -> tuple[Row | None, bool]:
    """(the best feasible row by the first objective — ties by the next ones — , True), or the
    finished row closest to the bound and False; (None, False) if none finished. Feasibility judges
    the point ``val_acc >= bound``, so the closest is the highest val_acc, among the rows their parity
    gate did not reject (``rejected``) unless every row was: a rejected model is never deployed."""
    feasible = [r for r in rows if r.feasible]
    if feasible:
        keys = list(objectives.items())
        return max(feasible, key=lambda r: tuple(r.metrics[k] if m == "max" else -r.metrics[k] for k, m in keys)), True
    done = [r for r in rows if r.status == "finished" and "val_acc" in r.metrics]
    done = [r for r in done if not r.metrics.get("rejected")] or done
    return (max(done, key=lambda r: r.metrics["val_acc"]) if done else None), False


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both coordinates maximised) above the reference point."""
    pts = sorted({p for p in points if p[0] > ref[0] and p[1] > ref[1]}, key=lambda p: -p[0])
    area, top = 0.0, ref[1]
    for i, (x, y) in enumerate(pts):  # sweep x from the right: each strip is covered up to `top`
        top = max(top, y)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        area += (x - nxt) * (top - ref[1])
    return area


def acc_logthr(rows: list[Row]) -> list[tuple[float, float]]:
    """(val_acc, log10 throughput) of the finished rows: the benchmark's hypervolume space."""
    return [
        (r.metrics["val_acc"], math.log10(r.metrics["throughput"]))
        for r in rows
        if r.status == "finished" and r.metrics.get("throughput", 0) > 0 and "val_acc" in r.metrics
    ]


def table(rows: list[Row], objectives: dict[str, str], chosen: Row | None) -> str:
    """Markdown table of every trial (params, measures, feasibility, Pareto membership)."""
    on_front = {r.trial_id for r in front(rows, {"val_acc": "max", **objectives})}
    keys = list(dict.fromkeys(["val_acc", *objectives]))
    names = sorted({k for r in rows for k in r.values})
    head = ["trial", *[n.split(".")[-1] for n in names], *keys, "status", "feasible", "pareto"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: r.trial_id):
        cells = [r.trial_id + (" **best**" if chosen is r else "")]
        cells += [_fmt(r.values.get(n)) for n in names]
        cells += [_fmt(r.metrics.get(k)) for k in keys]
        cells += [r.status, "yes" if r.feasible else "no", "yes" if r.trial_id in on_front else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot(rows: list[Row], objectives: dict[str, str], bound: float, chosen: Row | None) -> bytes:
    """PNG: val_acc against the first objective (log axis), feasible vs not, the front, the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj, mode = next(iter(objectives.items()))
    done = [r for r in rows if r.status == "finished" and obj in r.metrics and "val_acc" in r.metrics]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for feas, colour, name in ((True, "tab:green", "feasible"), (False, "tab:grey", "infeasible")):
        pts = [r for r in done if r.feasible == feas]
        ax.scatter([r.metrics[obj] for r in pts], [r.metrics["val_acc"] for r in pts], c=colour, label=name, s=28)
    pf = sorted(front(done, {"val_acc": "max", obj: mode}), key=lambda r: r.metrics[obj])
    if pf:
        ax.plot([r.metrics[obj] for r in pf], [r.metrics["val_acc"] for r in pf], "--", c="tab:blue", label="Pareto")
    if chosen is not None and obj in chosen.metrics:
        ax.scatter([chosen.metrics[obj]], [chosen.metrics["val_acc"]], marker="*", s=200, c="tab:red", label="best")
    ax.axhline(bound, c="tab:red", lw=0.8, ls=":", label=f"bound {bound:.3f}")
    if done and min(r.metrics[obj] for r in done) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(obj + (" (higher is better)" if mode == "max" else " (lower is better)"))
    ax.set_ylabel("val_acc (deployed model)")
    ax.set_title(f"search: {len(rows)} trials, {sum(r.feasible for r in rows)} feasible")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
