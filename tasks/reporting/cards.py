"""Model cards: every benchmarked candidate as a card ``{"name", "metrics", "params"}`` in
``Publication.candidates`` (``tasks.core.types``), which the engine logs as an MLflow logged
model, so the experiment's models view compares them; the card of the registered model also
becomes its registry version's tags.

A card's metrics are the benchmark row's figures (quality, size, params, FLOPs, latency and
throughput, each thread count of ``speed``); its params say what the model is (kind, parent,
selected, rejected and why) and how its speed was measured: runtime, threads and the hardware.
The hardware is the row's own record when the benchmark names it (a ``hardware`` field), else
this machine (``machine()``): the report runs where the benchmark ran on a single machine, not
necessarily on a cluster.
"""

from __future__ import annotations

import json
import os
import platform
from functools import cache

from tasks.core.types import BenchmarkReport, BenchmarkRow

ModelCard = dict  # {"name": str, "metrics": {figure: float}, "params": {key: str}}

CARD_METRICS = (
    "test_acc",
    "val_acc",
    "test_macro_f1",
    "val_macro_f1",
    "cos_mean",
    "cos_min",
    "top1_agree",
    "size_bytes",
    "params",
    "nonzero_params",
    "flops",
    "latency_ms_p50_b1",
    "latency_ms_p95_b1",
    "throughput_b256",
)


@cache
def machine() -> str:
    """``<CPU model>, <n> CPUs, <arch>, <OS>``: the CPU model from ``/proc/cpuinfo`` (Linux)
    or ``platform.processor()``."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    model = model or platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} CPUs, {platform.machine()}, {platform.system()}"


def hardware(row: BenchmarkRow) -> str:
    """The row's own hardware record when the benchmark names one, else ``machine()``."""
    own = getattr(row, "hardware", None)
    if isinstance(own, dict):
        return json.dumps(own, sort_keys=True)[:500]
    return str(own)[:500] if own else machine()


def model_card(row: BenchmarkRow, bench: BenchmarkReport) -> ModelCard:
    metrics = {k: float(v) for k in CARD_METRICS if (v := getattr(row, k)) is not None}
    metrics.update({k: float(v) for k, v in row.speed.items()})
    params = {
        "kind": row.kind,
        "parent": row.parent or "",
        "selected": str(row.selected).lower(),
        "rejected": row.rejected_reason if row.rejected else "false",
        "simulated": str(row.simulated).lower(),
        "runtime": bench.runtime if row.runtime == "onnxruntime" else row.runtime,
        "threads": str(bench.threads),
        "dataset": bench.dataset,
        "hardware": hardware(row),
    }
    return {"name": row.name, "metrics": metrics, "params": params}


def model_cards(bench: BenchmarkReport) -> list[ModelCard]:
    """One card per benchmark row, in the benchmark's order."""
    return [model_card(row, bench) for row in bench.candidates]
