"""``slimray --multirun``: Hydra's sweep grammar expanded into concurrent executions on one Ray.

    slimray -m pipeline.steps.prune.params.kd_temperature=1.0,2.0,4.0 [--jobs=N]

Hydra expands (its ``OverridesParser`` with the config loader, so ``glob()`` sees the groups, and
``BasicSweeper.split_arguments``: comma lists, ``range()``, ``choice()``, ``glob()``, products, in
``hydra -m`` order); every execution is validated before anything runs (exit 2). One driver runs
them: each execution has its own executor, parent run and recorder; one loop ``ray.wait``s on
the union of their in-flight refs, admitting at most ``--jobs`` executions at once. Trials with
the same cache key are computed once: the executors share ``cache key -> (output ref, meta
ref)``, also while in flight (``pipelines.run.dag``), and the others record a hit on the computing
run. MLflow: one multirun run, each execution's parent nested under it and tagged with its
overrides, the comparison logged to it at the end (``pipelines.store.compare``). docs/architecture.md
has the reasons.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig
from rich.console import Console

from pipelines.config.errors import CONFIG_ERRORS, SpecError
from pipelines.config.schema import RayConfig, TrackingConfig
from pipelines.config.spec import PipelineSpec

if TYPE_CHECKING:  # the session imports MLflow: only when something runs
    from pipelines.run.dag import Executor
    from pipelines.run.lifecycle import Lifecycle, Tracked
    from pipelines.run.session import Execution

MULTIRUN_TAG = "slimray.multirun"  # on the multirun run: "true"; on an execution's parent: the multirun run id


@dataclass
class Job:
    """One execution of a multirun, composed and validated."""

    index: int
    overrides: list[str]  # every override of this execution, as Hydra's sweeper wrote them
    label: str  # the swept overrides only: "pipeline.steps.prune.params.amount=0.5"
    cfg: DictConfig
    spec: PipelineSpec
    ray: RayConfig
    tracking: TrackingConfig


def expand(overrides: list[str], config_dir: Path) -> tuple[list[list[str]], list[str]]:
    """Hydra's sweep expansion: the override lists of every job, and the swept keys."""
    from pipelines.config import schema
    from pipelines.config.compose import user_conf_dirs

    schema.register()
    search_path = create_config_search_path(str(config_dir))
    for d in user_conf_dirs():  # the user's config folders, as load_config composes: glob() sees them
        search_path.append("slimray", f"file://{d}")
    parser = OverridesParser.create(config_loader=ConfigLoaderImpl(config_search_path=search_path))
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException as e:  # the override that does not parse, and why
        raise SpecError(e.override, str(e).splitlines()[0]) from None
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    return [list(j) for j in jobs], swept


def _label(job_overrides: list[str], swept: list[str]) -> str:
    return " ".join(o for o in job_overrides if o.split("=", 1)[0] in swept)


class JobError(ValueError):
    """A config error in one execution: one line naming the execution and the config path."""


def prepare(overrides: list[str], config_dir: Path, compose) -> list[Job]:
    """Expand, then compose and validate every execution (``compose(overrides) -> DictConfig``).
    Raises JobError/SpecError (one line) for the first execution that does not validate, and
    when executions disagree on what must be one for all of them (the Ray cluster, the store)."""

    from pipelines import search
    from pipelines.run import session

    expanded, swept = expand(overrides, config_dir)
    jobs = []
    for i, job_overrides in enumerate(expanded):
        label = _label(job_overrides, swept)
        try:
            cfg = compose(job_overrides)
            spec, ray_cfg, tracking = session.validate(cfg)
            if search.plan_of(cfg) is not None:  # a Tune search is one driver's whole loop
                raise SpecError("pipeline.search", "a search runs alone; under -m set pipeline.search.enabled=false")
        except CONFIG_ERRORS as e:
            from pipelines.config.compose import one_line

            raise JobError(f"execution {i} ({label or 'no sweep'}): {one_line(e)}") from None
        jobs.append(Job(i, job_overrides, label, cfg, spec, ray_cfg, tracking))
    first = jobs[0]
    for job in jobs[1:]:
        if job.ray != first.ray:
            raise SpecError("ray", f"execution {job.index} ({job.label}): every execution must use one Ray")
        if job.tracking.uri != first.tracking.uri:
            raise SpecError("tracking.uri", f"execution {job.index} ({job.label}): every execution must use one store")
    return jobs


