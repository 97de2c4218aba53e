"""The one object a task gets from the engine: logging, progress, device and seed.

Tasks never import ray or mlflow. The engine passes a ``StepContext`` whose ``tracker``
forwards metrics to MLflow; unit tests and plain scripts use ``StepContext()`` which
keeps metrics in memory.

A task writes to its own step run only (metrics, files). Whatever it wants on the pipeline's
parent run or in the model registry it returns in its output (``Report.publish``), so the
engine can publish it on the computed and the cache-hit path alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tasks.datasets.feature_files import Blocks, run_in_process

log = logging.getLogger("slimray")


@dataclass
class StepContext:
    step: str = "local"
    seed: int = 0
    device: str = "cpu"  # "cuda" when the step was given a GPU
    # model _target_s beyond the zoo that may be loaded from artifacts (tasks.models.build.load_model):
    # the engine fills it with the targets the config names plus its trusted_models list
    trusted_targets: tuple[str, ...] = ()
    # engine side: log_metrics(d, step), log_file(name, data), map_batches(...), map_files(...)
    # (map_batches(stage_fns, x, ...) runs one stage on a Ray Data actor pool, K >= 2 stages on
    # chains of actors: pipelines.scale.batch / pool;
    # map_files(stage_fns, path, ...) the rows of feature files through them: pipelines.scale.files)
    tracker: Any = None
    files: dict[str, bytes] = field(default_factory=dict)  # kept when no tracker
    history: list[tuple[int | None, dict[str, float]]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)  # last value of every metric
    _last_progress: float = 0.0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metrics (e.g. per epoch); the last value of each is the step's summary."""
        clean = {k: float(v) for k, v in metrics.items()}
        self.history.append((step, clean))
        self.summary.update(clean)
        if self.tracker is not None:
            self.tracker.log_metrics(clean, step)

    def log_file(self, name: str, data: bytes) -> None:
        """Attach a document (PNG, Markdown, JSON) to this step's own run."""
        if self.tracker is not None:
            self.tracker.log_file(name, data)
        else:
            self.files[name] = data

    def note(self, message: str) -> None:
        """A one-off remark about how the step ran (e.g. a fallback it took), always shown."""
        log.warning("[%s] %s", self.step, message)

    def map_batches(
        self,
        make_fn: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
        x: torch.Tensor,
        *,
        batch_size: int = 1024,
        replicas: int = 1,
        cpus_per_replica: float = 1.0,
        gpus_per_replica: float = 0.0,
        window: int = 0,
        min_replicas: int = 0,
    ) -> torch.Tensor:
        """Apply ``make_fn()`` (built once per replica, e.g. a loaded model) to ``x`` batch-wise.

        With an engine and ``replicas > 1`` this runs data-parallel on a pool of actors; here it
        runs in-process. ``make_fn`` must be picklable (a top-level class or functools.partial).
        """
        return self.parallel_predict(
            [make_fn],
            x,
            batch_size=batch_size,
            replicas=replicas,
            cpus_per_actor=cpus_per_replica,
            gpus_per_actor=gpus_per_replica,
            window=window,
            min_replicas=min_replicas,
        )[0]

    def parallel_predict(
        self,
        stage_fns: list[Callable[[], Callable[[torch.Tensor], torch.Tensor]]],
        x: torch.Tensor,
        *,
        batch_size: int,
        replicas: int = 1,
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        window: int = 0,
        min_replicas: int = 0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``x`` through ``replicas`` chains of pipeline stages (``stage_fns[i]()`` builds stage i):
        (outputs in input order, summary of throughput/latency/utilisation/bubble fraction).

        The engine runs one stage as a Ray Data operator with a pool of ``replicas`` actors
        (``min_replicas`` > 0 lets the pool grow from that size on demand, ``window`` caps the
        blocks in flight per actor), and ``K >= 2`` stages on ``replicas`` chains of ``K`` actors
        (``pipelines.scale.pool``, measured faster for stages; fixed size); without an engine (or
        with a single replica and stage) the chain runs here, batch after batch.
        """
        if self.tracker is not None and (replicas > 1 or len(stage_fns) > 1):
            return self.tracker.map_batches(
                stage_fns,
                x,
                batch_size=batch_size,
                replicas=replicas,
                num_cpus=cpus_per_actor,
                num_gpus=gpus_per_actor,
                window=window,
                min_replicas=min_replicas,
            )
        fns = [make() for make in stage_fns]
        start, outs, lat, busy = time.perf_counter(), [], [], [0.0] * len(fns)
        for i in range(0, len(x), batch_size):
            t0, y = time.perf_counter(), x[i : i + batch_size]
            for k, fn in enumerate(fns):
                t = time.perf_counter()
                y = fn(y)
                busy[k] += time.perf_counter() - t
            outs.append(y)
            lat.append(time.perf_counter() - t0)
        wall = max(time.perf_counter() - start, 1e-9)
        summary = {
            "rows": len(x),
            "wall_s": wall,
            "rows_per_s": len(x) / wall,
            "batch_latency_p50_ms": float(torch.tensor(lat or [0.0]).median()) * 1e3,
            "bubble_fraction": 1.0 - sum(busy) / (len(fns) * wall),
        }
        summary.update({f"util_replica0_stage{k}": b / wall for k, b in enumerate(busy)})
        return (torch.cat(outs) if outs else x[:0]), summary

    def map_files(
        self,
        stage_fns: list[Callable[[], Callable[[torch.Tensor], torch.Tensor]]],
        path: str,
        *,
        format: str = "auto",
        columns: list[str] | None = None,
        id_column: str = "",
        batch_size: int,
        replicas: int = 1,
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        window: int = 0,
        min_replicas: int = 0,
    ) -> Blocks:
        """The rows of the feature files at ``path`` (a file, glob or folder of Parquet / CSV /
        JSON lines: ``tasks.datasets.feature_files``) through the stages, streamed: an iterator of
        output blocks ``{"__row": ids, "x": outputs}`` whose ``summary`` is filled at the end.

        The engine reads the files with Ray Data's readers on the cluster (an input larger than
        memory streams with bounded object-store use); without an engine they run here, chunk
        after chunk. Either way a bad path or column is refused before any work starts.
        """
        if self.tracker is None:
            return run_in_process(
                stage_fns, path, format=format, columns=columns, id_column=id_column, batch_size=batch_size
            )
        return self.tracker.map_files(
            stage_fns,
            path,
            format=format,
            columns=columns,
            id_column=id_column,
            batch_size=batch_size,
            replicas=replicas,
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
            window=window,
            min_replicas=min_replicas,
        )

    def train_workers(
        self,
        loop_fn: Callable[..., Any],
        config: dict,
        *,
        workers: int = 0,
        use_gpu: bool = False,
        cpus_per_worker: float = 1.0,
        max_failures: int = 2,
        storage: str = "",
    ) -> tuple[dict | None, list[dict]]:
        """``loop_fn(session, config)`` (a top-level function: ``tasks.core.train_session``) on
        ``workers`` data-parallel workers: (the state of its last checkpoint, its metric rows up to it).

        The engine runs it on Ray Train (``pipelines.scale.train``: DDP over ``workers``, a GPU each
        with ``use_gpu``, checkpoints under ``storage`` or a temporary folder, restarted from the last
        checkpoint up to ``max_failures`` times when a worker dies); without an engine, or with
        ``workers`` 0, it runs here as rank 0 of 1; with ``storage`` it checkpoints to
        ``storage/<step>`` and resumes from there (a killed process, rerun, goes on where it stopped).
        """
        if self.tracker is not None and workers > 0:
            return self.tracker.train_workers(
                loop_fn,
                config,
                workers=workers,
                use_gpu=use_gpu,
                cpus_per_worker=cpus_per_worker,
                max_failures=max_failures,
                storage=storage,
            )
        from tasks.core.train_session import run_local

        def on_report(row: dict) -> None:
            self.progress(f"{self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))

        folder = f"{storage.rstrip('/')}/{self.step}" if storage else None
        return run_local(loop_fn, config, folder=folder, device=self.device, on_report=on_report)

    def progress(self, message: str, every_s: float = 2.0) -> None:
        """Rate-limited progress line for long work (shown in the worker log)."""
        now = time.monotonic()
        if now - self._last_progress >= every_s:
            self._last_progress = now
            log.info("[%s] %s", self.step, message)

    def seed_everything(self, offset: int = 0) -> torch.Generator:
        """Seed torch for this step and return a generator for data order."""
        torch.manual_seed(self.seed + offset)
        return torch.Generator().manual_seed(self.seed + offset)
