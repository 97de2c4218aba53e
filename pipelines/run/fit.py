"""Does a step's resource request fit on some node of the Ray cluster?

Ray queues a task that no node can hold and waits for an autoscaler to add one: on a fixed
cluster (a laptop, ``cluster/up.sh``, a static KubeRay group) that is a silent hang, the
autoscaler's "No available node types can fulfill resource request" repeated every 35 s. The
executor asks ``unfit`` before submitting, and fails the step at once with one line naming the
key, the request and the nodes. ``ray.wait_for_nodes: true`` turns the check off for an
autoscaling cluster whose larger nodes are only started on demand.
"""

from __future__ import annotations

from pipelines.config.schema import ResourcesConfig


def request(res: ResourcesConfig) -> dict[str, float]:
    """The Ray resource request of a step: CPU, GPU, memory (bytes) and custom resources, zeros left out."""
    req = {"CPU": res.num_cpus, "GPU": res.num_gpus, "memory": float(res.memory or 0), **res.custom}
    return {k: float(v) for k, v in req.items() if v}


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _show(resources: dict[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU", "memory") if k in resources] + sorted(
        k for k in resources if k not in ("CPU", "GPU", "memory") and not k.startswith("node:")
    )
    return "{" + ", ".join(f"{k}: {resources[k]:g}" for k in keys) + "}"


def unfit(step: str, res: ResourcesConfig, nodes: list[dict[str, float]]) -> str:
    """'' when some node holds all of the step's request, else the one-line reason."""
    req = request(res)
    if any(all(node.get(k, 0.0) >= v for k, v in req.items()) for node in nodes):
        return ""
    shown = sorted({_show({k: n.get(k, 0.0) for k in req}) for n in nodes})
    return (
        f"pipeline.steps.{step}.resources: {_show(req)} fits on no node of this Ray cluster "
        f"(its {len(nodes)} node(s): {', '.join(shown) or 'none'}); lower the request or add a node "
        "(ray.wait_for_nodes=true waits for an autoscaler instead)"
    )
