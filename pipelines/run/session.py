"""One pipeline execution: start (or join) Ray, open the MLflow parent run, execute, summarise."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from pipelines.config.schema import RayConfig, TrackingConfig, check_root
from pipelines.config.spec import PipelineSpec, build_spec
from pipelines.run.console import Board, table
from pipelines.run.dag import Context, Executor
from pipelines.run.interrupt import INTERRUPT
from pipelines.store.keys import step_keys
from pipelines.store.recorder import RunRecorder
from pipelines.store.tracking import (
    create_run,
    ensure_experiment,
    find_cached,
    git_commit,
    log_params,
    open_runs,
    resolve_uri,
)


@dataclass
class Outcome:
    spec: PipelineSpec
    states: dict
    run_id: str
    experiment_id: str
    uri: str
    exit_code: int
    registered: list[str] = field(default_factory=list)  # "name@alias vN" of models registered


def validate(cfg: DictConfig) -> tuple[PipelineSpec, RayConfig, TrackingConfig]:
    """Everything checked before Ray starts: the composed config against ``RootConfig``, then the
    pipeline (task params, sweeps, inputs, model parts); raises SpecError (one line)."""
    root = check_root(cfg)
    return build_spec(root.pipeline, root.trusted_models), root.ray, root.tracking


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
    """The execution's parent run (nested under ``parent``, a multirun's run, when given)."""
    name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = create_run(
        client,
        experiment_id,
        name,
        parent,
        {
            "slimray.pipeline": spec.name,
            "slimray.overrides": " ".join(overrides)[:5000],
            "mlflow.source.git.commit": commit,
            **(tags or {}),
        },
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    log_params(client, run_id, resolved)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        Path(tmp, "overrides.txt").write_text("\n".join(overrides) + "\n")
        client.log_artifacts(run_id, tmp)
    return run_id


def lookup_cache(
    client: MlflowClient, experiment_id: str, spec: PipelineSpec, keys: dict[str, list[str]], use_cache: bool
) -> dict[str, list]:
    """The stored run of every trial's key (None where there is none, or caching is off)."""
    return {
        name: [find_cached(client, experiment_id, k) if use_cache and s.cache else None for k in keys[name]]
        for name, s in spec.steps.items()
    }


def node_id(ray_started: bool) -> str:
    if ray_started:
        import ray

        return ray.get_runtime_context().get_node_id()
    return f"driver:{socket.gethostname()}"


@dataclass
class Execution:
    """One execution from ``begin`` to ``close_open_runs``: its tracking, keys, cache hits, executor."""

    cfg: DictConfig
    spec: PipelineSpec
    client: MlflowClient
    ctx: Context
    keys: dict[str, list[str]]
    hits: dict[str, list]
    executor: Executor | None = None
    recorder: RunRecorder | None = None

    @property
    def must_run(self) -> bool:
        return any(h is None for trial_hits in self.hits.values() for h in trial_hits)


def begin(
    cfg: DictConfig,
    spec: PipelineSpec,
    tracking: TrackingConfig,
    overrides: list[str],
    parent: str | None = None,
    tags: dict[str, str] | None = None,
) -> Execution:
    """Keys, cache look-ups and the parent run: everything before the first Ray task."""
    uri = resolve_uri(tracking.uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, tracking.experiment or spec.name)
    keys = step_keys(spec, int(cfg.seed))
    hits = lookup_cache(client, experiment_id, spec, keys, bool(cfg.cache))
    commit = git_commit()
    root = open_parent(client, experiment_id, cfg, spec, overrides, commit, parent, tags)
    return Execution(cfg, spec, client, Context(uri, experiment_id, root, int(cfg.seed), commit), keys, hits)


def attach(ex: Execution, node_id: str, listeners: list, shared: dict | None = None) -> Executor:
    """The execution's executor, with the MLflow recorder first among its listeners.
    ``shared`` is a multirun's table of computing trials by cache key (``pipelines.run.dag``)."""
    ex.recorder = RunRecorder(ex.client, ex.ctx, node_id)
    ex.executor = Executor(ex.spec, ex.ctx, ex.keys, ex.hits, [ex.recorder, *listeners], shared)
    ex.recorder.executor = ex.executor
    return ex.executor


def outcome(ex: Execution) -> Outcome:
    assert ex.executor is not None and ex.recorder is not None
    states = ex.executor.states
    failed = [n for n, st in states.items() if st.status == "failed" or any(t.status == "failed" for t in st.trials)]
    c = ex.ctx
    return Outcome(ex.spec, states, c.root_run, c.experiment_id, c.uri, 1 if failed else 0, ex.recorder.registered)


def execute(
    cfg: DictConfig,
    spec: PipelineSpec,
    ray_cfg: RayConfig,
    tracking: TrackingConfig,
    overrides: list[str],
    console: Console | None = None,
) -> Outcome:
    """Run one execution. Cache hits are resolved from MLflow first: Ray is started (or joined)
    only when some step has to run, so an unchanged rerun costs imports plus a few queries."""
    console = console or Console(stderr=True)
    INTERRUPT.install()
    ex = begin(cfg, spec, tracking, overrides)
    started_ray, status = False, "FAILED"
    try:
        INTERRUPT.check()
        if ex.must_run:
            started_ray = start_ray(ray_cfg)
            if started_ray and ray_cfg.address is None:
                warm_workers()
        INTERRUPT.check()
        with Board(console) as board:
            executor = attach(ex, node_id(ex.must_run), [board])
            board.states = executor.states
            executor.owns_ray = started_ray and ray_cfg.address is None
            executor.check_fit = not ray_cfg.wait_for_nodes
            executor.run()
        result = outcome(ex)
        status = "FAILED" if result.exit_code else "FINISHED"
        for text in ex.recorder.console if ex.recorder else []:
            console.print(text, markup=False, highlight=False)
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        close_open_runs(ex.client, ex.ctx.experiment_id, ex.ctx.root_run, status)
        if started_ray:
            import ray

            ray.shutdown()
            # a run a dying worker opened late
            close_open_runs(ex.client, ex.ctx.experiment_id, ex.ctx.root_run, status)


def close_open_runs(client: MlflowClient, experiment_id: str, root: str, status: str) -> None:
    """End the execution's runs still RUNNING (attempts whose worker died for good: FAILED;
    after Ctrl-C: KILLED), then the parent run with ``status``."""
    for run_id in open_runs(client, experiment_id, root):
        client.set_terminated(run_id, "FAILED" if status != "KILLED" else "KILLED")
    client.log_batch(root, tags=[RunTag("slimray.status", status.lower())])
    client.set_terminated(root, status)


def summary(outcome: Outcome, console: Console) -> None:
    if not console.is_terminal:  # on a terminal the live table is still on screen
        console.print(table(outcome.states))
    for name, st in outcome.states.items():
        if st.status in ("failed", "skipped") or (st.note and st.status != "pending"):
            console.print(f"{st.status}: {name}: {st.note}", markup=False, highlight=False)
    word = "finished" if outcome.exit_code == 0 else "FAILED"
    console.print(
        f"Pipeline '{outcome.spec.name}' {word}. MLflow run {outcome.run_id} "
        f"(experiment {outcome.experiment_id}) in {outcome.uri}",
        markup=False,
        highlight=False,
    )
    console.print(
        f"Open it: mlflow ui --backend-store-uri {outcome.uri} --host 127.0.0.1 --port 5000"
        if outcome.uri.startswith("sqlite")
        else f"Open it: {outcome.uri}/#/experiments/{outcome.experiment_id}/runs/{outcome.run_id}",
        markup=False,
        highlight=False,
    )
