"""Batch inference on Ray Data (pipelines/scale/batch.py) on a local 3-node Ray cluster: every row
comes back exactly once, in order, when a stage actor is SIGKILLed mid-run and when a whole worker
node is removed mid-run while its actors hold blocks.

The stage is a slow identity (40 ms a block) whose actors, after their first 2 blocks, wait at a
gate (a file the test creates): the faults land on actors that have done work and hold a block,
and the restarted actors come up before the run can end, however loaded the machine is. The tests
share one cluster (head + 2 workers; a removed worker is replaced before the next test), stopped in
the fixture's teardown, also when a test fails.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.scale import batch

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

GiB = 1024**3
ROWS, BLOCK, REPLICAS = 4000, 50, 4  # 80 blocks
HOLD_AFTER = 2  # an actor's blocks after its first 2 wait at the gate
NODE = dict(num_cpus=1, memory=2 * GiB, object_store_memory=200 * 1024**2)
WAIT_S = 120.0  # actor start-up takes seconds, much longer on a loaded machine


@pytest.fixture(scope="module")
def cluster():
    """Head (the driver's node) + worker nodes, 1 CPU each (2 actors of half a CPU), the driver connected."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # the session's embedded Ray (ray_local re-inits it when needed)
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def workers(cluster):
    """The cluster with 2 live worker nodes (a test before may have removed one): node id -> node."""
    while len(cluster.worker_nodes) < 2:
        cluster.add_node(**NODE)
    cluster.wait_for_nodes(timeout=60)
    return {w.node_id: w for w in cluster.worker_nodes}


class Marks:
    """The files the stage actors leave in ``root``: ``built/<pid>`` (holding its node id) when an
    actor builds its function, ``held/<pid>`` when it waits at the gate with a block; ``release``
    opens the gate."""

    def __init__(self, root: Path):
        self.root = root
        for d in ("built", "held"):
            (root / d).mkdir()

    def built(self) -> dict[int, str]:
        return {int(p.name): p.read_text() for p in (self.root / "built").iterdir() if not p.name.startswith(".")}

    def held(self) -> set[int]:
        return {int(p.name) for p in (self.root / "held").iterdir()}

    def wait(self, what: str, ready: Callable[[], object]) -> None:
        """Poll until ``ready()`` is true; fail naming ``what`` after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {WAIT_S:.0f} s (built {self.built()}, held {self.held()})")
            time.sleep(0.2)

    def release(self) -> None:
        (self.root / "release").touch()


def _start_run(root: Path) -> tuple[threading.Thread, dict]:
    """``batch.run`` of the gated slow identity stage over ``np.arange(ROWS)`` in a thread."""

    class GatedIdentity:
        """40 ms a block; defined here so cloudpickle ships it to the workers by value."""

        def __init__(self, root):
            self.root = root

        def __call__(self):
            import ray

            pid = str(os.getpid())
            tmp = self.root / "built" / f".{pid}"
            tmp.write_text(ray.get_runtime_context().get_node_id())
            tmp.rename(self.root / "built" / pid)

            done = [0]  # blocks this actor finished

            def apply(xb):
                time.sleep(0.04)
                if done[0] >= HOLD_AFTER:
                    (self.root / "held" / pid).touch()
                    while not (self.root / "release").exists():
                        time.sleep(0.05)
                done[0] += 1
                return xb.clone()

            return apply

    x = torch.arange(ROWS, dtype=torch.float32).reshape(-1, 1)
    result: dict = {}

    def work():
        try:
            result["r"] = batch.run([GatedIdentity(root)], x, batch_size=BLOCK, replicas=REPLICAS, num_cpus=0.5)
        except BaseException as e:  # reported by the test, not lost in the thread
            result["error"] = e

    runner = threading.Thread(target=work, daemon=True)
    runner.start()
    return runner, result


def _tally_node() -> str:
    """The node of the running ``Tally`` actor (pipelines/scale/tally.py)."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("class_name", "=", "Tally"), ("state", "=", "ALIVE")])
    assert len(alive) == 1, alive
    return str(alive[0].node_id)


def _finished(runner: threading.Thread, result: dict) -> batch.BatchResult:
    runner.join(timeout=WAIT_S)
    assert not runner.is_alive(), "batch.run did not finish"
    assert "error" not in result, result.get("error")
    r = result["r"]
    assert np.array_equal(r.out[:, 0], np.arange(ROWS))  # every row once, in input order
    assert r.summary["duplicates_dropped"] == 0 and r.summary["rows"] == ROWS
    assert r.summary["restarts"] >= 1
    return r


def test_a_killed_actor_on_a_worker_node_loses_no_row(cluster, workers, tmp_path):
    marks = Marks(tmp_path)
    runner, result = _start_run(tmp_path)
    try:
        marks.wait("every actor holding a block at the gate", lambda: len(marks.held()) >= REPLICAS)
        first = marks.built()
        assert len(set(first.values())) >= 2, first  # actors spread over the nodes
        victim = min(pid for pid, node in first.items() if node in workers)
        os.kill(victim, signal.SIGKILL)
        marks.wait("the killed actor restarted", lambda: len(marks.built()) > len(first))
        marks.wait("the restarted actor holding a block", lambda: marks.held() - set(first))
    finally:
        marks.release()
    r = _finished(runner, result)
    ran = {p["pid"]: p["node"] for p in r.placement}
    assert victim in ran  # it worked before it was killed
    assert ran.keys() - first.keys()  # its successor worked after
    assert len(set(ran.values())) >= 2


def test_a_removed_worker_node_loses_no_row(cluster, workers, tmp_path):
    marks = Marks(tmp_path)
    runner, result = _start_run(tmp_path)
    try:
        marks.wait("every actor holding a block at the gate", lambda: len(marks.held()) >= REPLICAS)
        first = marks.built()
        # not the node of the run's Tally actor: batch.run cannot finish without its records
        tally = _tally_node()
        on_workers = [node for node in first.values() if node in workers and node != tally]
        assert on_workers, f"no actor on a worker node without the Tally: {first}"
        gone = max(set(on_workers), key=on_workers.count)  # the worker node with the most actors
        cluster.remove_node(workers[gone])
        lost = {pid for pid, node in first.items() if node == gone}
        marks.wait("the lost actors restarted on the nodes left", lambda: len(marks.built()) >= len(first) + len(lost))
        assert gone not in {node for pid, node in marks.built().items() if pid not in first}
        marks.wait("a restarted actor holding a block", lambda: marks.held() - set(first))
    finally:
        marks.release()
    r = _finished(runner, result)
    ran = {p["pid"]: p["node"] for p in r.placement}
    assert gone in ran.values() and lost <= ran.keys()  # its actors worked before it went
    assert r.summary["restarts"] >= len(lost)
