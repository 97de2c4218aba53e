"""Pipeline-parallel batch inference on a pool of actor chains: ``R`` replicas x ``K`` stages.

Batch inference runs on Ray Data (``batch.py``) except for an in-memory input split into ``K >= 2``
stages: there this pool measured clearly faster on the same work (``benchmarks/parallel_inference.py``,
``ray_data_vs_pool_pp2`` in docs/figures.json): each stage call is one actor method call whose
ObjectRef feeds the next stage directly, with no streaming executor between the stages.

Each actor builds its function once in ``__init__`` (``make_fn()``: a loaded model or one
pipeline stage of it) and applies it in ``run``. A batch goes to a replica by chaining the
stage calls: the ObjectRef returned by stage i is the argument of stage i+1, so activations
move actor to actor and never through the driver. Because an actor runs its calls in order,
stage 1 works on micro-batch m+1 while stage 2 works on m (GPipe-style fill and drain).

Backpressure: at most ``window`` batches are in flight per replica; the driver waits with
``ray.wait`` and slices the next batch only when one finishes, so object-store use stays flat
however large the input. Outputs are keyed by batch index (order kept, duplicates dropped).
When an actor dies (``RayActorError``), its replica's in-flight batches go back to the queue
and run on a live replica, and the dead replica is replaced by a fresh chain of actors.
"""

from __future__ import annotations

import collections
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError

READY_TIMEOUT_S = 120.0
MAX_RESTARTS_PER_REPLICA = 3  # per map() call: a model that kills every actor fails instead of looping


@ray.remote(max_restarts=0)
class StageWorker:
    """One actor holding ``make_fn()`` (a model or a stage); ``run`` maps a batch through it."""

    def __init__(self, make_fn: Callable[[], Callable[[torch.Tensor], torch.Tensor]]):
        self.fn = make_fn()
        self.busy_s, self.calls, self.last = 0.0, 0, 0.0
        self.first: float | None = None

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> dict:
        """Where this actor runs: process, node, the GPUs Ray gave it and its model's device."""
        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "node": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "device": str(getattr(self.fn, "device", "cpu")),
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        start = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only object-store arrays: never written
            out = self.fn(torch.from_numpy(x)).detach().cpu().numpy()
        end = time.time()
        self.busy_s += end - start
        self.calls += 1
        self.first = start if self.first is None else self.first
        self.last = end
        return out

    def stats(self) -> dict:
        return {"busy_s": self.busy_s, "calls": self.calls, "first": self.first or 0.0, "last": self.last}


@dataclass(eq=False)
class Chain:
    """One replica: its stage actors, in order."""

    actors: list
    generation: int
    in_flight: int = 0


@dataclass
class PoolStats:
    wall_s: float = 0.0
    batches: int = 0
    rows: int = 0
    restarts: int = 0
    resubmitted: int = 0
    duplicates_dropped: int = 0
    peak_in_flight: int = 0
    peak_in_flight_bytes: int = 0
    latencies_s: list[float] = field(default_factory=list)
    actor_stats: list[list[dict]] = field(default_factory=list)  # [replica][stage]

    def summary(self) -> dict[str, float]:
        """Throughput, latency, utilisation per replica/stage and the pipeline bubble fraction."""
        lat = np.array(self.latencies_s or [0.0])
        out = {
            "rows": self.rows,
            "wall_s": self.wall_s,
            "rows_per_s": self.rows / max(self.wall_s, 1e-9),
            "batch_latency_p50_ms": float(np.percentile(lat, 50) * 1e3),
            "batch_latency_p99_ms": float(np.percentile(lat, 99) * 1e3),
            "restarts": self.restarts,
            "actors_started": float(len(self.actor_stats[0]) * (len(self.actor_stats) + self.restarts))
            if self.actor_stats
            else 0.0,
            "duplicates_dropped": self.duplicates_dropped,
            "resubmitted": self.resubmitted,
            "peak_in_flight": self.peak_in_flight,
            "peak_in_flight_bytes": self.peak_in_flight_bytes,
        }
        bubbles = []
        for r, stages in enumerate(self.actor_stats):
            span = (
                max(s["last"] for s in stages) - min(s["first"] for s in stages if s["calls"])
                if any(s["calls"] for s in stages)
                else 0.0
            )
            for k, s in enumerate(stages):
                out[f"util_replica{r}_stage{k}"] = s["busy_s"] / max(self.wall_s, 1e-9)
            if span > 0:
                bubbles.append(1.0 - sum(s["busy_s"] for s in stages) / (len(stages) * span))
        out["bubble_fraction"] = float(np.mean(bubbles)) if bubbles else 0.0
        return out


