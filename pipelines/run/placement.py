"""Where a measuring step runs, and so which hardware its cache key holds.

A step whose task measures (``MEASURES = True``: benchmark, prune, quantize) is keyed on the
hardware fingerprint (``tasks.runtime.hardware``) of the node that will run it, not on the
driver's, which may be another machine (a laptop joined to a cluster, a head node of another
type):

- a local run (Ray not started yet, ``ray.address`` null): the driver is the node, its own
  fingerprint; no task. A Ray that runs on the driver's node alone (a test's embedded Ray) is
  the same.
- otherwise Ray is joined and one tiny task per alive node (0 CPUs, pinned there with a hard
  ``NodeAffinitySchedulingStrategy``) reports that node's fingerprint, once per node and driver
  process; only when some step measures.
- per measuring step: the nodes that can hold its resources (``pipelines.run.fit``) are grouped
  by fingerprint; the group with the most nodes (ties: the first fingerprint as sorted JSON) is
  where it runs. Its key holds that fingerprint, and when the cluster's nodes differ its trials
  are pinned round-robin to that group's nodes (soft affinity: a retry after the node died goes
  elsewhere, where the worker's own check fails it if the hardware differs). Pin a step to a node
  type yourself with a custom resource: then only those nodes fit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.config.spec import PipelineSpec, StepSpec
from pipelines.run.fit import unfit
from pipelines.store.keys import measures

FINGERPRINT_TIMEOUT_S = 120.0  # a fresh worker imports torch and onnxruntime first
_KNOWN: dict[str, dict] = {}  # node id -> its fingerprint, learned once per driver process


@dataclass(frozen=True)
class Node:
    id: str
    resources: dict[str, float]
    fingerprint: dict


@dataclass
class Placement:
    """The fingerprint each measuring step is keyed on, and the nodes its trials are pinned to."""

    hardware: dict[str, dict] = field(default_factory=dict)  # measuring step -> fingerprint
    pins: dict[str, list[str]] = field(default_factory=dict)  # step -> node ids (none: nodes alike)

    def of(self, step: StepSpec) -> dict:
        return self.hardware[step.name]


def _report() -> tuple[str, dict]:
    """(this node's id, its fingerprint): the tiny task run once on every node."""
    import ray

    from tasks.runtime.hardware import fingerprint

    return ray.get_runtime_context().get_node_id(), fingerprint()


def node_fingerprints(node_ids: list[str]) -> dict[str, dict]:
    """The fingerprint of every node in ``node_ids`` (one 0-CPU task pinned to each unknown one)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    todo = [n for n in node_ids if n not in _KNOWN]
    if todo:
        remote = ray.remote(_report)
        refs = [
            remote.options(
                num_cpus=0,
                max_retries=0,
                name="slimray:fingerprint",
                scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False),
            ).remote()
            for n in todo
        ]
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=FINGERPRINT_TIMEOUT_S)
        if late:
            node = todo[refs.index(late[0])]
            raise RuntimeError(
                f"Ray node {node} did not report its hardware fingerprint within {FINGERPRINT_TIMEOUT_S:g} s "
                "(a measuring step is keyed on the hardware of the node that runs it)"
            )
        for node_id, fp in ray.get(ready):
            _KNOWN[node_id] = fp
    return {n: _KNOWN[n] for n in node_ids}


def cluster_nodes() -> list[Node] | None:
    """The alive nodes of the joined Ray with their fingerprints; None when the driver's node is
    the only one (the driver is the node: its own fingerprint is the node's)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id():
        return None
    fps = node_fingerprints([n["NodeID"] for n in alive])
    return [Node(n["NodeID"], dict(n["Resources"]), fps[n["NodeID"]]) for n in alive]


def _canon(fp: dict) -> str:
    return json.dumps(fp, sort_keys=True)


def plan(steps: list[StepSpec], nodes: list[Node]) -> Placement:
    """Each measuring step's fingerprint and pins on ``nodes`` (see the module docstring)."""
    out = Placement()
    alike = len({_canon(n.fingerprint) for n in nodes}) == 1
    for s in steps:
        fitting = [n for n in nodes if not unfit(s.name, s.resources, [n.resources])] or nodes
        groups: dict[str, list[Node]] = {}
        for n in sorted(fitting, key=lambda n: n.id):
            groups.setdefault(_canon(n.fingerprint), []).append(n)
        chosen = min(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[1]
        out.hardware[s.name] = chosen[0].fingerprint
        if not alike:
            out.pins[s.name] = [n.id for n in chosen]
    return out


def ray_connected() -> bool:
    """Whether this process is connected to a Ray (without importing Ray when it is not)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def place(spec: PipelineSpec, join: Callable[[], None] | None = None) -> Placement:
    """The placement of ``spec``'s measuring steps: on the driver's hardware for a local run, else
    on the nodes of the Ray this process is connected to, or joins with ``join`` (only when some
    step measures: a pipeline without one never asks)."""
    from tasks.runtime.hardware import fingerprint

    steps = [s for s in spec.steps.values() if measures(s.task)]
    nodes = None
    if steps and (join is not None or ray_connected()):
        if join is not None:
            join()
        nodes = cluster_nodes()
    if nodes is None:
        return Placement({s.name: fingerprint() for s in steps})
    return plan(steps, nodes)
