"""A search execution: prefix once, the Tune search, then the final steps on the best trial.

MLflow: the search run (the execution's parent run, tagged ``slimray.search_key``) holds a
``prefix`` child (data, teacher, ...), one nested run per trial (its step runs below it), the
final steps (benchmark, report: the report publishes and registers the chosen model here, as
in the grid pipeline), ``search/pareto.png``, ``search/trials.md`` and ``search/trials.json``.

Resume: a search's Tune storage is keyed by the search itself (config, steps, seed). Rerunning
after the driver died restores the Tuner (finished trials are kept, not rerun) and reopens the
unfinished search run; the steps of a trial that was cut off are cache hits where they finished.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from rich.console import Console

from pipelines.config.schema import RayConfig, TrackingConfig
from pipelines.config.spec import PipelineSpec, build_spec
from pipelines.run.console import Board
from pipelines.run.dag import Context, StepState
from pipelines.run.lifecycle import Lifecycle, close_open_runs, open_parent
from pipelines.run.session import Outcome
from pipelines.search import pareto
from pipelines.search.config import SearchPlan
from pipelines.search.space import label
from pipelines.search.storage import check_restorable
from pipelines.search.trial import TrialJob, run_spec
from pipelines.search.tuner import callbacks, make_tuner, rows, search_key, storage_name, storage_root
from pipelines.store.tracking import TAG, create_run, ensure_experiment, git_commit, open_runs, resolve_uri


def reopen_or_open(client, experiment_id, cfg, spec, overrides, commit, key) -> str:
    """The unfinished search run with this key (reopened; its stale runs closed KILLED), or a new one."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG}search_key` = '{key}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        root = found[0].info.run_id
        for child in open_runs(client, experiment_id, root):
            close_open_runs(client, experiment_id, child, "KILLED")
        client.update_run(root, status="RUNNING")
        return root
    root = open_parent(client, experiment_id, cfg, spec, overrides, commit)
    client.set_tag(root, f"{TAG}search_key", key)
    return root


def _failed(states: dict[str, StepState]) -> bool:
    return any(st.status in ("failed", "skipped") for st in states.values())


def _steps(client, ctx: Context, spec: PipelineSpec, use_cache: bool, life: Lifecycle, console) -> dict:
    """Steps outside the trials (the prefix, the final steps) on the driver's Ray, live table on."""
    with Board(console) as board:
        node = life.node_id()
        return run_spec(client, ctx, spec, use_cache, [board], node, life.check_fit, life.owns_ray, life.end_runs)


def _run_prefix(client, ctx: Context, plan: SearchPlan, trusted, use_cache: bool, life: Lifecycle, console):
    """The steps before the chain, once, under a ``prefix`` run of the search run."""
    spec = build_spec({"name": plan.name, "steps": {n: plan.steps[n] for n in plan.prefix}}, trusted)
    prefix = create_run(client, ctx.experiment_id, "prefix", ctx.root_run, {f"{TAG}root": ctx.root_run})
    run = life.track(client, ctx.experiment_id, prefix)
    states = _steps(
        client, Context(ctx.uri, ctx.experiment_id, prefix, ctx.seed, ctx.commit), spec, use_cache, life, console
    )
    life.close(run, "FAILED" if _failed(states) else "FINISHED")
    return states


def _publish(client, root: str, plan: SearchPlan, result: list[pareto.Row], bound: float, chosen, note: str):
    objectives = {k: str(v) for k, v in plan.cfg.objectives.items()}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp, "search")
        d.mkdir()
        (d / "pareto.png").write_bytes(pareto.plot(result, objectives, bound, chosen))
        (d / "trials.md").write_text(pareto.table(result, objectives, chosen))
        rows_json = [r.__dict__ | {"feasible": r.feasible} for r in result]
        (d / "trials.json").write_text(json.dumps({"bound": bound, "trials": rows_json}, indent=1, default=str))
        client.log_artifacts(root, str(d), "search")
    front = pareto.front(result, {"val_acc": "max", **objectives})
    metrics: dict[str, float] = {"search.trials": len(result), "search.feasible": sum(r.feasible for r in result)}
    metrics |= {"search.pareto": len(front), "search.bound": bound}
    if chosen is not None:
        metrics |= {f"search.best.{k}": v for k, v in chosen.metrics.items() if k in {"val_acc", *objectives}}
    ts = [Metric(k, float(v), 0, 0) for k, v in metrics.items()]
    tags = [RunTag(f"{TAG}note", note[:500])] + ([RunTag(f"{TAG}selected", chosen.trial_id)] if chosen else [])
    client.log_batch(root, metrics=ts, tags=tags)


