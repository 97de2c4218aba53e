"""Batch inference on Ray Data: ``R`` actors per stage (data parallel) x ``K`` stages (pipeline parallel).

Each pipeline stage is one ``map_batches`` operator with its own actor pool
(``ActorPoolStrategy``): an actor builds its function once (``make_fn()``: a loaded model or
one stage of it) and maps blocks through it. Ray Data streams blocks from operator to operator,
so stage 1 works on block m+1 while stage 2 works on block m, with backpressure (an object-store
budget per operator, ``window`` tasks in flight per actor), and restarts a dead actor and
retries its tasks (``max_restarts=-1``, ``max_task_retries=-1``, Ray Data's defaults).

Rows carry their index (column ``__row``) through every stage, so the caller places outputs by
index: order is kept without ``preserve_order`` (which would serialise the streams), a row seen
twice is counted and dropped, a missing one is an error. Actors report each block's timing to a
small ``Tally`` actor (fire-and-forget calls), which gives utilisation per actor and stage, the
pipeline's bubble fraction, per-block latency and the number of actor restarts.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.data
import torch

log = logging.getLogger("slimray")

ROW, X = "__row", "x"
READY_TIMEOUT_S = 120.0  # actors that cannot be placed within this fail in one line
PROGRESS_EVERY_S = 5.0
MAX_RESTARTS = 3  # per actor: a model that kills every actor fails instead of restarting forever


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


class StageActor:
    """A Ray Data callable class: ``make_fn()`` once per actor, then ``x`` of each block through it."""

    def __init__(self, make_fn: Any, stage: int, tally: Any):
        if isinstance(make_fn, ray.ObjectRef):
            make_fn = ray.get(make_fn)
        self.fn, self.stage, self.tally = make_fn(), stage, tally
        ctx = ray.get_runtime_context()
        self.pid, self.node = os.getpid(), ctx.get_node_id()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        if tally is not None:
            tally.start.remote(stage, self.pid)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only object-store arrays: never written
            out = self.fn(torch.from_numpy(batch[X])).detach().cpu().numpy()
        end = time.time()
        rows = batch[ROW]
        if self.tally is not None:
            where = (self.pid, self.node, ",".join(self.gpu_ids), str(getattr(self.fn, "device", "cpu")))
            self.tally.add.remote((self.stage, *where, int(rows[0]) if len(rows) else -1, len(rows), start, end))
        return {ROW: rows, X: out}


def configure(data_ctx: ray.data.DataContext | None = None) -> ray.data.DataContext:
    """This process's Ray Data context, quiet (our own progress lines) and failing on unplaceable actors."""
    ctx = data_ctx or ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.verbose_progress = False
    ctx.wait_for_min_actors_s = int(READY_TIMEOUT_S)
    return ctx


def add_stages(
    ds: ray.data.Dataset,
    stage_fns: list,
    *,
    batch_size: int,
    replicas: int = 1,
    min_replicas: int = 0,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    window: int = 0,
    tally: Any = None,
) -> ray.data.Dataset:
    """``ds`` (columns ``__row`` and ``x``) through one ``map_batches`` operator per stage, each an
    actor pool of ``replicas`` actors (or ``min_replicas``..``replicas``, grown on demand)."""
    if replicas < 1 or not stage_fns:
        raise ValueError(f"replicas must be >= 1 and stages >= 1, got {replicas} x {len(stage_fns)}")
    if not 0 <= min_replicas <= replicas:
        raise ValueError(f"min_replicas must be between 0 and replicas ({replicas}), got {min_replicas}")
    pool: dict[str, Any] = {"size": replicas} if not min_replicas else {"min_size": min_replicas, "max_size": replicas}
    if window:
        pool["max_tasks_in_flight_per_actor"] = window
    gpu: dict[str, Any] = {"num_gpus": num_gpus} if num_gpus else {}
    for k, make_fn in enumerate(stage_fns):
        with warnings.catch_warnings():
            # max_restarts has no named parameter in Ray 2.60: it goes through ray_remote_args,
            # which warns that it is deprecated (a named parameter is planned before its removal)
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(
                StageActor,
                # the factory (it holds the model's weights) is put once; every actor, restarted
                # ones included, reads it from the object store
                fn_constructor_args=(ray.put(make_fn), k, tally),
                compute=ray.data.ActorPoolStrategy(**pool),
                batch_size=batch_size,
                batch_format="numpy",
                zero_copy_batch=True,
                num_cpus=num_cpus,
                max_restarts=MAX_RESTARTS,
                **gpu,
            )
    return ds


