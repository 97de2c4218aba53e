"""How the next token is picked from a row's logits: greedy, temperature and nucleus (top-p) sampling,
seeded per request so a request's tokens do not depend on what else shares its batch.

``Sampling`` carries the OpenAI request's settings (``max_tokens``, ``temperature``, ``top_p``,
``seed``); ``check_sampling`` refuses a bad value with one line naming it. ``Sampler`` is one
request's picker: its own ``numpy`` generator (seeded by ``seed``, fresh entropy when ``None``),
one uniform draw per token mapped through the sorted cumulative distribution, so the same seed,
prompt and settings give the same tokens alone or batched (logits of a padded batch differ from the
unbatched ones by ~1e-6: a draw would have to fall that close to a boundary to change a token).
``temperature == 0`` is ``argmax`` as in greedy ``generate``; a ``top_p`` so small that only the most
likely token survives is greedy too.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class Sampling:
    """A request's generation settings (the OpenAI names): ``temperature`` 0 is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_sampling(sampling: Sampling) -> None:
    """ValueError (one line naming the key and value) unless every setting is in range."""
    s = sampling
    if not isinstance(s.max_tokens, int) or isinstance(s.max_tokens, bool) or s.max_tokens < 1:
        raise ValueError(f"max_tokens: expected an integer >= 1, got {s.max_tokens!r}")
    if not _number(s.temperature) or s.temperature < 0:
        raise ValueError(f"temperature: expected a number >= 0, got {s.temperature!r}")
    if not _number(s.top_p) or not 0 < s.top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1], got {s.top_p!r}")
    if s.seed is not None and (not isinstance(s.seed, int) or isinstance(s.seed, bool) or s.seed < 0):
        raise ValueError(f"seed: expected an integer >= 0 or null, got {s.seed!r}")


class Sampler:
    """One request's token picker (module doc): ``pick(logits [V]) -> token id``."""

    def __init__(self, sampling: Sampling):
        self.temperature = float(sampling.temperature)
        self.top_p = float(sampling.top_p)
        self.rng = np.random.default_rng(sampling.seed)

    def pick(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        # the nucleus needs the tokens by probability; without one (top_p 1) vocabulary order will do
        order = np.argsort(-z, kind="stable") if self.top_p < 1 else np.arange(len(z))
        probs = np.exp(z[order] - z.max())
        cumulative = np.cumsum(probs / probs.sum())
        # the nucleus: the fewest most-likely tokens whose mass reaches top_p (at least one)
        keep = int(np.searchsorted(cumulative, self.top_p - 1e-12)) + 1 if self.top_p < 1 else len(z)
        cumulative = cumulative[:keep] / cumulative[keep - 1]
        draw = self.rng.random()
        return int(order[min(int(np.searchsorted(cumulative, draw, side="right")), keep - 1)])
