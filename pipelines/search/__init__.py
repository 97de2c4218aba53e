"""``slimray`` search: Ray Tune + Optuna over a pipeline's steps jointly (``pipeline.search``).

- ``config``: the ``search`` section's schema, validation at compose time, the plan
  (prefix / chain / final steps);
- ``space``: the space as Tune distributions, and as a grid of Hydra multirun overrides;
- ``trial``: one trial = the chain with the trial's values through the engine's executor and
  cache, as a nested MLflow run;
- ``tuner``: searcher (constraint-aware Optuna TPE / NSGA-II, or random), scheduler, storage
  and resume; ``pareto``: Pareto set, best feasible trial, hypervolume, plot and table;
- ``driver``: the execution (prefix once, the search, the final steps on the best trial).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from pipelines.search.config import SearchPlan, plan


def plan_of(cfg: DictConfig) -> SearchPlan | None:
    """The checked search plan of a composed config (None when it has no enabled search);
    raises ``SpecError`` naming the key."""
    pipeline = OmegaConf.to_container(cfg.pipeline, resolve=True)
    assert isinstance(pipeline, dict)
    return plan(pipeline)
