"""One search trial: the chain with the trial's values, run through the engine's executor and
cache, as a nested MLflow run of the search run.

The trial builds a small pipeline (prefix + chain + a ``measure`` step that benchmarks the
deployed model) and executes it like any pipeline: steps whose key is stored are cache hits,
so the prefix is only loaded, and a chain prefix another trial already computed (the same
distillation settings) is reused. After each chain step the trial reports the step's
``val_acc`` to Tune (ASHA's rungs), and stops itself once that accuracy is below the
feasibility bound minus ``slack`` (a threshold pruner: the remaining steps cannot make it
feasible). The final report holds the objectives, ``val_acc`` and ``feasible``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipelines.config.spec import PipelineSpec, build_spec
from pipelines.run.dag import Context, StepState, Trial
from pipelines.search.config import MEASURES, EarlyStop, SearchPlan
from pipelines.search.space import decode, label
from pipelines.store.tracking import create_run, log_params

MEASURE = "measure"


@dataclass
class TrialJob:
    plan: SearchPlan
    uri: str
    experiment_id: str
    search_run: str
    seed: int
    commit: str
    use_cache: bool
    bound: float  # feasible: the deployed model's val_acc >= bound
    trusted: tuple[str, ...] = ()
    check_fit: bool = True  # False: ray.wait_for_nodes (pipelines.run.fit)


class StopTrial(Exception):
    """Raised by the reporter to end a trial whose accuracy cannot reach the bound."""


def trial_pipeline(plan: SearchPlan, values: dict[str, Any]) -> dict:
    """The trial's pipeline mapping: prefix (only loaded, so at most ``trial_cpus`` each; the
    trial's steps run inside its placement group), chain with the values set, measure."""
    steps = plan.values_params(values)
    out: dict[str, dict] = {}
    for n in plan.prefix:
        res = dict(steps[n].get("resources") or {})
        res["num_cpus"] = min(float(res.get("num_cpus", 1.0)), plan.cfg.trial_cpus)
        out[n] = {**steps[n], "resources": res}
    for n in plan.chain:
        out[n] = steps[n]
    out[MEASURE] = {
        "task": "benchmark",
        "inputs": {"models": [plan.cfg.deployed], "data": plan.data_step},
        "params": dict(plan.cfg.measure or {}),
    }
    return {"name": plan.name, "steps": out}


def run_spec(
    client: MlflowClient,
    ctx: Context,
    spec: PipelineSpec,
    use_cache: bool,
    listeners: list,
    node_id: str,
    check_fit: bool = True,
    owns_ray: bool = False,
    before_cancel: Callable[[], None] = lambda: None,
) -> dict[str, StepState]:
    """Execute ``spec`` under ``ctx.root_run`` with the engine's cache, executor and recorder
    (``owns_ray``/``check_fit``/``before_cancel``: ``pipelines.run.lifecycle.Lifecycle.configure``)."""
    from pipelines.run.session import lookup_cache, make_executor, plan_keys

    keyed = plan_keys(spec, ctx.seed)  # measuring steps keyed on (and pinned to) the nodes they run on
    hits = lookup_cache(client, ctx.experiment_id, spec, keyed.keys, use_cache)
    ex, _ = make_executor(client, ctx, spec, keyed.keys, hits, node_id, listeners, keyed=keyed)
    ex.check_fit, ex.owns_ray, ex.before_cancel = check_fit, owns_ray, before_cancel
    try:
        return ex.run()
    except StopTrial:
        ex.cancel()
        raise


def measured(plan: SearchPlan, summary: dict[str, float]) -> dict[str, float]:
    """The deployed model's row in the measure step's summary, by objective name, and
    ``rejected`` (1.0 when its parity gate failed)."""
    row = {k: summary.get(f"{plan.cfg.deployed}/{v}") for k, v in [*MEASURES.items(), ("rejected", "rejected")]}
    return {k: float(v) for k, v in row.items() if v is not None}


def outcome(plan: SearchPlan, summary: dict[str, float], bound: float) -> dict[str, float]:
    """The trial's final figures: ``measured`` plus ``feasible`` (1.0 when the deployed model's
    val_acc >= ``bound`` and its parity gate passed: a rejected model is never deployed)."""
    final = measured(plan, summary)
    final["feasible"] = float(final.get("val_acc", -1.0) >= bound and not final.get("rejected"))
    return final


