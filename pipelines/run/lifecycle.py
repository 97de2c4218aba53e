"""The run lifecycle of a driver, in one place: the single run (``session.execute``), the
multirun (``multirun.run``) and the search (``search.driver.execute``) all go through it.

    with Lifecycle(ray_cfg) as life:                  # Ctrl-C handler installed
        run = life.track(client, experiment_id, root)  # the parent run: closed on the way out
        life.start_ray()                               # start or join Ray, when something must run
        life.configure(executor).run()                 # owns_ray, check_fit
        run.status = "FINISHED"
    # on the way out: the runs still open under every tracked run are ended (KILLED after
    # Ctrl-C, else FAILED), each tracked run with its status (KILLED after Ctrl-C); Ray is shut
    # down if this process started it, and the runs are closed once more (a dying worker may
    # open one late)

Ctrl-C (``pipelines.run.interrupt``): the first one only records the request; the driver raises
``KeyboardInterrupt`` at its next safe point (``INTERRUPT.check()``), cleans up as above and the
CLI exits 130; a watchdog exits 130 if the clean-up takes over 8 s, a second Ctrl-C at once.
A submitted job (``pipelines.scale.submit``) runs the same CLI on the cluster, so it goes
through here too.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipelines.config.schema import RayConfig
from pipelines.run.interrupt import INTERRUPT
from pipelines.store import signing
from pipelines.store.tracking import create_run, log_params, open_runs

if TYPE_CHECKING:
    from pipelines.config.spec import PipelineSpec
    from pipelines.run.dag import Executor


def start_ray(rc: RayConfig) -> bool:
    """Start or join Ray; returns True when this process started it (and must shut it down)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(runtime_env=rc.runtime_env or None, log_to_driver=True, logging_level="WARNING")
    if rc.address is None:
        ray.init(
            address="local",
            num_cpus=rc.num_cpus,
            num_gpus=rc.num_gpus,
            include_dashboard=rc.include_dashboard,
            **kwargs,
        )
    else:
        ray.init(address=rc.address, **kwargs)
    return True


def _warm_up() -> None:
    """Import the task stack (torch, mlflow, onnx) in a worker, ahead of the first steps."""
    import pipelines.run.worker  # noqa: F401
    import tasks  # noqa: F401


def warm_workers() -> None:
    """A fresh local Ray has bare worker processes; importing torch & co costs seconds per
    process. Start that in every worker now, overlapped with the driver's tracking set-up,
    instead of on the critical path of the first steps. Fire and forget."""
    import ray

    remote = ray.remote(_warm_up).options(num_cpus=1, name="slimray:warm-up")
    for _ in range(int(ray.cluster_resources().get("CPU", 1))):
        remote.remote()