def describe(jobs: list[Job], console: Console) -> None:
    """``--dry-run``: the executions, and how many step trials they share by cache key."""
    from pipelines.store.keys import step_keys

    total, distinct = 0, set()
    for job in jobs:
        keys = step_keys(job.spec, int(job.cfg.seed))
        flat = [k for ks in keys.values() for k in ks]
        total += len(flat)
        distinct.update(flat)
        console.print(
            f"execution {job.index}: {job.label or '(no sweep)'} -> pipeline {job.spec.name}, "
            f"{len(job.spec.steps)} steps, {len(flat)} step trials",
            markup=False,
            highlight=False,
        )
    console.print(
        f"{len(jobs)} executions, {total} step trials, {len(distinct)} distinct cache keys "
        f"({total - len(distinct)} shared, run once)",
        markup=False,
        highlight=False,
    )


class Lines:
    """Console listener of one execution: one plain line per status change, prefixed ``[i]``."""

    def __init__(self, console: Console, index: int):
        self.console, self.prefix = console, f"[{index}]"
        self.seen: dict[str, str] = {}

    def on_event(self, event: str, st, trial) -> None:  # noqa: ARG002 - the listener signature
        key = st.status
        if self.seen.get(st.spec.name) == key:
            return
        self.seen[st.spec.name] = key
        note = f" - {st.note}" if st.note and st.status in ("failed", "skipped") else ""
        shared = " (shared)" if any(t.shared for t in st.trials) and st.status == "cached" else ""
        self.console.print(f"{self.prefix} {st.status:>8} {st.spec.name}{shared}{note}", markup=False, highlight=False)


class SharedRuns:
    """MLflow listener for ``trial_shared``: the trial was computed by another execution, so this
    execution records it as a cache hit on the computing run, and publishes from there."""

    def __init__(self, execution: Execution):
        self.execution = execution

    def on_event(self, event: str, st, trial) -> None:
        if event != "trial_shared" or trial is None or trial.meta is None:
            return
        ex = self.execution
        trial.hit = ex.client.get_run(trial.meta.run_id)
        assert ex.recorder is not None
        ex.recorder.on_event("trial_cached", st, trial)


@dataclass
class Active:
    job: Job
    execution: Execution
    executor: Executor


def run(jobs: list[Job], console: Console, max_parallel: int = 4) -> int:
    """Run every execution concurrently (at most ``max_parallel`` at once) from this driver.
    Returns the exit code: 0 all finished, 1 any failed (the others still finish)."""
    from pipelines.run.lifecycle import Lifecycle

    loop = _Loop(jobs, console, max_parallel)
    try:
        with Lifecycle(jobs[0].ray) as life:
            loop.open(life)
            loop.run()
            return loop.compare()
    finally:
        if loop.root is not None:
            r = loop.root
            console.print(
                f"Multirun {r.status.lower()}: MLflow run {r.run_id} (experiment {r.experiment_id})", markup=False
            )


