"""The per-block record of a batch-inference run and what it sums to.

Stage actors report each block (stage, pid, node, GPUs, device, first row, rows, start, end) to a
small ``Tally`` actor by fire-and-forget calls; ``summarize`` turns the records into throughput,
block latency, utilisation per actor and stage, the pipeline's bubble fraction; ``placement``
says where each actor ran.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import ray


@ray.remote(num_cpus=0)
class Tally:
    """Per-block records ``(stage, pid, node, gpus, device, first row, rows, start, end)`` and
    the ``(stage, pid)`` of every actor started (restarted ones too), sent by stage actors."""

    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.started: set[tuple[int, int]] = set()

    def add(self, record: tuple) -> None:
        self.records.append(record)

    def start(self, stage: int, pid: int) -> None:
        self.started.add((stage, pid))

    def all(self) -> tuple[list[tuple], int]:
        return self.records, len(self.started)


def new_tally() -> Any:
    """A ``Tally`` on the driver's own node: it outlives any worker node removed mid-run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Tally.options(scheduling_strategy=here).remote()  # type: ignore[attr-defined]


def summarize(
    records: list[tuple], stages: int, replicas: int, rows: int, wall_s: float, duplicates: int
) -> dict[str, float]:
    """Throughput, per-block latency, utilisation per actor and stage, bubble fraction, restarts."""
    by_stage: dict[int, dict[int, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    blocks: dict[int, list[float]] = collections.defaultdict(list)
    for stage, pid, _node, _gpus, _dev, first, _n, start, end in records:
        by_stage[stage][pid].append((start, end))
        blocks[first] += [start, end]
    lat = np.array([max(v) - min(v) for v in blocks.values()] or [0.0])
    out = {
        "rows": rows,
        "wall_s": wall_s,
        "rows_per_s": rows / max(wall_s, 1e-9),
        "batch_latency_p50_ms": float(np.percentile(lat, 50) * 1e3),
        "batch_latency_p99_ms": float(np.percentile(lat, 99) * 1e3),
        "duplicates_dropped": duplicates,
    }
    actors = [len(by_stage[k]) for k in range(stages)]
    span = max(r[-1] for r in records) - min(r[-2] for r in records) if records else 0.0
    busy_by_stage = []
    for k in range(stages):
        # actors of a stage in order of their first block; a restarted actor (a new process) counts
        # towards the slot i mod replicas, so there are `replicas` utilisation figures per stage
        order = sorted(by_stage[k].values(), key=lambda spans: min(s for s, _ in spans))
        slots: collections.Counter[int] = collections.Counter()
        for i, spans in enumerate(order):
            slots[i % replicas] += sum(e - s for s, e in spans)
        for r in range(replicas):
            out[f"util_replica{r}_stage{k}"] = slots[r] / max(wall_s, 1e-9)
        busy_by_stage.append(sum(slots.values()))
    out["actors_used"] = float(sum(actors))  # actors that mapped at least one block
    out["busy_span_s"] = span  # first block started .. last block finished, over all stages
    out["steady_rows_per_s"] = rows / span if span > 0 else 0.0
    # share of the actors' time over the busy span spent idle (fill, drain, waits between blocks)
    out["bubble_fraction"] = float(1.0 - sum(busy_by_stage) / (stages * replicas * span)) if span > 0 else 0.0
    return out


def placement(records: list[tuple]) -> list[dict]:
    """Where each actor ran: stage, pid, node, the GPUs Ray gave it and its function's device."""
    seen = {}
    for stage, pid, node, gpus, dev, *_ in records:
        gpu_ids = gpus.split(",") if gpus else []
        seen[(stage, pid)] = {"stage": stage, "pid": pid, "node": node, "gpu_ids": gpu_ids, "device": dev}
    return sorted(seen.values(), key=lambda d: (d["stage"], d["pid"]))
