"""Data-parallel batch inference on a Ray Data actor pool (used through ``ctx.map_batches``).

Each actor builds its function once (``make_fn()``, e.g. loads the model) in ``__init__`` and
applies it in ``__call__``: Ray's pattern for stateful batch inference. Row order is kept
(``preserve_order``) so outputs line up with inputs.
"""
from __future__ import annotations

import numpy as np
import ray
import torch


class _Apply:
    def __init__(self, make_fn):
        self.fn = make_fn()

    def __call__(self, batch: dict) -> dict:
        out = self.fn(torch.from_numpy(np.ascontiguousarray(batch["data"])))
        return {"y": out.detach().cpu().numpy()}


def map_batches(make_fn, x: torch.Tensor, *, batch_size: int, workers: int, gpus_per_worker: float) -> torch.Tensor:
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.from_numpy(x.numpy()).repartition(max(workers * 2, 2))
    out = ds.map_batches(_Apply, fn_constructor_args=(make_fn,), batch_size=batch_size, batch_format="numpy",
                         # min_size=1: the calling step already holds a CPU; never wait for all actors
                         compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
                         num_gpus=gpus_per_worker)
    parts = [b["y"] for b in out.iter_batches(batch_size=None, batch_format="numpy")]
    return torch.from_numpy(np.concatenate(parts))
