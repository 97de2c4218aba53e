"""Generation speed of a ``tasks.llm.decoder`` Decoder: time to first token and decode tokens/s.

``time_generation`` times ``prefill`` (the whole prompt in one call, returning the first new token:
time to first token, TTFT) and then ``new_tokens - 1`` ``step`` calls (one token per row through the
KV cache); decode speed = tokens produced after the first / their time, times the batch (B rows each
get a token per step). A batch of B repeats the one prompt B times (equal lengths, no padding). One
untimed warm-up (prefill + 2 steps) comes first, so lazy initialisation (OpenVINO's first shapes,
ORT's allocator arenas) is not timed; then ``rounds`` timed rounds; medians are reported with the
[min, max] spread.

At batch 1 decoding reads every weight once per token, so its speed is bounded by memory bandwidth:
``memory_bandwidth_gbs`` measures the bandwidth one numpy copy reaches (the STREAM "copy" kernel,
McCalpin 1995: read + write bytes / time), to put tokens/s in proportion (``tasks.llm.bench``).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np


def _round(decoder: Any, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, seconds of the ``new_tokens - 1`` decode steps) of one generation."""
    t0 = time.perf_counter()
    state = decoder.prefill(ids)
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        state = decoder.step(state)
    return t1 - t0, time.perf_counter() - t1


def time_generation(decoder: Any, prompt: np.ndarray, new_tokens: int = 128, batch: int = 1, rounds: int = 3) -> dict:
    """``{"ttft_ms", "ttft_ms_spread", "decode_tok_s", "decode_spread"}`` of greedy generation from
    ``prompt`` [1,T] repeated ``batch`` times (module doc); spreads are [min, max] over ``rounds``."""
    prompt = np.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[0] != 1 or prompt.shape[1] == 0:
        raise ValueError(f"prompt: expected token ids [1,T>0], got {list(prompt.shape)}")
    if new_tokens < 2 or batch < 1 or rounds < 1:
        raise ValueError(f"time_generation: new_tokens {new_tokens} >= 2, batch {batch} >= 1, rounds {rounds} >= 1")
    ids = np.repeat(prompt.astype(np.int64), batch, axis=0)
    _round(decoder, ids, 3)
    ttft, speed = [], []
    for _ in range(rounds):
        first, rest = _round(decoder, ids, new_tokens)
        ttft.append(first * 1e3)
        speed.append((new_tokens - 1) * batch / rest)
    return {
        "ttft_ms": float(np.median(ttft)),
        "ttft_ms_spread": [float(min(ttft)), float(max(ttft))],
        "decode_tok_s": float(np.median(speed)),
        "decode_spread": [float(min(speed)), float(max(speed))],
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux ``ru_maxrss`` is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_bandwidth_gbs(mb: int = 256, rounds: int = 5) -> float:
    """GB/s of a numpy copy of ``mb`` MB (read + write bytes / time), the best of ``rounds``."""
    if mb < 1 or rounds < 1:
        raise ValueError(f"memory_bandwidth_gbs: mb {mb} >= 1 and rounds {rounds} >= 1")
    src = np.ones(mb * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the destination pages before timing
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9
