"""Data-parallel inference on a Ray Data actor pool gives the in-process result, in order."""
from __future__ import annotations

import functools

import pytest
import torch

from pipelines.parallel import map_batches
from tasks.infer import TeacherBatchFn
from tasks.models import CNN1D, make_artifact


@pytest.mark.slow
def test_actor_pool_matches_local_and_keeps_order(ray_local):
    x = torch.randn(3000, 40)
    # make_fn() -> torch.mul(_, other=3.0): built from importable parts, as workers must unpickle it
    make_fn = functools.partial(functools.partial, torch.mul, other=3.0)
    out = map_batches(make_fn, x, batch_size=256, workers=2, gpus_per_worker=0.0)
    assert torch.equal(out, x * 3.0)

    torch.manual_seed(0)
    arch = {"_target_": "tasks.models.CNN1D", "input_shape": [40], "num_classes": 10, "channels": [8, 8]}
    art = make_artifact(CNN1D([40], 10, [8, 8]).eval(), arch, name="t", kind="teacher")
    fn = TeacherBatchFn(art, [])
    remote = map_batches(fn, x, batch_size=512, workers=2, gpus_per_worker=0.0)
    local = fn()(x)
    assert torch.allclose(remote, local, atol=1e-6)