class ChainPool:
    """``replicas`` chains of actors, one actor per entry of ``stage_fns``.

    ``num_cpus``/``num_gpus`` are per actor (fractional GPUs let 2 replicas share one GPU).
    """

    def __init__(
        self, stage_fns: list, replicas: int, *, num_cpus: float = 1.0, num_gpus: float = 0.0, window: int = 0
    ):
        if replicas < 1 or not stage_fns:
            raise ValueError(f"replicas must be >= 1 and stages >= 1, got {replicas} x {len(stage_fns)}")
        self.stage_fns = [ray.put(fn) for fn in stage_fns]  # a model artifact is put once, not per actor
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.window = window or len(stage_fns) + 1
        self.generation = 0
        self.chains = [self._new_chain() for _ in range(replicas)]
        self._wait_ready(self.chains)

    def _new_chain(self) -> Chain:
        self.generation += 1
        remote: Any = StageWorker  # a Ray actor class: .options() is added by @ray.remote
        return Chain([remote.options(**self.options).remote(fn) for fn in self.stage_fns], self.generation)

    def _wait_ready(self, chains: list[Chain]) -> None:
        """Block until every actor is up (models loaded); a one-line error if they cannot be placed."""
        refs = [a.pid.remote() for c in chains for a in c.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT_S)
        if len(ready) < len(refs):
            raise RuntimeError(
                f"inference: only {len(ready)} of {len(refs)} actors started within {READY_TIMEOUT_S:.0f} s "
                f"({self.options} each; free: {ray.available_resources()}); lower replicas/stages "
                f"or give the calling step resources.num_cpus: 0"
            )
        ray.get(ready)  # raises the model-loading error of an actor, if any

    def placement(self) -> list[list[dict]]:
        return [ray.get([a.where.remote() for a in c.actors]) for c in self.chains]

    def pids(self) -> list[list[int]]:
        return [ray.get([a.pid.remote() for a in c.actors]) for c in self.chains]

    def _submit(self, chain: Chain, batch: np.ndarray):
        ref = batch
        for actor in chain.actors:
            ref = actor.run.remote(ref)
        chain.in_flight += 1
        return ref

    def _replace(self, index: int) -> None:
        for actor in self.chains[index].actors:
            ray.kill(actor, no_restart=True)
        self.chains[index] = self._new_chain()

    def map(self, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, PoolStats]:
        """Outputs of the chains over ``x`` in ``batch_size`` batches, in input order."""
        nb = -(-len(x) // batch_size)
        pending = collections.deque(range(nb))
        in_flight: dict = {}  # ref -> (batch index, chain, submit time, bytes)
        results: list = [None] * nb
        stats = PoolStats(batches=nb, rows=len(x))
        start = time.perf_counter()
        while pending or in_flight:
            while pending:
                chain = min(self.chains, key=lambda c: c.in_flight)
                if chain.in_flight >= self.window:
                    break
                b = pending.popleft()
                batch = x[b * batch_size : (b + 1) * batch_size]
                in_flight[self._submit(chain, batch)] = (b, chain, time.perf_counter(), batch.nbytes)
            stats.peak_in_flight = max(stats.peak_in_flight, len(in_flight))
            stats.peak_in_flight_bytes = max(stats.peak_in_flight_bytes, sum(v[3] for v in in_flight.values()))
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                b, chain, t0, _ = in_flight.pop(ref)
                chain.in_flight -= 1
                try:
                    out = ray.get(ref)
                except RayActorError:
                    pending.appendleft(b)
                    stats.resubmitted += 1
                    if chain in self.chains:  # first failure seen from this chain: replace it
                        if stats.restarts >= MAX_RESTARTS_PER_REPLICA * len(self.chains):
                            raise RuntimeError(
                                f"inference: replicas died {stats.restarts} times (batch {b} "
                                f"last); giving up instead of restarting forever"
                            ) from None
                        self._replace(self.chains.index(chain))
                        stats.restarts += 1
                    continue
                stats.latencies_s.append(time.perf_counter() - t0)
                if results[b] is not None:
                    stats.duplicates_dropped += 1
                else:
                    results[b] = out
        stats.wall_s = time.perf_counter() - start
        stats.actor_stats = [[self._stats(a) for a in c.actors] for c in self.chains]
        return np.concatenate(results) if results else np.zeros((0,)), stats

    @staticmethod
    def _stats(actor) -> dict:
        """An actor's busy time and call count (zeros for one that died after its last batch)."""
        try:
            return ray.get(actor.stats.remote())
        except RayActorError:
            return {"busy_s": 0.0, "calls": 0, "first": 0.0, "last": 0.0}

    def shutdown(self) -> None:
        for chain in self.chains:
            for actor in chain.actors:
                ray.kill(actor, no_restart=True)


def map_batches(
    stage_fns: list,
    x: torch.Tensor,
    *,
    batch_size: int,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    window: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``x`` through ``replicas`` chains of ``stage_fns`` actors: (outputs in input order, summary).
    The pool has a fixed size: there is no ``min_replicas`` here."""
    pool = ChainPool(stage_fns, replicas, num_cpus=num_cpus, num_gpus=num_gpus, window=window)
    try:
        out, stats = pool.map(np.ascontiguousarray(x.detach().cpu().numpy()), batch_size)
    finally:
        pool.shutdown()
    return torch.from_numpy(out), stats.summary()
