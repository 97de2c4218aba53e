"""slimray's public API: compose a config, validate it, execute it (what ``slimray`` does).

    from pipelines import api

    cfg = api.load_config(["experiment=smoke"])   # Hydra: conf/ + ./conf + SLIMRAY_CONF folders
    plan = api.validate(cfg)                      # SpecError (one line) on any problem; starts nothing
    outcome = api.execute(plan, ["experiment=smoke"])   # Ray + MLflow; outcome.exit_code

``pipelines.cli`` parses the command line and calls ``run`` / ``multirun`` / ``serve`` /
``submit`` here, which turn errors into exit codes: 2 for a config error (before Ray starts or any
MLflow run is created), 1 for a failed step, 130 for Ctrl-C. The rooms behind it: ``config/``
(compose, schema, spec), ``run/`` (session, multirun, executor), ``store/`` (cache keys, MLflow),
``scale/`` (serve, submit, pools), ``search/`` (Ray Tune over a pipeline's steps).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from pipelines.config.compose import conf_dir, load_config, one_line
from pipelines.config.errors import CONFIG_ERRORS, SpecError

if TYPE_CHECKING:  # the engine's rooms import Ray/MLflow/the step table: only when used
    from pipelines.config.schema import RayConfig, TrackingConfig
    from pipelines.config.spec import PipelineSpec
    from pipelines.search.config import SearchPlan

__all__ = ["CONFIG_ERRORS", "Plan", "SpecError", "execute", "load_config", "one_line", "run", "validate"]

INTERRUPTED = "interrupted: Ray tasks cancelled, MLflow runs marked KILLED"


@dataclass
class Plan:
    """A validated config: everything ``execute`` needs, checked before anything starts."""

    cfg: DictConfig
    spec: PipelineSpec
    ray: RayConfig
    tracking: TrackingConfig
    search: SearchPlan | None  # the pipeline's enabled search section (pipelines/search/), else None


def validate(cfg: DictConfig) -> Plan:
    """The composed config against the schemas, the pipeline's steps, params, inputs, model parts
    and search section; raises one of ``CONFIG_ERRORS`` (``SpecError``: one line naming the key)."""
    from pipelines import search
    from pipelines.run import session

    spec, ray_cfg, tracking = session.validate(cfg)
    return Plan(cfg, spec, ray_cfg, tracking, search.plan_of(cfg))


def execute(plan: Plan, overrides: list[str], console: Console | None = None) -> Any:
    """Run a validated plan: the tracking store checked (``PreflightError`` within seconds), then
    the pipeline, or its search. Returns the session's ``Outcome`` (``exit_code``, ``run_id``, ...)."""
    from pipelines.run import session
    from pipelines.run.console import store_line
    from pipelines.store import preflight
    from pipelines.store.tracking import resolve_store

    console = console or Console(stderr=True)
    uri, source = resolve_store(plan.tracking.uri)
    preflight.check_tracking(uri)  # a store that cannot be used is the one error line instead
    console.print(store_line(uri, source), markup=False, highlight=False)
    if plan.search is not None:
        from pipelines.search.driver import execute as search_execute

        return search_execute(plan.cfg, plan.spec, plan.search, plan.ray, plan.tracking, overrides, console)
    return session.execute(plan.cfg, plan.spec, plan.ray, plan.tracking, overrides, console)


def config_error(e: BaseException) -> int:
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2


def run(overrides: list[str], show: str | None = None, console: Console | None = None) -> int:
    """``slimray [overrides]``: compose, validate, execute; the exit code. ``show`` = ``--cfg``
    (print the resolved config) or ``--dry-run`` (list the steps) instead of executing."""
    from pipelines.run import session
    from pipelines.store.preflight import PreflightError

    err = console or stderr_console()
    try:
        plan = validate(load_config(overrides))
    except CONFIG_ERRORS as e:
        return config_error(e)
    if show == "--cfg":
        print(OmegaConf.to_yaml(plan.cfg, resolve=True))
        return 0
    if show == "--dry-run":
        for s in plan.spec.steps.values():
            err.print(f"{s.name}: {s.task} <- {s.upstream or '-'} ({len(s.trials)} trial(s))", markup=False)
        return 0
    try:
        outcome = execute(plan, overrides, err)
    except PreflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        err.print(INTERRUPTED, markup=False)
        return 130
    session.summary(outcome, err)
    return outcome.exit_code


def multirun(overrides: list[str], show: str | None = None, jobs: int = 4, console: Console | None = None) -> int:
    """``slimray -m``: Hydra's sweep over the overrides, every execution validated before any runs,
    then up to ``jobs`` executions at once on one Ray."""
    from pipelines.run import multirun as runs
    from pipelines.run.console import store_line
    from pipelines.store import preflight
    from pipelines.store.tracking import resolve_store

    err = console or stderr_console()
    try:
        found = runs.prepare(overrides, conf_dir(), load_config)
    except CONFIG_ERRORS as e:
        return config_error(e)
    if show == "--cfg":
        for job in found:
            print(f"# execution {job.index}: {job.label or '(no sweep)'}")
            print(OmegaConf.to_yaml(job.cfg, resolve=True))
        return 0
    if show == "--dry-run":
        runs.describe(found, err)
        return 0
    uri, source = resolve_store(found[0].tracking.uri)
    try:
        preflight.check_tracking(uri)
    except preflight.PreflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    err.print(store_line(uri, source), markup=False, highlight=False)
    try:
        return runs.run(found, err, jobs)
    except preflight.PreflightError as e:  # e.g. the driver's cache key (pipelines.store.signing)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        err.print(INTERRUPTED, markup=False)
        return 130


def serve(args: list[str]) -> int:
    """``slimray serve [KEY=VALUE ...]``: a registered model as a Ray Serve application."""
    from pipelines.scale.serve import main

    return main(args)


def submit(args: list[str]) -> int:
    """``slimray submit [overrides]``: the same pipeline as a Ray Job on a cluster."""
    from pipelines.scale.submit import main

    return main(args)


def stderr_console() -> Console:
    """The console for progress and summaries; in logs, wide enough that the table does not wrap."""
    err = Console(stderr=True)
    return err if err.is_terminal else Console(stderr=True, width=160)


def quiet_ray_logs() -> None:
    """Ray forwards worker output to the driver with coloured ``(task pid=..)`` prefixes and
    folds repeats into ``[repeated 4x across cluster]`` lines. slimray's progress lines are
    rate-limited and distinct, so the folding only adds noise: off. Colours only on a terminal.
    Both are read when Ray is imported / prints, so set them first (a user's setting wins)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def importable_cwd() -> None:
    """A user's model module lives in their project (``_target_: mymodels.Net``): make the
    working directory importable here and in the Ray workers this process starts, as
    ``python -m`` does, so ``slimray`` needs no ``PYTHONPATH=.``."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if cwd not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, *paths) if p)
