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

from pipelines.scale.tally import new_tally, placement, summarize

log = logging.getLogger("slimray")

ROW, X = "__row", "x"
READY_TIMEOUT_S = 120.0  # actors that cannot be placed within this fail in one line
PROGRESS_EVERY_S = 5.0
MAX_RESTARTS = 3  # per actor: a model that kills every actor fails instead of restarting forever


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
    """The engine's ``ctx.parallel_predict``: (outputs in input order, summary). One stage runs on
    Ray Data; ``K >= 2`` stages of an in-memory input run on the actor-chain pool (``pool.py``),
    which measured clearly faster for pipeline parallelism (docs/architecture.md, Scale)."""
    if len(stage_fns) > 1:
        from pipelines.scale import pool

        options.pop("min_replicas", None)  # the pool has a fixed size
        return pool.map_batches(stage_fns, x, **options)
    result = run(stage_fns, x, **options)
    return torch.from_numpy(result.out), result.summary


def _first_sentence(e: BaseException) -> str:
    """The innermost error line of a Ray error (it carries tracebacks and causes), else its first sentence."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln) and "ray." not in ln.split(":")[0]]
    if causes:
        return causes[-1]
    return (lines[0].split(". ")[0] if lines else type(e).__name__).rstrip(".")