class Reporter:
    """Executor listener: curves onto the trial run, intermediate accuracy to Tune."""

    def __init__(self, job: TrialJob, client: MlflowClient, run_id: str):
        self.job, self.client, self.run_id = job, client, run_id
        self.last_acc: float | None = None

    def on_event(self, event: str, st: StepState, trial: Trial | None) -> None:
        name = st.spec.name
        if event != "step_finished" or name not in self.job.plan.chain or st.selected is None:
            return
        self._copy_curves(name, st.trials[st.selected])
        acc = st.summary.get("val_acc")
        if acc is None:
            return
        from ray import tune

        self.last_acc = float(acc)
        tune.report({"val_acc": float(acc), "stage": name})
        cfg = self.job.plan.cfg
        if cfg.early_stop == EarlyStop.feasibility and acc < self.job.bound - cfg.slack:
            raise StopTrial(f"{name}.val_acc {acc:.4f} < bound {self.job.bound:.4f} - slack {cfg.slack}")

    def _copy_curves(self, step: str, t: Trial) -> None:
        """Per-epoch metrics of a step (from the run that computed it) as ``<step>.<metric>``."""
        if t.meta is None:
            return
        source = t.hit.info.run_id if t.hit is not None else t.meta.run_id  # a hit: the computing run
        src = t.hit if t.hit is not None else self.client.get_run(source)
        metrics = []
        for key in src.data.metrics:
            if "epoch" in key or "loss" in key:
                hist = self.client.get_metric_history(source, key)
                metrics += [Metric(f"{step}.{key}", m.value, m.timestamp, m.step) for m in hist]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])


def open_trial_run(job: TrialJob, client: MlflowClient, trial_id: str, values: dict[str, Any]) -> str:
    tags = {
        "slimray.root": job.search_run,
        "slimray.step": "search",
        "slimray.search_trial": trial_id,
        "slimray.trial": label(values),
        "mlflow.source.git.commit": job.commit,
    }
    run_id = create_run(client, job.experiment_id, f"trial-{trial_id.split('_')[-1]}", job.search_run, tags)
    log_params(client, run_id, values)
    return run_id


def recorded_final(job: TrialJob, client: MlflowClient, trial_id: str) -> dict[str, Any] | None:
    """The final report of this trial if a previous driver ran it to the end (its trial run is
    FINISHED) but was killed before Tune's experiment snapshot recorded that: not rerun."""
    runs = client.search_runs(
        [job.experiment_id],
        filter_string=(
            f"tags.`slimray.search_trial` = '{trial_id}' and tags.`slimray.root` = '{job.search_run}' "
            "and attributes.status = 'FINISHED'"
        ),
        max_results=1,
    )
    if not runs or "feasible" not in runs[0].data.metrics:
        return None
    return {**runs[0].data.metrics, "run_id": runs[0].info.run_id, "stage": "final"}


def run_trial(config: dict[str, Any], job: TrialJob) -> None:
    """The Tune trainable (``tune.with_parameters(run_trial, job=...)``)."""
    import ray
    from ray import tune

    from pipelines.run.lifecycle import close_open_runs

    client = MlflowClient(tracking_uri=job.uri)
    values = decode(job.plan, config)
    trial_id = tune.get_context().get_trial_id()
    done = recorded_final(job, client, trial_id)
    if done is not None:
        tune.report(done)
        return
    run_id = open_trial_run(job, client, trial_id, values)
    spec = build_spec(trial_pipeline(job.plan, values), job.trusted)
    ctx = Context(job.uri, job.experiment_id, run_id, job.seed, job.commit)
    node = ray.get_runtime_context().get_node_id()
    status, final = "FAILED", {"stopped": 0.0}
    reporter = Reporter(job, client, run_id)
    try:
        states = run_spec(client, ctx, spec, job.use_cache, [reporter], node, job.check_fit)
        bad = [n for n, st in states.items() if st.status in ("failed", "skipped")]
        if bad:
            raise RuntimeError(f"trial step {bad[0]} {states[bad[0]].status}: {states[bad[0]].note}")
        final.update(outcome(job.plan, states[MEASURE].summary, job.bound))
        status = "FINISHED"
    except StopTrial as e:
        final.update(stopped=1.0, feasible=0.0, val_acc=reporter.last_acc or 0.0)
        client.set_tag(run_id, "slimray.note", f"stopped early: {e}")
        status = "FINISHED"
    finally:
        numbers = [Metric(k, float(v), 0, 0) for k, v in final.items() if isinstance(v, float)]
        client.log_batch(run_id, metrics=numbers)
        close_open_runs(client, job.experiment_id, run_id, status)
    tune.report({**final, "run_id": run_id, "stage": "final"})
