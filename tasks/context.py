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

log = logging.getLogger("slimray")


@dataclass
class StepContext:
    step: str = "local"
    seed: int = 0
    device: str = "cpu"  # "cuda" when the step was given a GPU
    # model _target_s beyond the zoo that may be loaded from artifacts (tasks.models.load_model):
    # the engine fills it with the targets the config names plus its trusted_models list
    trusted_targets: tuple[str, ...] = ()
    # engine side: log_metrics(d, step), log_file(name, data), map_batches(...)
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

    def map_batches(self, make_fn: Callable[[], Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
                    *, batch_size: int = 1024, workers: int = 1, gpus_per_worker: float = 0.0) -> torch.Tensor:
        """Apply ``make_fn()`` (built once per worker, e.g. a loaded model) to ``x`` batch-wise.

        The engine runs this data-parallel on an actor pool; here it runs in-process.
        ``make_fn`` must be picklable (a top-level class or functools.partial).
        """
        if self.tracker is not None and workers > 1:
            return self.tracker.map_batches(make_fn, x, batch_size, workers, gpus_per_worker)
        fn = make_fn()
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

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
