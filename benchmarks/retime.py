"""Every method's candidates measured again in one benchmark, so their throughputs compare.

A pipeline's benchmark step times its candidates alone, after training; a search trial times its
deployed model while the other trial trains beside it on the same two cores. Comparing those
numbers compares machine load as much as models. ``remeasure`` therefore loads every candidate
of every method from the MLflow store (the stored output of the run that computed it), and
measures them all with the benchmark step's own code in one process: validation accuracy on
ONNX Runtime (``tasks.steps.benchmark.measure_row``) and throughput in rounds that take every
candidate in turn (``tasks.runtime.measure.time_rows``), so a slow minute hits one round of every
candidate instead of every round of one.

    from retime import Candidate, remeasure, stored_output
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from pipelines.store.tracking import TAG, find_cached, load_output
from tasks.core.context import StepContext
from tasks.runtime.measure import time_rows
from tasks.steps.benchmark import BenchmarkConfig, measure_row

# one thread as the benchmark step; batch 256; three rounds over all candidates
TIMING = BenchmarkConfig(threads=1, warmup=5, iters_b1=10, iters_b256=30, rounds=3)


@dataclass
class Candidate:
    method: str  # grid | search | random
    label: str  # e.g. "prune[amount=0.2,method=channel]" or a trial id
    run_id: str  # a run that computed or reused the model (``stored_output`` finds what it stored)
    order: int  # position in the method's sequence of trained candidates


def stored_output(client: MlflowClient, experiment_id: str, run_id: str):
    """The step output behind ``run_id``: its own, or for a cache hit the one stored under its key
    (``find_cached``), loaded and verified as the engine loads a cached output."""
    tags = client.get_run(run_id).data.tags
    if tags.get(f"{TAG}stored") != "true":
        key = tags.get(f"{TAG}cache_key", "")
        hit = find_cached(client, experiment_id, key) if key else None
        if hit is None:
            raise RuntimeError(f"no stored output for run {run_id} (cache key {key or 'missing'})")
        run_id = hit.info.run_id
    return load_output(client, run_id)


def child_step_run(client: MlflowClient, experiment_id: str, parent: str, step: str) -> str | None:
    """The run of step ``step`` under ``parent`` (a search trial's run), None when it never ran."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{TAG}step` = '{step}'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


class _Progress(StepContext):
    def progress(self, message: str) -> None:  # the benchmark step's progress line, on stderr
        print(f"[remeasure] {message}", file=sys.stderr, flush=True)


def remeasure(client: MlflowClient, experiment_id: str, data_run: str, candidates: list[Candidate]) -> list[dict]:
    """One row per candidate: ``method``, ``label``, ``order``, ``val_acc``, ``throughput_b256`` and
    its spread over the rounds, all measured here in one benchmark."""
    data = stored_output(client, experiment_id, data_run)
    measured, rows = [], []
    for i, c in enumerate(candidates):
        print(f"[remeasure] loading {c.method} {c.label} ({i + 1}/{len(candidates)})", file=sys.stderr, flush=True)
        art = stored_output(client, experiment_id, c.run_id)
        art.name = f"{c.method}/{c.label}"
        row, make = measure_row(art, data, TIMING)
        measured.append((row, make))
    time_rows(measured, TIMING, _Progress(step="remeasure"))
    for c, (row, _) in zip(candidates, measured):
        rows.append(
            {
                "method": c.method,
                "label": c.label,
                "order": c.order,
                "val_acc": row.val_acc,
                "throughput_b256": row.throughput_b256,
                "throughput_b256_iqr": (row.timing.get("throughput_b256") or {}).get("iqr"),
                "rejected": row.rejected,
            }
        )
    return rows
