"""Splitting a chain of modules into pipeline stages: the one partition rule of the inference pipeline's
stages (``tasks.steps.inference``, by measured time) and a language model's generation stages
(``tasks.llm.stages``, by weight bytes)."""

from __future__ import annotations

import numpy as np


def balanced_cuts(costs: list[float], k: int) -> list[int]:
    """Start indices of stages 2..k splitting ``costs`` into k contiguous parts whose largest sum
    is minimal (the pipeline's throughput is set by its slowest stage). Exact DP, O(k n^2)."""
    n = len(costs)
    if not 1 <= k <= n:
        raise ValueError(f"stages: cannot split {n} modules into {k} stages")
    pre = np.concatenate([[0.0], np.cumsum(costs)])
    best = np.full((k + 1, n + 1), np.inf)
    arg = np.zeros((k + 1, n + 1), dtype=int)
    best[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            for s in range(j - 1, i):
                v = max(best[j - 1][s], pre[i] - pre[s])
                if v < best[j][i]:
                    best[j][i], arg[j][i] = v, s
    cuts, i = [], n
    for j in range(k, 0, -1):
        i = arg[j][i]
        cuts.append(i)
    return sorted(cuts)[1:]
