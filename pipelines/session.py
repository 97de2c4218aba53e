"""One pipeline execution: start (or join) Ray, open the MLflow parent run, execute, summarise."""
from __future__ import annotations

import os
import tempfile
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from pipelines import artifacts
from pipelines.console import Board, table
from pipelines.dag import Context, Executor
from pipelines.spec import PipelineSpec, SpecError, build_spec, typed_params_of
from pipelines.tracking import OUTPUT_DIR, create_run, ensure_experiment, git_commit, log_params, open_runs, resolve_uri
from tasks import TASKS
from tasks.types import Report

ROOT_KEYS = {"pipeline", "data", "teacher_model", "student_model", "ray", "tracking", "seed", "cache"}


@dataclass
class RayConfig:
    address: str | None = None  # null: start an embedded local Ray; "auto", "host:port", "ray://..." join
    num_cpus: int | None = None  # local Ray only (null: all cores)
    num_gpus: int | None = None
    include_dashboard: bool = False
    runtime_env: dict = field(default_factory=dict)


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLFLOW_TRACKING_URI wins; null: sqlite:///<cwd>/mlflow.db
    experiment: str | None = None  # null: the pipeline name


@dataclass
class Outcome:
    spec: PipelineSpec
    states: dict
    run_id: str
    experiment_id: str
    uri: str
    exit_code: int


def validate(cfg: DictConfig) -> tuple[PipelineSpec, RayConfig, TrackingConfig]:
    """Everything checked before Ray starts; raises SpecError (one line)."""
    extra = set(cfg.keys()) - ROOT_KEYS
    if extra:
        raise SpecError(sorted(extra)[0], f"unknown top-level key (allowed: {sorted(ROOT_KEYS)})")
    if not isinstance(cfg.get("seed"), int):
        raise SpecError("seed", f"must be an integer, got '{cfg.get('seed')}'")
    if not isinstance(cfg.get("cache"), bool):
        raise SpecError("cache", f"must be true or false, got '{cfg.get('cache')}'")
    ray_cfg = typed_params_of(RayConfig, OmegaConf.to_container(cfg.ray, resolve=True), "ray", as_object=True)
    tracking = typed_params_of(TrackingConfig, OmegaConf.to_container(cfg.tracking, resolve=True), "tracking", as_object=True)
    return build_spec(cfg.pipeline), ray_cfg, tracking


def start_ray(rc: RayConfig) -> bool:
    """Start or join Ray; returns True when this process started it (and must shut it down)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    kwargs = dict(runtime_env=rc.runtime_env or None, log_to_driver=True, logging_level="WARNING")
    if rc.address is None:
        ray.init(address="local", num_cpus=rc.num_cpus, num_gpus=rc.num_gpus, include_dashboard=rc.include_dashboard, **kwargs)
    else:
        ray.init(address=rc.address, **kwargs)
    return True


def _warm_up() -> None:
    """Import the task stack (torch, mlflow, onnx) in a worker, ahead of the first steps."""
    import pipelines.worker  # noqa: F401
    import tasks  # noqa: F401


def warm_workers() -> None:
    """A fresh local Ray has bare worker processes; importing torch & co costs seconds per
    process. Start that in every worker now, overlapped with the driver's tracking set-up,
    instead of on the critical path of the first steps. Fire and forget."""
    import ray

    remote = ray.remote(_warm_up).options(num_cpus=1, name="slimray:warm-up")
    for _ in range(int(ray.cluster_resources().get("CPU", 1))):
        remote.remote()


def open_parent(client: MlflowClient, experiment_id: str, cfg: DictConfig, spec: PipelineSpec,
                 overrides: list[str], commit: str) -> str:
    name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = create_run(client, experiment_id, name, None, {
        "slimray.pipeline": spec.name, "slimray.overrides": " ".join(overrides)[:5000],
        "mlflow.source.git.commit": commit})
    resolved = OmegaConf.to_container(cfg, resolve=True)
    log_params(client, run_id, resolved)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        Path(tmp, "overrides.txt").write_text("\n".join(overrides) + "\n")
        client.log_artifacts(run_id, tmp)
    return run_id


def _console_reports(ex: Executor, client: MlflowClient) -> list[str]:
    """Text that leaf Report steps want shown (``data["console"]``)."""
    import ray

    out = []
    for name, st in ex.states.items():
        ret = typing.get_type_hints(TASKS[st.spec.task]).get("return")
        if ret is not Report or ex.spec.consumers(name) or st.selected is None:
            continue
        t = st.trials[st.selected]
        if t.output is not None:
            value = ray.get(t.output)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                value = artifacts.load(client.download_artifacts(t.hit.info.run_id, OUTPUT_DIR, tmp))
        if value.data.get("console"):
            out.append(str(value.data["console"]))
    return out


def execute(cfg: DictConfig, spec: PipelineSpec, ray_cfg: RayConfig, tracking: TrackingConfig,
            overrides: list[str], console: Console | None = None) -> Outcome:
    import ray

    console = console or Console(stderr=True)
    started_ray = start_ray(ray_cfg)
    if started_ray and ray_cfg.address is None:
        warm_workers()
    uri = resolve_uri(tracking.uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, tracking.experiment or spec.name)
    commit = git_commit()
    root = open_parent(client, experiment_id, cfg, spec, overrides, commit)
    ctx = Context(uri, experiment_id, root, int(cfg.seed), commit, bool(cfg.cache))
    status = "KILLED"
    try:
        with Board(console) as board:
            ex = Executor(spec, ctx, board)
            states = ex.run()
        failed = [n for n, st in states.items() if st.status == "failed" or
                  any(t.status == "failed" for t in st.trials)]
        status = "FAILED" if failed else "FINISHED"
        for text in _console_reports(ex, client):
            console.print(text, markup=False, highlight=False)
        return Outcome(spec, states, root, experiment_id, uri, 1 if failed else 0)
    finally:
        for run_id in open_runs(client, experiment_id, root):  # attempts whose Ray worker died for good
            client.set_terminated(run_id, "FAILED" if status != "KILLED" else "KILLED")
        client.log_batch(root, tags=[RunTag("slimray.status", status.lower())])
        client.set_terminated(root, status)
        if started_ray:
            ray.shutdown()


def summary(outcome: Outcome, console: Console) -> None:
    if not console.is_terminal:  # on a terminal the live table is still on screen
        console.print(table(outcome.states))
    for name, st in outcome.states.items():
        if st.status in ("failed", "skipped") or (st.note and st.status != "pending"):
            console.print(f"{st.status}: {name}: {st.note}", markup=False, highlight=False)
    word = "finished" if outcome.exit_code == 0 else "FAILED"
    console.print(f"Pipeline '{outcome.spec.name}' {word}. MLflow run {outcome.run_id} "
                  f"(experiment {outcome.experiment_id}) in {outcome.uri}", markup=False, highlight=False)
    console.print(f"Open it: mlflow ui --backend-store-uri {outcome.uri} --host 127.0.0.1 --port 5000"
                  if outcome.uri.startswith("sqlite") else f"Open it: {outcome.uri}/#/experiments/"
                  f"{outcome.experiment_id}/runs/{outcome.run_id}", markup=False, highlight=False)
