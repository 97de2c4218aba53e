"""What runs inside a Ray task for one step (or one sweep trial).

It opens the step's MLflow run, either loads a cached output or calls the task with a
``StepContext`` whose tracker forwards to MLflow, stores the output as run artifacts, and
returns ``(output, StepMeta)``: the output stays in Ray's object store for downstream steps,
the small meta goes to the driver.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines.spec import build_config
from pipelines.tracking import StepTracker, create_run, log_params
from tasks import TASKS
from tasks.context import StepContext


@dataclass
class StepJob:
    step: str
    task: str
    run_name: str  # "prune" or "prune[amount=0.5,method=channel]"
    params: dict
    seed: int
    uri: str
    experiment_id: str
    parent_run: str
    root_run: str
    tags: dict[str, str]
    layout: list[tuple[str, bool, int]]  # (task parameter, is list, number of positional args)
    cached_from: str | None = None  # run id holding the stored output of a cache hit
    cached_summary: dict[str, float] = field(default_factory=dict)
    cached_publishes: bool = False  # the cached run holds a Publication under publish/
    use_gpu: bool = False
    threads: int = 1
    trusted_targets: tuple[str, ...] = ()  # model _target_s a stored arch may name, beyond the zoo


@dataclass
class StepMeta:
    run_id: str
    node_id: str
    seconds: float
    summary: dict[str, float]
    cached: bool
    publishes: bool = False  # the step returned a Publication for the parent run


def assemble(layout: list[tuple[str, bool, int]], args: tuple) -> dict:
    """Positional Ray arguments back into the task's keyword inputs."""
    kwargs: dict = {}
    i = 0
    for param, is_list, n in layout:
        chunk = list(args[i:i + n])
        i += n
        kwargs[param] = kwargs.get(param, []) + chunk if is_list else chunk[0]
    return kwargs


def _setup_logs() -> None:
    # the ONNX exporter warns once per export about every torchvision op it cannot find
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # ctx.progress() lines (rate-limited) reach the driver's console through Ray's log forwarding
    progress = logging.getLogger("slimray")
    if not progress.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


def execute(job: StepJob, *args):
    import ray
    import torch

    _setup_logs()
    node_id = ray.get_runtime_context().get_node_id()
    client = MlflowClient(tracking_uri=job.uri)
    tags = {**job.tags, "slimray.node_id": node_id, "slimray.cached": str(job.cached_from is not None).lower()}
    run_id = create_run(client, job.experiment_id, job.run_name, job.parent_run, tags)
    tracker = StepTracker(client, run_id, job.root_run)
    start = time.time()
    try:
        if job.cached_from:
            output, summary = tracker.load_output(job.cached_from), dict(job.cached_summary)
            tracker.log_metrics(summary)
            publishes = job.cached_publishes
        else:
            log_params(client, run_id, job.params)
            device = "cuda" if job.use_gpu and torch.cuda.is_available() else "cpu"
            torch.set_num_threads(job.threads)  # as many intra-op threads as CPUs the step declared
            ctx = StepContext(step=job.run_name, seed=job.seed, device=device, tracker=tracker,
                              trusted_targets=job.trusted_targets)
            task: Callable[..., Any] = TASKS[job.task]
            output = task(**assemble(job.layout, args), cfg=build_config(job.task, job.params), ctx=ctx)
            summary = dict(ctx.summary)
            publishes = tracker.save_output(output)
        tracker.finish("FINISHED")
    except BaseException as e:
        tracker.set_tags({"slimray.error": f"{type(e).__name__}: {e}"[:500]})
        tracker.finish("FAILED")
        raise
    if getattr(output, "publish", None) is not None:  # published by the engine, not passed downstream
        output = dataclasses.replace(output, publish=None)
    return output, StepMeta(run_id, node_id, time.time() - start, summary, job.cached_from is not None, publishes)
