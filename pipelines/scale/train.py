"""A task's training loop on Ray Train: ``TorchTrainer`` with DDP over ``workers``, checkpoints in
storage, resumed from the last checkpoint when a worker dies (``FailureConfig(max_failures)``).

The task writes ``loop_fn(session, config)`` against ``tasks.core.train_session.TrainSession`` (no Ray
types); ``RaySession`` is that session on a Ray Train worker: rank and world size from the train
context, ``prepare`` = ``ray.train.torch.prepare_model`` (DistributedDataParallel, gloo on CPU, NCCL
on GPU) when the world has several workers, ``report`` keeps each metric row and, at a checkpoint
(every rank passes a state at the same steps), calls ``ray.train.report`` on every rank (a barrier
through the controller: about a second each on 2 busy cores, so not once per step) with the
checkpoint (``tasks.core.train_session.save_checkpoint``: the state and the metric rows so far)
from rank 0 only, and ``restore`` = the latest checkpoint (``ray.train.get_checkpoint``),
which after a worker is killed is the one the restarted worker group resumes from.

Ray Train v2 (the default in Ray 2.60): the controller is an actor that restarts the whole worker
group from the latest checkpoint after a failure. Storage must be absolute; a multi-node cluster
needs a path every node sees (a shared folder or a URI such as ``s3://``): the default, a temporary
folder on the driver's machine, is removed after the result is read.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import ray
import ray.train
import ray.train.torch
from torch import nn

from tasks.core.train_session import LoopFn, load_checkpoint, save_checkpoint


class RaySession:
    """``TrainSession`` on a Ray Train worker (see the module docstring)."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = str(ray.train.torch.get_device())
        self.history: list[dict] = []

    def report(self, metrics: dict[str, float], state: dict | None = None) -> None:
        row = {k: float(v) for k, v in metrics.items()}
        self.history.append(row)
        if state is None:  # kept for the next checkpoint: a Ray report is a barrier of ~1 s
            return
        if self.rank != 0:
            ray.train.report(row)
            return
        with tempfile.TemporaryDirectory(prefix="slimray-ckpt-") as tmp:
            save_checkpoint(tmp, state, self.history)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{len(self.history):08d}")

    def restore(self) -> dict | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            state, self.history = load_checkpoint(folder)
        return state

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.world_size > 1:
            return ray.train.torch.prepare_model(model)
        return model.to(self.device)


def _worker(config: dict) -> None:
    """What each Ray Train worker runs: the task's loop with a ``RaySession`` (the loop's config
    travels as one object-store reference, so a large state is not pickled into the trainer)."""
    config["loop_fn"](RaySession(), ray.get(config["config"]))


def _check(workers: int, cpus_per_worker: float, max_failures: int) -> None:
    if int(workers) < 1:
        raise ValueError(f"workers: must be >= 1 on Ray Train, got {workers}")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker: must be > 0, got {cpus_per_worker}")
    if int(max_failures) < 0:
        raise ValueError(f"max_failures: must be >= 0, got {max_failures}")


def train_workers(
    loop_fn: LoopFn,
    config: dict,
    *,
    workers: int,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 2,
    storage: str = "",
    name: str = "",
) -> tuple[dict | None, list[dict]]:
    """Run ``loop_fn(session, config)`` on ``workers`` Ray Train workers; returns (the state of the
    latest checkpoint, the metric rows up to it), as ``tasks.core.train_session.run_local`` does.

    Checkpoints go to ``storage/<name>`` (two kept); ``storage`` empty: a temporary folder, removed
    afterwards. A failed worker restarts the group from the latest checkpoint, at most
    ``max_failures`` times; past that, ``trainer.fit`` raises Ray's ``TrainingFailedError``.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _check(workers, cpus_per_worker, max_failures)
    if storage and "://" not in storage and not Path(storage).is_absolute():
        raise ValueError(f"storage: must be an absolute path or a URI, got {storage!r}")
    own = not storage
    root = tempfile.mkdtemp(prefix="slimray-train-") if own else storage
    try:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"loop_fn": loop_fn, "config": ray.put(config)},
            scaling_config=ScalingConfig(
                num_workers=int(workers), use_gpu=bool(use_gpu), resources_per_worker={"CPU": float(cpus_per_worker)}
            ),
            run_config=RunConfig(
                name=f"{name or 'train'}-{uuid.uuid4().hex[:8]}",
                storage_path=root,
                failure_config=FailureConfig(max_failures=int(max_failures)),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            return None, []
        with result.checkpoint.as_directory() as folder:
            return load_checkpoint(folder)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
