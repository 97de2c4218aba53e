"""The executor's state and its event vocabulary: trials, steps, the execution's context.

Plain dataclasses shared by the executor (``pipelines.run.dag``) and its listeners (the MLflow
recorder, the console, the multirun's listeners), so a listener never imports the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from mlflow.entities import Run

from pipelines.config.spec import StepSpec
from pipelines.run.worker import StepMeta

EVENTS = (
    "step_started",
    "trial_cached",
    "trial_submitted",
    "trial_shared",
    "trial_finished",
    "trial_failed",
    "step_finished",
)


@dataclass
class Trial:
    key: str
    label: str
    params: dict
    hit: Run | None = None  # the cached MLflow run, if any
    status: str = "pending"  # pending | running | cached | done | failed
    output: Any = None  # ObjectRef of the output (None when not loaded)
    meta: StepMeta | None = None
    error: str = ""
    shared: bool = False  # computed by another execution of the multirun (same cache key)


@dataclass
class StepState:
    spec: StepSpec
    trials: list[Trial]
    status: str = "pending"  # pending | running | cached | done | failed | skipped
    run_id: str | None = None  # the step run of a sweep (trials are its children), set by the recorder
    started: float = 0.0
    ended: float = 0.0
    nodes: set = field(default_factory=set)
    selected: int | None = None
    note: str = ""

    @property
    def summary(self) -> dict:
        t = self.trials[self.selected] if self.selected is not None else None
        return dict(t.meta.summary) if t and t.meta else {}


@dataclass
class Context:
    uri: str
    experiment_id: str
    root_run: str
    seed: int
    commit: str


class Listener(Protocol):
    def on_event(self, event: str, st: StepState, trial: Trial | None) -> None: ...


def cached_meta(hit: Run, run_id: str, node_id: str) -> StepMeta:
    return StepMeta(
        run_id, node_id, 0.0, dict(hit.data.metrics), True, hit.data.tags.get("slimray.publishes") == "true"
    )