def from_array(x: np.ndarray, block_rows: int) -> ray.data.Dataset:
    """An in-memory array as a dataset of blocks of ``block_rows`` rows with a ``__row`` index."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    blocks: list[Any] = []
    for i in range(0, len(x), block_rows):
        rows = np.arange(i, min(i + block_rows, len(x)))
        blocks.append(ray.put(pa.table({ROW: pa.array(rows), X: ArrowTensorArray.from_numpy(x[i : i + block_rows])})))
    return ray.data.from_arrow_refs(blocks)


class Collector:
    """Outputs placed by row index: order kept, duplicates counted and dropped, gaps found."""

    def __init__(self, n: int):
        self.n, self.seen, self.duplicates = n, np.zeros(n, dtype=bool), 0
        self.out: np.ndarray | None = None

    def add(self, rows: np.ndarray, y: np.ndarray) -> None:
        if self.out is None:
            self.out = np.empty((self.n, *y.shape[1:]), dtype=y.dtype)
        fresh = ~self.seen[rows]
        self.duplicates += int((~fresh).sum())
        self.out[rows[fresh]] = y[fresh]
        self.seen[rows[fresh]] = True

    def result(self) -> np.ndarray:
        missing = int((~self.seen).sum())
        if missing:
            raise RuntimeError(f"inference: {missing} of {self.n} rows came back without an output")
        return self.out if self.out is not None else np.zeros((0,), np.float32)


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


def iter_outputs(ds: ray.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    """The output blocks as they finish (any order): ``{"__row": ..., "x": ...}``."""
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)


@dataclass
class BatchResult:
    out: np.ndarray  # outputs in input order
    summary: dict[str, float]
    placement: list[dict]  # where each actor ran (``placement``)


def run(
    stage_fns: list,
    x: torch.Tensor,
    *,
    batch_size: int,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    window: int = 0,
    min_replicas: int = 0,
) -> BatchResult:
    """``x`` through ``replicas`` x ``len(stage_fns)`` actors on Ray Data."""
    configure()
    arr = np.ascontiguousarray(x.detach().cpu().numpy())
    tally = new_tally()
    start = time.perf_counter()
    ds = add_stages(
        from_array(arr, batch_size),
        stage_fns,
        batch_size=batch_size,
        replicas=replicas,
        min_replicas=min_replicas,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        window=window,
        tally=tally,
    )
    got, last = Collector(len(arr)), time.monotonic()
    try:
        for block in iter_outputs(ds):
            got.add(block[ROW], block[X])
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last, done = time.monotonic(), int(got.seen.sum())
                log.info("inference: %d/%d rows (%.0f rows/s)", done, len(arr), done / (time.perf_counter() - start))
    except ray.exceptions.RayError as e:
        raise RuntimeError(
            f"inference: {_first_sentence(e)} (each actor is restarted at most {MAX_RESTARTS} times; "
            f"free: {ray.available_resources()})"
        ) from None
    wall = time.perf_counter() - start
    out = got.result()
    records, started = ray.get(tally.all.remote())
    ray.kill(tally)
    summary = summarize(records, len(stage_fns), replicas, len(arr), wall, got.duplicates)
    summary["actors_started"] = float(started)  # every actor built, a restart that got no block too
    summary["restarts"] = float(max(0, started - replicas * len(stage_fns)))
    return BatchResult(out, summary, placement(records))


def map_batches(stage_fns: list, x: torch.Tensor, **options: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """``run`` for the engine's ``ctx.parallel_predict``: (outputs in input order, summary)."""
    result = run(stage_fns, x, **options)
    return torch.from_numpy(result.out), result.summary


def _first_sentence(e: BaseException) -> str:
    """The innermost error line of a Ray error (it carries tracebacks and causes), else its first sentence."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln) and "ray." not in ln.split(":")[0]]
    if causes:
        return causes[-1]
    return (lines[0].split(". ")[0] if lines else type(e).__name__).rstrip(".")
