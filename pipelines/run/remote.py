"""How one trial goes to Ray: the remote step function (defined once, on first use, so that a
fully cached run never imports or starts Ray), the Ray options of a trial's task (its step's
resources and retries, and for a measuring step the node its key's hardware was read on), and
the one line that stands for a failed task's error.
"""

from __future__ import annotations

from pipelines.config.spec import StepSpec

_remote = None


def execute_remote():
    """The remote step function (``pipelines.run.worker.execute``), defined once: Ray exports a
    remote function to the cluster once."""
    global _remote
    if _remote is None:
        import ray

        from pipelines.run.worker import execute

        _remote = ray.remote(execute)
    return _remote


def task_options(s: StepSpec, run_name: str, nodes: list[str] | None, i: int) -> dict:
    """The Ray options of trial ``i`` of step ``s``: two returns (output, ``StepMeta``), the
    step's resources and retries, a task name, and its pin when ``nodes`` is given."""
    r = s.resources
    return dict(
        num_returns=2,
        num_cpus=r.num_cpus,
        num_gpus=r.num_gpus,
        memory=r.memory,
        resources=r.custom or None,
        max_retries=s.retries,
        retry_exceptions=s.retries > 0,
        name=f"slimray:{run_name}",
        **pinned(nodes, i),
    )


def pinned(nodes: list[str] | None, i: int) -> dict:
    """Ray options pinning trial ``i`` of a measuring step to a node of the hardware its key
    holds (round-robin over ``nodes``, that node type); soft, so a retry after the node died goes
    elsewhere, where the worker's check fails it if that node's hardware differs."""
    if not nodes:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True)}


def first_line(e: BaseException) -> str:
    """The first line of a task's error (its cause, when Ray wrapped it), at most 300 characters."""
    cause = getattr(e, "cause", None) or e
    text = f"{type(cause).__name__}: {cause}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
