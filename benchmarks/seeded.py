"""Seeds behind a method figure: ``--seeds N`` (seeds 0 .. N-1, default 5) and, per figure, the mean
over the seeds with its 95% Student-t interval (``tasks.evaluation.stats.t_interval``).

    from seeded import add_seeds, mean_ci
    p = argparse.ArgumentParser(); add_seeds(p)   # args.seeds: [0, 1, 2, 3, 4]
    out = mean_ci("kd", [0.95, 0.96, ...])        # {"kd_mean": ..., "kd_ci95": [low, high]}
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from tasks.evaluation.stats import t_interval

DEFAULT_SEEDS = 5


def add_seeds(p: argparse.ArgumentParser, default: int = DEFAULT_SEEDS) -> None:
    """``--seeds N``: run seeds 0 .. N-1 (``args.seeds`` becomes that list)."""
    p.add_argument(
        "--seeds", type=_count, default=list(range(default)), help=f"number of seeds, 0..N-1 (default {default})"
    )


def _count(text: str) -> list[int]:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"--seeds must be >= 1, got {n}")
    return list(range(n))


def mean_ci(name: str, values: Iterable[float]) -> dict:
    """``{<name>_mean, <name>_ci95}``: the mean over the seeds and its 95% t-interval; a NaN value (a
    seed where the figure does not exist) is left out, and an undefined figure is None (JSON null)."""
    t = t_interval([v for v in values if v == v])
    clean = lambda x: None if x != x else x  # noqa: E731
    return {f"{name}_mean": clean(t["mean"]), f"{name}_ci95": [clean(x) for x in t["ci95"]]}