def open_parent(
    client: MlflowClient,
    experiment_id: str,
    cfg: DictConfig,
    spec: PipelineSpec,
    overrides: list[str],
    commit: str,
    parent: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """An execution's parent run (nested under ``parent``, a multirun's run, when given), with
    the resolved config as params and ``config.yaml``, and the overrides."""
    name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base = {"slimray.pipeline": spec.name, "slimray.overrides": " ".join(overrides)[:5000]}
    run_id = create_run(
        client, experiment_id, name, parent, {**base, "mlflow.source.git.commit": commit, **(tags or {})}
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    log_params(client, run_id, resolved)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        Path(tmp, "overrides.txt").write_text("\n".join(overrides) + "\n")
        client.log_artifacts(run_id, tmp)
    return run_id


def close_open_runs(client: MlflowClient, experiment_id: str, root: str, status: str) -> None:
    """End the runs still RUNNING under ``root``, and theirs (a search's trial runs hold step
    runs): attempts whose worker died for good FAILED, after Ctrl-C KILLED; then ``root`` with
    ``status``. One query when nothing is open."""
    _end_open(client, experiment_id, root, "KILLED" if status == "KILLED" else "FAILED")
    client.log_batch(root, tags=[RunTag("slimray.status", status.lower())])
    client.set_terminated(root, status)


def _end_open(client: MlflowClient, experiment_id: str, root: str, status: str) -> None:
    for run_id in open_runs(client, experiment_id, root):
        _end_open(client, experiment_id, run_id, status)
        client.set_terminated(run_id, status)


@dataclass
class Tracked:
    """A run the lifecycle ends on the way out, with ``status`` (KILLED after Ctrl-C)."""

    client: MlflowClient
    experiment_id: str
    run_id: str
    status: str = "FAILED"  # set FINISHED once the work under it succeeded


class Lifecycle:
    """Ctrl-C, Ray and the parent runs of one driver (see the module docstring)."""

    def __init__(self, ray_cfg: RayConfig):
        self.ray_cfg = ray_cfg
        self.ray_up = False  # Ray started or joined for this driver
        self.started_ray = False  # this process started it: it shuts it down
        self.runs: list[Tracked] = []  # open, in the order they were opened

    def __enter__(self) -> Lifecycle:
        signing.driver_key(self.ray_cfg.address)  # a laptop's local run makes its key; none: one line, now
        INTERRUPT.install()
        return self

    @property
    def owns_ray(self) -> bool:
        """A local Ray this process started: ``ray.shutdown()`` ends every worker, so Ctrl-C
        cancels nothing (``Executor.cancel``: Ray 2.60's ``ray.cancel`` can abort the driver)."""
        return self.started_ray and self.ray_cfg.address is None

    @property
    def check_fit(self) -> bool:
        """Fail a step no node can hold (``pipelines.run.fit``); off: ``ray.wait_for_nodes``."""
        return not self.ray_cfg.wait_for_nodes

    def start_ray(self) -> None:
        """Start or join Ray (once per driver); a fresh local Ray's workers start importing the
        task stack at once."""
        INTERRUPT.check()
        if not self.ray_up:
            self.started_ray = start_ray(self.ray_cfg)
            self.ray_up = True
            if self.owns_ray:
                warm_workers()
        INTERRUPT.check()

    def node_id(self) -> str:
        """The driver's node, as the recorder tags step runs."""
        if self.ray_up:
            import ray

            return ray.get_runtime_context().get_node_id()
        return f"driver:{socket.gethostname()}"

    def configure(self, executor: Executor) -> Executor:
        executor.owns_ray = self.owns_ray
        executor.check_fit = self.check_fit
        executor.before_cancel = self.end_runs
        return executor

    def end_runs(self) -> None:
        """Ctrl-C on a Ray this process joined: end every tracked run (and what is open under it)
        KILLED before the executor cancels its tasks. Ray 2.60's ``ray.cancel`` can abort the
        driver (``Executor.cancel``); the runs must not stay RUNNING if it does. The way out
        ends them once more (a cancelled task may still have opened one). Once per Ctrl-C: each
        executor of a multirun cancels, and the first call has ended every tracked run."""
        if all(run.status == "KILLED" for run in self.runs):
            return
        for run in self.runs:
            run.status = "KILLED"
        self._close_all()

    def track(self, client: MlflowClient, experiment_id: str, run_id: str) -> Tracked:
        """End ``run_id`` (and what is open under it) on the way out, unless ``close``d before."""
        run = Tracked(client, experiment_id, run_id)
        self.runs.append(run)
        return run

    def close(self, run: Tracked, status: str) -> None:
        """End ``run`` now (a multirun's execution that finished while others go on)."""
        run.status = status
        close_open_runs(run.client, run.experiment_id, run.run_id, status)
        self.runs.remove(run)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            for run in self.runs:
                run.status = "KILLED"
        try:
            self._close_all()
        finally:
            if self.started_ray:
                import ray

                ray.shutdown()
                self._close_all()  # a run a dying worker opened late

    def _close_all(self) -> None:
        for run in reversed(self.runs):  # the innermost first: executions before their multirun
            close_open_runs(run.client, run.experiment_id, run.run_id, run.status)
