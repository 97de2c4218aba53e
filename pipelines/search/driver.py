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
from pipelines.run.dag import Context
from pipelines.run.session import Outcome, close_open_runs, open_parent, start_ray
from pipelines.search import pareto
from pipelines.search.config import SearchPlan
from pipelines.search.space import label
from pipelines.search.trial import TrialJob, run_spec
from pipelines.search.tuner import make_tuner, rows, search_key, storage_root
from pipelines.store.tracking import TAG, create_run, ensure_experiment, git_commit, open_runs, resolve_uri


def reopen_or_open(client, experiment_id, cfg, spec, overrides, commit, key) -> tuple[str, bool]:
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
        return root, True
    root = open_parent(client, experiment_id, cfg, spec, overrides, commit)
    client.set_tag(root, f"{TAG}search_key", key)
    return root, False


def _lines():
    """One stderr line per finished trial (Tune pickles its callbacks: no console object here)."""
    import sys

    from ray import tune

    class Lines(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            m = trial.last_result or {}
            shown = {k: m[k] for k in ("val_acc", "throughput", "size_bytes", "feasible") if k in m}
            word = "stopped" if m.get("stopped") else "finished"
            print(f"search: {trial.trial_id} {word} {shown}", file=sys.stderr, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"search: {trial.trial_id} failed", file=sys.stderr, flush=True)

    return Lines()


def _run_prefix(client, ctx: Context, plan: SearchPlan, trusted, use_cache: bool, node: str, console, check_fit: bool):
    spec = build_spec({"name": plan.name, "steps": {n: plan.steps[n] for n in plan.prefix}}, trusted)
    run = create_run(client, ctx.experiment_id, "prefix", ctx.root_run, {f"{TAG}root": ctx.root_run})
    sub = Context(ctx.uri, ctx.experiment_id, run, ctx.seed, ctx.commit)
    status = "FAILED"
    try:
        with Board(console) as board:
            states = run_spec(client, sub, spec, use_cache, [board], node, check_fit)
        status = "FAILED" if any(st.status in ("failed", "skipped") for st in states.values()) else "FINISHED"
        return states
    finally:
        close_open_runs(client, ctx.experiment_id, run, status)


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
    import ray

    console = console or Console(stderr=True)
    uri = resolve_uri(tracking.uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, tracking.experiment or spec.name)
    seed, commit, use_cache = int(cfg.seed), git_commit(), bool(cfg.cache)
    key = search_key(plan, seed)
    root, resumed = reopen_or_open(client, experiment_id, cfg, spec, overrides, commit, key)
    client.set_tag(root, f"{TAG}tune_storage", str(storage_root(plan) / f"search-{key[:16]}"))
    started, status = start_ray(ray_cfg), "FAILED"
    ctx = Context(uri, experiment_id, root, seed, commit)
    try:
        node = ray.get_runtime_context().get_node_id()
        states = _run_prefix(
            client, ctx, plan, spec.trusted_targets, use_cache, node, console, not ray_cfg.wait_for_nodes
        )
        if any(st.status in ("failed", "skipped") for st in states.values()):
            return Outcome(spec, states, root, experiment_id, uri, 1)
        c = plan.cfg.constraint
        reference = c.reference_value if c.reference_value is not None else states[c.reference].summary["val_acc"]
        bound = float(reference) - c.budget
        job = TrialJob(
            plan,
            uri,
            experiment_id,
            root,
            seed,
            commit,
            use_cache,
            bound,
            spec.trusted_targets,
            not ray_cfg.wait_for_nodes,
        )
        sampler_seed = plan.cfg.seed if plan.cfg.seed is not None else seed
        tuner, restored = make_tuner(plan, job, key, sampler_seed, [_lines()])
        console.print(
            f"search: {'resuming' if restored else 'starting'} {plan.cfg.algorithm} over {len(plan.dims)} "
            f"parameters, {plan.cfg.num_samples} trials; feasible: val_acc >= {bound:.4f}",
            markup=False,
            highlight=False,
        )
        result = rows(plan, tuner.fit())
        objectives = {k: str(v) for k, v in plan.cfg.objectives.items()}
        chosen, feasible = pareto.best(result, objectives)
        note = _note(chosen, feasible, bound, result, plan)
        _publish(client, root, plan, result, bound, chosen, note)
        console.print(f"search: {note}", markup=False, highlight=False)
        if chosen is None:
            return Outcome(spec, states, root, experiment_id, uri, 1)
        final = build_spec({"name": plan.name, "steps": plan.values_params(chosen.values)}, spec.trusted_targets)
        with Board(console) as board:
            states = run_spec(client, ctx, final, use_cache, [board], node, not ray_cfg.wait_for_nodes)
        failed = any(st.status in ("failed", "skipped") for st in states.values())
        status = "FAILED" if failed else "FINISHED"
        return Outcome(final, states, root, experiment_id, uri, 1 if failed else 0)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for trial_run in open_runs(client, experiment_id, root):  # trials Tune stopped mid-step
            close_open_runs(client, experiment_id, trial_run, "KILLED")
        close_open_runs(client, experiment_id, root, status)
        if started:
            ray.shutdown()


def _note(chosen, feasible: bool, bound: float, result: list[pareto.Row], plan: SearchPlan) -> str:
    obj = next(iter(plan.cfg.objectives))
    if chosen is None:
        return f"no trial finished ({len(result)} tried)"
    what = f"{chosen.trial_id} ({label(chosen.values)}): val_acc {chosen.metrics.get('val_acc', 0):.4f}"
    what += f", {obj} {chosen.metrics.get(obj, float('nan')):.4g}"
    if feasible:
        return f"best feasible trial {what}; {sum(r.feasible for r in result)}/{len(result)} feasible"
    return f"no trial met val_acc >= {bound:.4f}; the best attempt goes on: {what}"