def execute(
    cfg: DictConfig,
    spec: PipelineSpec,
    plan: SearchPlan,
    ray_cfg: RayConfig,
    tracking: TrackingConfig,
    overrides: list[str],
    console: Console | None = None,
) -> Outcome:
    """Run the search; exit code 0 (a feasible trial, or the best attempt with a note), 1 when
    a step failed or no trial finished."""
    console = console or Console(stderr=True)
    check_restorable(storage_root(plan), storage_name(search_key(plan, int(cfg.seed))))  # before anything starts
    with Lifecycle(ray_cfg) as life:
        uri = resolve_uri(tracking.uri)
        client = MlflowClient(tracking_uri=uri)
        experiment_id = ensure_experiment(client, tracking.experiment or spec.name)
        seed, commit, use_cache = int(cfg.seed), git_commit(), bool(cfg.cache)
        key = search_key(plan, seed)
        search_run = reopen_or_open(client, experiment_id, cfg, spec, overrides, commit, key)
        root = life.track(client, experiment_id, search_run)
        client.set_tag(root.run_id, f"{TAG}tune_storage", str(storage_root(plan) / f"search-{key[:16]}"))
        life.start_ray()
        ctx = Context(uri, experiment_id, root.run_id, seed, commit)
        states = _run_prefix(client, ctx, plan, spec.trusted_targets, use_cache, life, console)
        if _failed(states):
            return Outcome(spec, states, root.run_id, experiment_id, uri, 1)
        bound, trusted = _bound(plan, states), spec.trusted_targets
        job = TrialJob(plan, uri, experiment_id, root.run_id, seed, commit, use_cache, bound, trusted, life.check_fit)
        chosen = _search(client, plan, job, key, seed, console)
        if chosen is None:
            return Outcome(spec, states, root.run_id, experiment_id, uri, 1)
        final = build_spec({"name": plan.name, "steps": plan.values_params(chosen.values)}, spec.trusted_targets)
        states = _steps(client, ctx, final, use_cache, life, console)
        root.status = "FAILED" if _failed(states) else "FINISHED"
        return Outcome(final, states, root.run_id, experiment_id, uri, 1 if _failed(states) else 0)


def _bound(plan: SearchPlan, states: dict[str, StepState]) -> float:
    """Feasible: the deployed model's val_acc >= the reference's (a step's or a number) - budget."""
    c = plan.cfg.constraint
    reference = c.reference_value if c.reference_value is not None else states[c.reference].summary["val_acc"]
    return float(reference) - c.budget


def _search(client, plan: SearchPlan, job: TrialJob, key: str, seed: int, console) -> pareto.Row | None:
    """The Tune search; its trials, Pareto plot and note on the search run; the chosen trial."""
    sampler_seed = plan.cfg.seed if plan.cfg.seed is not None else seed
    tuner, restored = make_tuner(plan, job, key, sampler_seed, callbacks())
    console.print(
        f"search: {'resuming' if restored else 'starting'} {plan.cfg.algorithm} over {len(plan.dims)} "
        f"parameters, {plan.cfg.num_samples} trials; feasible: val_acc >= {job.bound:.4f}",
        markup=False,
        highlight=False,
    )
    result = rows(plan, tuner.fit())
    for trial_run in open_runs(client, job.experiment_id, job.search_run):  # trials Tune stopped mid-step
        close_open_runs(client, job.experiment_id, trial_run, "KILLED")
    chosen, feasible = pareto.best(result, {k: str(v) for k, v in plan.cfg.objectives.items()})
    note = _note(chosen, feasible, job.bound, result, plan)
    _publish(client, job.search_run, plan, result, job.bound, chosen, note)
    console.print(f"search: {note}", markup=False, highlight=False)
    return chosen


def _note(chosen, feasible: bool, bound: float, result: list[pareto.Row], plan: SearchPlan) -> str:
    obj = next(iter(plan.cfg.objectives))
    if chosen is None:
        return f"no trial finished ({len(result)} tried)"
    what = f"{chosen.trial_id} ({label(chosen.values)}): val_acc {chosen.metrics.get('val_acc', 0):.4f}"
    what += f", {obj} {chosen.metrics.get(obj, float('nan')):.4g}"
    if feasible:
        return f"best feasible trial {what}; {sum(r.feasible for r in result)}/{len(result)} feasible"
    return f"no trial met val_acc >= {bound:.4f}; the best attempt goes on: {what}"
