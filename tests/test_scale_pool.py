"""Pipeline-parallel inference on the actor-chain pool (pipelines/scale/pool.py), the engine's
choice for ``K >= 2`` stages of an in-memory input: a SIGKILLed stage actor loses no row and
duplicates none, the in-flight window keeps memory flat, and the engine routes by stage count."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from pipelines.scale.batch import map_batches
from pipelines.scale.pool import ChainPool


@pytest.mark.slow
def test_a_killed_stage_actor_loses_no_row_and_duplicates_none(ray_local):
    class SlowIdentity:  # defined here: cloudpickle ships it to the actors by value
        def __call__(self):
            def apply(xb):
                time.sleep(0.02)
                return xb.clone()

            return apply

    x = torch.arange(3000, dtype=torch.float32).reshape(-1, 1)
    pool = ChainPool([SlowIdentity(), SlowIdentity()], replicas=1, num_cpus=0.5, window=3)
    try:
        victim = pool.pids()[0][1]  # the second stage of the only chain
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(zip(("out", "stats"), pool.map(x.numpy(), 50))))
        worker.start()
        time.sleep(0.6)  # some of the 60 batches are done: the victim holds batches in flight
        os.kill(victim, signal.SIGKILL)
        worker.join(timeout=90)
        assert not worker.is_alive()
        assert victim not in [p for chain in pool.pids() for p in chain]  # the chain was replaced
    finally:
        pool.shutdown()
    out, stats = result["out"], result["stats"]
    assert np.array_equal(out[:, 0], np.arange(3000))  # every row once, in order
    assert stats.restarts == 1 and stats.resubmitted >= 1 and stats.duplicates_dropped == 0


def test_in_flight_window_bounds_memory_for_10x_the_rows(ray_local):
    make = functools.partial(functools.partial, torch.mul, other=2.0)
    pool = ChainPool([make, make], replicas=1, num_cpus=0.5, window=2)
    try:
        small = torch.randn(1_000, 256).numpy()
        out1, s1 = pool.map(small, 100)
        out10, s10 = pool.map(np.concatenate([small] * 10), 100)
    finally:
        pool.shutdown()
    assert np.array_equal(out10[-1000:], out1) and np.allclose(out1, small * 4)
    assert s10.peak_in_flight <= 2 and s10.peak_in_flight_bytes == s1.peak_in_flight_bytes  # flat


@pytest.mark.slow
def test_the_engine_sends_stages_to_the_pool_and_one_stage_to_ray_data(ray_local):
    make = functools.partial(functools.partial, torch.add, other=1.0)
    x = torch.randn(400, 8)
    piped, s2 = map_batches([make, make], x, batch_size=50, replicas=1, num_cpus=0.5, min_replicas=0)
    single, s1 = map_batches([make], x, batch_size=50, replicas=2, num_cpus=0.5)
    assert torch.allclose(piped, x + 2) and torch.allclose(single, x + 1)
    assert "peak_in_flight" in s2 and "peak_in_flight" not in s1  # the pool's figures vs Ray Data's
    assert s2["actors_started"] == 2 and s2["restarts"] == 0 and s1["util_replica1_stage0"] >= 0
