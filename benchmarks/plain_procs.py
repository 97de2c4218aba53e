"""The two-process ceiling of parallel_inference.py: the plain loop in separate processes at once.

On a machine of two cores, two processes each running a single-thread loop rarely reach twice one
process's rate (memory bandwidth, shared caches, clock boost, other load). That ratio, measured on
the same model and batch size, is the most two data-parallel actors can reach there, so a
two-replica speed-up is read against it. Each process builds the model (seeded: the benchmark's
weights), loads it, warms it up and waits at a barrier, so the timed loops start together.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time

import torch

from tasks.core.types import ModelArtifact
from tasks.models.build import build_model, complete_arch, load_model, make_artifact

FEATURES, CLASSES = 40, 10


def mlp(hidden: list[int]) -> ModelArtifact:
    """The benchmark's MLP ``40-hidden-10`` with seed-0 weights (the same in every process)."""
    arch = complete_arch({"_target_": "tasks.models.zoo.MLP", "hidden": hidden}, [FEATURES], CLASSES)
    torch.manual_seed(0)
    return make_artifact(build_model(arch), arch, name="mlp", kind="teacher")


def inputs(rows: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, FEATURES, generator=torch.Generator().manual_seed(seed))


def lower_priority(niceness: int, tid: int = 0) -> None:
    """This thread (Linux: niceness is per thread) at ``niceness``, the one Ray gives its workers,
    unless it already runs lower; a process not allowed to change it keeps its own."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(niceness, os.getpriority(os.PRIO_PROCESS, tid)))
    except PermissionError:
        pass


def _loop(hidden, rows, batch, duration_s, seed, threads, niceness, barrier, results, index) -> None:
    """One process: the plain loop over ``rows`` rows, once (``duration_s`` 0) or cycled until
    ``duration_s``; puts (index, start, [end of each batch], [rows of each batch])."""
    lower_priority(niceness)
    torch.set_num_threads(threads)
    model, x = load_model(mlp(hidden)), inputs(rows, seed)
    ends: list[float] = []
    counts: list[int] = []
    with torch.no_grad():
        model(x[:batch])  # warm-up
        barrier.wait()
        start, i = time.monotonic(), 0
        while True:
            model(x[i : i + batch])
            ends.append(time.monotonic())
            counts.append(min(batch, rows - i))
            i = i + batch if i + batch < rows else 0
            if (not duration_s and i == 0) or (duration_s and ends[-1] - start >= duration_s):
                break
    results.put((index, start, ends, counts))


def concurrent_rate(runs: list[tuple[float, list[float], list[int]]]) -> float:
    """Combined rows/s of processes over the window in which all of them ran: each process counts
    the batches it finished before the first process stopped, over its own time to the last of them."""
    window_end = min(ends[-1] for _, ends, _ in runs)
    total = 0.0
    for start, ends, counts in runs:
        done = [(e, n) for e, n in zip(ends, counts, strict=True) if e <= window_end] or [(ends[0], counts[0])]
        total += sum(n for _, n in done) / (done[-1][0] - start)
    return total


def plain_processes(
    n: int,
    hidden: list[int],
    rows: int,
    batch: int,
    *,
    duration_s: float = 0.0,
    seed: int = 0,
    threads: int = 1,
    niceness: int = 0,
) -> tuple[float, float]:
    """(combined rows/s, seconds timed) of ``n`` spawned processes running the plain loop at once."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_loop, args=(hidden, rows, batch, duration_s, seed, threads, niceness, barrier, results, i))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    got: list = []
    while len(got) < n:
        try:
            got.append(results.get(timeout=5))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode]
            if failed:
                raise RuntimeError(f"a plain loop process exited with {failed[0]}") from None
    for p in procs:
        p.join()
    runs = [(start, ends, counts) for _, start, ends, counts in got]
    return concurrent_rate(runs), max(ends[-1] - start for start, ends, _ in runs)
