"""Ray Tune around the trials: searcher, scheduler, storage and resume, result rows.

Optuna's samplers take the accuracy constraint natively (``Trial.set_constraint``: c-TPE and
NSGA-II's constrained domination); Ray's ``OptunaSearch`` does not pass one through, so
``ConstrainedOptunaSearch`` sets each trial's violation (``bound - val_acc``; <= 0 is feasible)
before telling the study, and reports a trial that stopped early (no objectives) as PRUNED.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from pipelines.run.interrupt import INTERRUPT
from pipelines.search.config import Algorithm, EarlyStop, SearchPlan
from pipelines.search.pareto import Row
from pipelines.search.space import decode, tune_space
from pipelines.search.storage import check_restorable
from pipelines.search.trial import TrialJob, run_trial


class ConstrainedOptunaSearch(OptunaSearch):
    def __init__(self, *args, bound: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.bound = bound

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate results carry accuracy only; early stopping is the trial's and Tune's."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        acc = (result or {}).get("val_acc")
        self._ot_trials[trial_id].set_constraint("val_acc", self.bound - acc if acc is not None else 1.0)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if result and any(result.get(m) is None for m in metrics):
            result = None  # stopped early: no objectives -> PRUNED
        super().on_trial_complete(trial_id, result, error)


class Lines(tune.Callback):
    """One stderr line per finished trial (Tune pickles its callbacks: no console object here)."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        m = trial.last_result or {}
        shown = {k: m[k] for k in ("val_acc", "throughput", "size_bytes", "feasible") if k in m}
        word = "stopped" if m.get("stopped") else "finished"
        print(f"search: {trial.trial_id} {word} {shown}", file=sys.stderr, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"search: {trial.trial_id} failed", file=sys.stderr, flush=True)


class Interruptible(tune.Callback):
    """Ctrl-C inside ``Tuner.fit``: Tune's loop turns every 0.1 s; at the start of a turn the
    recorded Ctrl-C (``pipelines.run.interrupt``) is raised as ``KeyboardInterrupt``, which
    leaves the loop (Tune catches ``Exception`` only) for the lifecycle's clean-up."""

    def on_step_begin(self, iteration, trials, **info):
        INTERRUPT.check()


def callbacks() -> list[tune.Callback]:
    return [Lines(), Interruptible()]


def searcher(plan: SearchPlan, bound: float, seed: int):
    cfg = plan.cfg
    if cfg.algorithm == Algorithm.random:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=cfg.max_concurrent)
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.algorithm == Algorithm.tpe:
        sampler: Any = optuna.samplers.TPESampler(n_startup_trials=cfg.startup_trials, seed=seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(population_size=max(2, cfg.startup_trials), seed=seed)
    names = list(cfg.objectives)
    modes = [str(m) for m in cfg.objectives.values()]
    s = ConstrainedOptunaSearch(
        metric=names if len(names) > 1 else names[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=sampler,
        bound=bound,
    )
    return ConcurrencyLimiter(s, max_concurrent=cfg.max_concurrent)


def search_key(plan: SearchPlan, seed: int) -> str:
    """Identity of a search: its config, the steps it runs and the seed (same key: resume)."""
    blob = {"search": asdict(plan.cfg), "steps": {n: plan.steps[n] for n in plan.prefix + plan.chain}, "seed": seed}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def storage_name(key: str) -> str:
    return f"search-{key[:16]}"


def storage_root(plan: SearchPlan) -> Path:
    root = plan.cfg.storage or os.path.join(os.environ.get("SLIMRAY_CACHE_DIR", "~/.cache/slimray"), "tune")
    return Path(root).expanduser().resolve()


def trial_fn(job: TrialJob, key: str):
    """The trainable of one search: ``run_trial`` bound to its job. Not ``tune.with_parameters``:
    that stores the job under ``str(run_trial)``, the same name for every search in a process,
    so a second search in the same process would run with the first one's job. The name is the
    search key's: a restored Tuner finds its trials' trainable under the name they were saved with."""

    def trial(config: dict[str, Any]) -> None:
        run_trial(config, job)

    trial.__name__ = trial.__qualname__ = f"search_{key[:16]}"
    return trial


def make_tuner(plan: SearchPlan, job: TrialJob, key: str, seed: int, callbacks: list) -> tuple[tune.Tuner, bool]:
    """A new Tuner, or the one restored from the search's storage (finished trials are kept,
    unfinished and errored ones run again); returns (tuner, resumed)."""
    cfg = plan.cfg
    # intermediate reports carry val_acc only (the objectives come with the final report)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # snapshot the experiment state every second (Tune's default: >= 10 s), so a driver killed
    # right after a trial finished rarely loses it; a trial that did finish is not rerun anyway
    # (pipelines.search.trial.recorded_final)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Ctrl-C: Tune would stop the trials and return a partial result as if the search had ended;
    # slimray's handler keeps SIGINT and ``Interruptible`` raises it in Tune's loop instead (the
    # CLI exits 130; a rerun resumes)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    trainable = tune.with_resources(trial_fn(job, key), tune.PlacementGroupFactory([{}, {"CPU": cfg.trial_cpus}]))
    root, name = storage_root(plan), storage_name(key)
    check_restorable(root, name)  # Tune's state is unpickled: only from a tree nobody else can write
    if tune.Tuner.can_restore(str(root / name)):
        try:
            return tune.Tuner.restore(str(root / name), trainable, resume_unfinished=True, resume_errored=True), True
        except Exception as e:  # noqa: BLE001 - a state file cut off while being written: start over
            broken = root / f"{name}.broken-{int(time.time())}"
            (root / name).rename(broken)
            print(f"search: cannot restore {root / name} ({type(e).__name__}); moved to {broken}", file=sys.stderr)
    scheduler = None
    if cfg.early_stop == EarlyStop.asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            metric="val_acc", mode="max", time_attr="training_iteration", max_t=len(plan.chain) + 1, grace_period=1
        )
    tune_config = tune.TuneConfig(
        search_alg=searcher(plan, job.bound, seed),
        scheduler=scheduler,
        num_samples=cfg.num_samples,
        time_budget_s=cfg.time_budget_s,
        max_concurrent_trials=cfg.max_concurrent if cfg.algorithm == Algorithm.random else None,
        trial_name_creator=lambda t: f"trial-{t.trial_id}",
        trial_dirname_creator=lambda t: f"trial-{t.trial_id}",
    )
    run_config = tune.RunConfig(
        name=name, storage_path=str(root), verbose=0, callbacks=callbacks, failure_config=tune.FailureConfig(0)
    )
    return tune.Tuner(trainable, param_space=tune_space(plan), tune_config=tune_config, run_config=run_config), False


def rows(plan: SearchPlan, results) -> list[Row]:
    """One row per trial of a ResultGrid (restored trials included)."""
    out = []
    for r in results:
        m = dict(r.metrics or {})
        values = decode(plan, {k: r.config[k] for k in plan.dims}) if r.config else {}
        status = "failed" if r.error else "stopped" if m.get("stopped") or m.get("stage") != "final" else "finished"
        nums = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.append(Row(str(m.get("trial_id", "")), values, nums, status, str(m.get("run_id", ""))))
    return out