class _Loop:
    """The driver's event loop over several executors (see the module docstring)."""

    def __init__(self, jobs: list[Job], console: Console, max_parallel: int):
        self.jobs, self.pending, self.console = jobs, list(jobs), console
        self.max_parallel = max(1, max_parallel)
        self.active: list[Active] = []
        self.results: list[tuple] = []  # (job, session.Outcome, exit code)
        self.shared: dict = {}
        self.root: Tracked | None = None  # the multirun run

    def open(self, life: Lifecycle) -> None:
        """The multirun run, which every execution's parent run nests under."""
        from mlflow.tracking import MlflowClient

        from pipelines.store.tracking import create_run, ensure_experiment, resolve_uri

        self.life, first = life, self.jobs[0]
        client = MlflowClient(tracking_uri=resolve_uri(first.tracking.uri))
        experiment_id = ensure_experiment(client, first.tracking.experiment or first.spec.name)
        name = f"multirun-{first.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {MULTIRUN_TAG: "true", "slimray.executions": str(len(self.jobs))}
        self.root = life.track(client, experiment_id, create_run(client, experiment_id, name, None, tags))
        self.console.print(f"multirun: {len(self.jobs)} executions, at most {self.max_parallel} at once", markup=False)

    def admit(self) -> None:
        from pipelines.run import session

        assert self.root is not None
        while self.pending and len(self.active) < self.max_parallel:
            job = self.pending.pop(0)
            tags = {MULTIRUN_TAG: self.root.run_id, "slimray.job": str(job.index), "slimray.sweep": job.label}
            ex = session.begin(job.cfg, job.spec, job.tracking, job.overrides, self.life, self.root.run_id, tags)
            if ex.must_run:
                self.life.start_ray()
            listeners = [SharedRuns(ex), Lines(self.console, job.index)]
            executor = session.attach(ex, self.life.node_id(), listeners, self.shared)
            self.active.append(Active(job, ex, executor))
            for a in self.active:  # Ray may have started only now
                self.life.configure(a.executor)

    def retire(self) -> None:
        from pipelines.run import session

        for a in list(self.active):
            if not a.executor.advance():
                continue
            out = session.outcome(a.execution)
            self.life.close(a.execution.run, "FAILED" if out.exit_code else "FINISHED")
            self.active.remove(a)
            self.results.append((a.job, out, out.exit_code))
            word = "finished" if out.exit_code == 0 else "FAILED"
            self.console.print(f"[{a.job.index}] execution {word}: {a.job.label} (run {out.run_id})", markup=False)
            for name, st in out.states.items():
                if st.status in ("failed", "skipped"):
                    self.console.print(f"[{a.job.index}] {st.status}: {name}: {st.note}", markup=False, highlight=False)

    def run(self) -> None:
        from pipelines.run.interrupt import INTERRUPT

        try:
            while self.pending or self.active:
                INTERRUPT.check()
                self.admit()
                self.retire()
                refs = list(dict.fromkeys(r for a in self.active for r in a.executor.inflight))
                if not refs:
                    continue
                import ray

                for ref in ray.wait(refs, num_returns=1, timeout=0.5)[0]:
                    for a in self.active:
                        if ref in a.executor.inflight:
                            a.executor.on_result(ref)
        except KeyboardInterrupt:
            self.cancel()
            raise
        self.results.sort(key=lambda r: r[0].index)

    def compare(self) -> int:
        """The comparison on the multirun run; the exit code (1 when an execution failed)."""
        from pipelines.store.compare import log_comparison

        assert self.root is not None
        log_comparison(self.root.client, self.root.run_id, self.results, self.console)
        failed = any(code != 0 for _, _, code in self.results)
        self.root.status = "FAILED" if failed else "FINISHED"
        return 1 if failed else 0

    def cancel(self, settle_s: float = 3.0) -> None:
        """Ctrl-C: every executor cancels its tasks without waiting, then one wait for them all
        (one settle time, not one per execution: the watchdog allows 8 s in all)."""
        refs = list(dict.fromkeys(r for a in self.active for r in a.executor.inflight))
        for a in self.active:
            a.executor.cancel(settle_s=0.0)
        if refs and not self.life.owns_ray:
            import ray

            try:
                ray.wait(refs, num_returns=len(refs), timeout=settle_s)
            except Exception:  # noqa: BLE001 - a cancelled ref may raise here; we only wait
                pass
