"""Which model the report registers: the benchmark's selected model, whichever step produced it.

The benchmark may select another model than the one the report is wired to (``selected``): the
wired one failed its parity gate (INT8 rejected on a CPU without VNNI), or the benchmark chose
among its candidates. The report then finds the selected model among all the models it was given
(``selected`` and ``candidates``) and says which step produced it; a pipeline that selected
nothing says so in one line and tags its run, so ``slimray serve`` can name that run.
"""

from __future__ import annotations

from tasks.core.types import BenchmarkReport, ModelArtifact
from tasks.runtime.openvino import candidate_of

REGISTRY_TAG = "slimray.registry_name"  # the parent run's registered model name (set even when none)
NOT_REGISTERED_TAG = "slimray.not_registered"  # why nothing was registered (one line)


def step_of(name: str) -> str:
    """The pipeline step a model name comes from: ``prune[amount=0.5]`` -> ``prune``."""
    return name.split("[", 1)[0]


def pick(
    bench: BenchmarkReport, selected: ModelArtifact | None, candidates: list[ModelArtifact]
) -> tuple[ModelArtifact | None, str]:
    """The artifact of the benchmark's selected model (never a rejected one) and one line saying
    what was registered or why nothing was."""
    name = bench.targets.selected
    if name is None:
        return None, "the benchmark selected no model (every candidate rejected or none deployable): nothing registered"
    name = candidate_of(name)  # a row of another runtime: <candidate>@openvino
    pool = ([selected] if selected is not None else []) + list(candidates)
    found = next((m for m in pool if m.name == name), None)
    if found is None:
        given = sorted({m.name for m in pool})
        return None, f"the selected model '{name}' is not among the report's inputs {given}: nothing registered"
    if selected is not None and found is not selected:
        return found, f"registered '{name}' (step '{step_of(name)}'), the benchmark's pick, not '{selected.name}'"
    return found, f"registered '{name}' (step '{step_of(name)}')"
