"""The comparison of a multirun's executions, logged to the multirun run.

One row per execution: its name (the override values that differ between the executions:
``method=static_int8 seed=1``, see ``names``), its swept overrides, status, parent run and the
metrics on its parent run — for the compress pipeline the headline metrics that ``report``
publishes for the selected model (``selected.test_acc``, ``selected.throughput_b256``,
``selected_vs_teacher.*`` ...).
Files: ``comparison.json`` (every metric), ``comparison.md`` (the table) and ``comparison.png``
(accuracy against throughput of the selected models when the executions publish both; else a
bar chart of up to three metrics every execution has). The headline metrics of each execution
are also logged on the multirun run as ``<metric>/<execution>``, so MLflow's charts compare them.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from pipelines.store.tracking import metric_name

ACC, SPEED = "selected.test_acc", "selected.throughput_b256"
PREFERRED = (ACC, SPEED, "selected.size_bytes", "selected_vs_teacher.throughput_speedup")


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def names(overrides: list[list[str]]) -> list[str]:
    """A short name per execution: ``key=value`` of the overrides whose values differ between
    the executions, the key cut to its last segment (``pipeline.steps.quantize.params.method``
    -> ``method``), or to as many last segments as tell two such keys apart."""
    values = [dict(_split(o) for o in job) for job in overrides]
    keys = list(dict.fromkeys(k for v in values for k in v))
    differ = [k for k in keys if len({v.get(k) for v in values}) > 1]
    short = {}
    for k in differ:
        parts, n = k.split("."), 1
        while n < len(parts) and any(o != k and o.split(".")[-n:] == parts[-n:] for o in differ):
            n += 1
        short[k] = ".".join(parts[-n:])
    return [" ".join(f"{short[k]}={v[k]}" for k in differ if k in v) or "(no sweep)" for v in values]


def rows(client: MlflowClient, results: list[tuple]) -> list[dict]:
    """``results``: (job, session.Outcome, exit code) per execution, in execution order."""
    out = []
    for (job, outcome, code), name in zip(results, names([job.overrides for job, _, _ in results])):
        metrics = client.get_run(outcome.run_id).data.metrics
        out.append(
            {
                "execution": job.index,
                "name": name,
                "overrides": job.label,
                "status": "finished" if code == 0 else "failed",
                "run_id": outcome.run_id,
                "metrics": dict(sorted(metrics.items())),
            }
        )
    return out


def columns(table: list[dict], limit: int = 4) -> list[str]:
    """The metrics worth a column: the preferred headline ones present, else the first common ones."""
    present = set().union(*(r["metrics"] for r in table)) if table else set()
    chosen = [m for m in PREFERRED if m in present]
    if not chosen and table:
        common = set.intersection(*(set(r["metrics"]) for r in table))
        chosen = sorted(common)
    return chosen[:limit]


def markdown(table: list[dict]) -> str:
    cols = columns(table, limit=8)
    head = ["execution", "name", "status", *cols, "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        vals = [f"{r['metrics'][c]:.4g}" if c in r["metrics"] else "" for c in cols]
        lines.append("| " + " | ".join([str(r["execution"]), r["name"], r["status"], *vals, r["run_id"]]) + " |")
    return "# Multirun comparison\n\n" + "\n".join(lines) + "\n"


def plot(table: list[dict]) -> bytes | None:
    """PNG bytes, or None when no execution has a metric to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = [r for r in table if ACC in r["metrics"] and SPEED in r["metrics"]]
    if both:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for r in both:
            x, y = r["metrics"][SPEED], r["metrics"][ACC]
            ax.scatter([x], [y])
            ax.annotate(f"#{r['execution']} {r['name']}", (x, y), fontsize=7)
        ax.set_xscale("log")
        ax.set(xlabel="throughput, samples/s (batch 256)", ylabel="test accuracy", title="selected model per execution")
    else:
        cols = columns(table, limit=3)
        if not cols:
            return None
        fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.5), squeeze=False)
        for ax, col in zip(axes[0], cols):
            have = [r for r in table if col in r["metrics"]]
            ax.bar([f"#{r['execution']}" for r in have], [r["metrics"][col] for r in have])
            ax.set_title(col, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def log_comparison(client: MlflowClient, run_id: str, results: list[tuple], console: Console) -> list[dict]:
    """Build the comparison, log its files and per-execution metrics, print the table."""
    table = rows(client, results)
    png = plot(table)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "comparison.json").write_text(json.dumps(table, indent=2))
        Path(tmp, "comparison.md").write_text(markdown(table))
        if png:
            Path(tmp, "comparison.png").write_bytes(png)
        client.log_artifacts(run_id, tmp)
    ts = int(time.time() * 1000)
    cols = columns(table)
    metrics = [
        Metric(metric_name(f"{c}/{r['execution']}"), float(r["metrics"][c]), ts, 0)
        for r in table
        for c in cols
        if c in r["metrics"]
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    console.print(_rich(table, cols))
    return table


def _rich(table: list[dict], cols: list[str]) -> Table:
    t = Table(title="multirun comparison", expand=False)
    t.add_column("#")
    t.add_column("execution", overflow="fold")  # a name is never cut: it tells the rows apart
    for col in ("status", *cols):
        t.add_column(col)
    for r in table:
        vals = [f"{r['metrics'][c]:.4g}" if c in r["metrics"] else "" for c in cols]
        t.add_row(str(r["execution"]), r["name"], r["status"], *vals)
    return t
