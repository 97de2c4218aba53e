"""One pipeline execution: keys and cache hits, the parent run, the executor, the summary.
Ray, Ctrl-C and closing the runs are the lifecycle's (``pipelines.run.lifecycle``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from rich.console import Console

from pipelines.config.schema import RayConfig, TrackingConfig, check_root
from pipelines.config.spec import PipelineSpec, build_spec
from pipelines.run.console import Board, table
from pipelines.run.dag import Context, Executor
from pipelines.run.interrupt import INTERRUPT
from pipelines.run.lifecycle import Lifecycle, Tracked, open_parent
from pipelines.run.placement import place
from pipelines.run.worker import Facts
from pipelines.store.keys import step_keys
from pipelines.store.recorder import RunRecorder
from pipelines.store.tracking import ensure_experiment, find_cached, git_commit, resolve_uri


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


@dataclass
class Keyed:
    """The cache keys of an execution, what they read on the driver, and where measuring steps run."""

    keys: dict[str, list[str]]
    facts: dict[str, list[Facts]]  # per step and trial, for the worker's check (pipelines.run.worker)
    pins: dict[str, list[str]]  # measuring step -> node ids (pipelines.run.placement)


def plan_keys(spec: PipelineSpec, seed: int, join: Callable[[], None] | None = None) -> Keyed:
    """Every trial's key, its measuring steps keyed on the hardware of the nodes they will run on
    (``pipelines.run.placement``). ``join`` joins the configured Ray cluster (None: a local run,
    unless this process is already connected to a Ray)."""
    placement = place(spec, join)
    raw: dict[str, list[dict]] = {}
    keys = step_keys(spec, seed, hardware=placement.of, facts=raw)
    return Keyed(keys, {n: [Facts(**f) for f in fs] for n, fs in raw.items()}, placement.pins)


def lookup_cache(
    client: MlflowClient, experiment_id: str, spec: PipelineSpec, keys: dict[str, list[str]], use_cache: bool
) -> dict[str, list]:
    """The stored run of every trial's key (None where there is none, or caching is off)."""
    return {
        name: [find_cached(client, experiment_id, k) if use_cache and s.cache else None for k in keys[name]]
        for name, s in spec.steps.items()
    }


@dataclass
class Execution:
    """One execution from ``begin`` to its end: its tracking, keys, cache hits, executor."""

    cfg: DictConfig
    spec: PipelineSpec
    client: MlflowClient
    ctx: Context
    keyed: Keyed
    hits: dict[str, list]
    run: Tracked  # the parent run, ended by the lifecycle
    executor: Executor | None = None
    recorder: RunRecorder | None = None

    @property
    def keys(self) -> dict[str, list[str]]:
        return self.keyed.keys

    @property
    def must_run(self) -> bool:
        return any(h is None for trial_hits in self.hits.values() for h in trial_hits)


def begin(
    cfg: DictConfig,
    spec: PipelineSpec,
    tracking: TrackingConfig,
    overrides: list[str],
    life: Lifecycle,
    parent: str | None = None,
    tags: dict[str, str] | None = None,
) -> Execution:
    """Keys, cache look-ups and the parent run (``life`` ends it): everything before the first
    Ray task."""
    uri = resolve_uri(tracking.uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, tracking.experiment or spec.name)
    keyed = plan_keys(spec, int(cfg.seed), life.start_ray if life.ray_cfg.address is not None else None)
    hits = lookup_cache(client, experiment_id, spec, keyed.keys, bool(cfg.cache))
    commit = git_commit()
    root = life.track(
        client, experiment_id, open_parent(client, experiment_id, cfg, spec, overrides, commit, parent, tags)
    )
    ctx = Context(uri, experiment_id, root.run_id, int(cfg.seed), commit)
    return Execution(cfg, spec, client, ctx, keyed, hits, root)


def make_executor(
    client: MlflowClient,
    ctx: Context,
    spec: PipelineSpec,
    keys: dict[str, list[str]],
    hits: dict[str, list],
    node_id: str,
    listeners: list,
    shared: dict | None = None,
    keyed: Keyed | None = None,
) -> tuple[Executor, RunRecorder]:
    """An executor with the MLflow recorder first among its listeners. ``shared`` is a
    multirun's table of computing trials by cache key (``pipelines.run.dag``); ``keyed`` what
    the keys read on the driver (the workers check it) and the measuring steps' nodes."""
    recorder = RunRecorder(client, ctx, node_id)
    facts, pins = (keyed.facts, keyed.pins) if keyed is not None else (None, None)
    executor = Executor(spec, ctx, keys, hits, [recorder, *listeners], shared, facts, pins)
    recorder.executor = executor
    return executor, recorder


def attach(ex: Execution, node_id: str, listeners: list, shared: dict | None = None) -> Executor:
    """The execution's executor (``make_executor``)."""
    ex.executor, ex.recorder = make_executor(
        ex.client, ex.ctx, ex.spec, ex.keys, ex.hits, node_id, listeners, shared, ex.keyed
    )
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
    with Lifecycle(ray_cfg) as life:
        ex = begin(cfg, spec, tracking, overrides, life)
        if ex.must_run:
            life.start_ray()
        INTERRUPT.check()
        with Board(console) as board:
            executor = life.configure(attach(ex, life.node_id(), [board]))
            board.states = executor.states
            executor.run()
        result = outcome(ex)
        ex.run.status = "FAILED" if result.exit_code else "FINISHED"
        for text in ex.recorder.console if ex.recorder else []:
            console.print(text, markup=False, highlight=False)
        return result


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
    console.print(open_it(outcome.uri, outcome.experiment_id, outcome.run_id), markup=False, highlight=False)


# MLflow 3.17's UI reads the workflow type from this query parameter first, then from the browser's
# localStorage (``mlflow.workflowType``, "genai" in a new browser): without it a new browser opens an
# experiment on the GenAI overview of traces, whatever the experiment's ``mlflow.experimentKind`` tag.
UI_QUERY = "?workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run: on the tracking server of ``uri``, else on ``mlflow ui``'s default."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{UI_QUERY}"


def open_it(uri: str, experiment_id: str, run_id: str) -> str:
    """The last console line: the run's page, and for a store without a server the command that serves it."""
    link = run_link(uri, experiment_id, run_id)
    if uri.startswith(("http://", "https://")):
        return f"Open it: {link}"
    return f"Open it: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then {link}"
