"""Continuous (iteration-level) batching of generation requests over one decoder, as in Orca / vLLM:
requests join and leave the running batch between decode steps, so concurrent streams share each
forward pass.

``Engine.stream(prompt, sampling)`` is an async generator of ``Token``; ONE background asyncio task
(started lazily in the running loop) repeats: (1) drop the rows that finished or whose consumer went
away, (2) admit waiting requests up to ``max_batch`` and prefill them together (left-padded, one
forward), handing each its first token, (3) run ONE batched decode step for all rows and hand each
row its token (an ``asyncio.Queue`` per request). Compute runs on a single-thread executor, so the
event loop keeps serving streams while a step runs.

The running batch keeps ONE merged cache (``_Batch``): rows left-padded to the longest, mask 0 on
padding, per-row position ids = true positions. It is reshaped only when rows join (padded to the
new longest) or leave (rows selected, columns that are padding in every row trimmed). A consumer that
stops (``aclose()``, or its task cancelled: a client that disconnected) marks its row; the row leaves
before the next step. Sampling is per request (``tasks.llm.sampling``), so a seeded request gives
the same tokens alone or batched; ``temperature=0`` gives ``decoder.generate``'s greedy tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tasks.llm.decoder import Decoder, Past, concat_past, select_past
from tasks.llm.sampling import Sampler, Sampling, check_sampling

__all__ = ["Engine", "Sampling", "Token"]


@dataclasses.dataclass
class Token:
    """One generated token; ``finish`` on the last only: ``"stop"`` (an eos id, yielded) or ``"length"``."""

    id: int
    finish: str | None = None


@dataclasses.dataclass(eq=False)
class _Request:
    prompt: list[int]
    sampling: Sampling
    sampler: Sampler
    queue: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    produced: int = 0
    last: int = 0
    stopped: bool = False  # finished, or its consumer went away: leaves the batch before the next step


class _Batch:
    """The running rows and their merged left-padded cache; touched only from the engine's executor."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.rows: list[_Request] = []
        self.past: Past = []
        self.mask = np.zeros((0, 0), np.int64)

    def admit(self, reqs: list[_Request]) -> list[int]:
        """Prefill ``reqs`` together (left-padded to the longest prompt), merge them in, pick first tokens."""
        width = max(len(r.prompt) for r in reqs)
        ids = np.zeros((len(reqs), width), np.int64)
        mask = np.zeros_like(ids)
        pos = np.zeros_like(ids)
        for i, r in enumerate(reqs):
            n = len(r.prompt)
            ids[i, width - n :], mask[i, width - n :], pos[i, width - n :] = r.prompt, 1, np.arange(n)
        logits, past = self.decoder.forward(ids, mask, pos, None)
        if self.rows:
            total = max(width, self.mask.shape[1])
            past = concat_past([self.past, past])
            mask = np.concatenate([_pad_mask(self.mask, total), _pad_mask(mask, total)])
        self.rows, self.past, self.mask = self.rows + reqs, past, mask
        return [r.sampler.pick(row) for r, row in zip(reqs, logits)]

    def step(self) -> list[int]:
        """One decode step for every row (its last token in, the next picked)."""
        ids = np.array([[r.last] for r in self.rows], np.int64)
        positions = self.mask.sum(axis=1, keepdims=True)
        mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), np.int64)], axis=1)
        logits, self.past = self.decoder.forward(ids, mask, positions, self.past)
        self.mask = mask
        return [r.sampler.pick(row) for r, row in zip(self.rows, logits)]

    def drop_stopped(self) -> None:
        """Rows that stopped leave; the columns that are then padding in every row go too."""
        keep = [i for i, r in enumerate(self.rows) if not r.stopped]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.past, self.mask = [], [], np.zeros((0, 0), np.int64)
            return
        mask = self.mask[keep]
        drop = int(mask.any(axis=0).argmax())  # left padding: the first column any row uses
        self.rows = [self.rows[i] for i in keep]
        self.past, self.mask = select_past(self.past, keep, drop), np.ascontiguousarray(mask[:, drop:])


def _pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    return np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))


class Engine:
    """Continuous batching over ``decoder`` (module doc): ``stream`` / ``generate`` / ``stats`` / ``close``."""

    def __init__(self, decoder: Decoder, eos_ids: Iterable[int], max_batch: int = 16, context: int = 2048):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch: expected an integer >= 1, got {max_batch!r}")
        if not isinstance(context, int) or context < 2:
            raise ValueError(f"context: expected an integer >= 2, got {context!r}")
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.max_batch, self.context = max_batch, context
        self.vocab_size: int = getattr(decoder, "vocab_size", 0)
        self._batch = _Batch(decoder)
        self._waiting: deque[_Request] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-engine")
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._counts = {"steps": 0, "tokens": 0, "max_batch_seen": 0}

    def check(self, prompt: list[int], sampling: Sampling) -> list[int]:
        """The prompt as plain ints, or ValueError (one line naming the value) for a request that cannot run."""
        check_sampling(sampling)
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise ValueError(f"prompt: expected a non-empty list of token ids, got {type(prompt).__name__}")
        vocab = self.vocab_size or float("inf")
        bad = [t for t in prompt if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt: token ids must be integers in [0, {vocab}), got {bad[0]!r}")
        if len(prompt) + sampling.max_tokens > self.context:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + max_tokens {sampling.max_tokens} > context {self.context}"
            )
        return [int(t) for t in prompt]

    async def stream(self, prompt: list[int], sampling: Sampling) -> AsyncIterator[Token]:
        """The request's tokens as they are generated; stopping early frees its batch slot at once."""
        req = _Request(self.check(prompt, sampling), sampling, Sampler(sampling))
        self._start()
        self._waiting.append(req)
        self._wake.set()
        try:
            while True:
                item = await req.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish:
                    return
        finally:
            req.stopped = True
            with contextlib.suppress(ValueError):
                self._waiting.remove(req)

    async def generate(self, prompt: list[int], sampling: Sampling) -> list[Token]:
        """All of the request's tokens (``stream`` collected)."""
        return [token async for token in self.stream(prompt, sampling)]

    def stats(self) -> dict:
        """Rows in the batch (still consumed), requests waiting, decode steps, tokens handed out, widest step."""
        active = sum(not r.stopped for r in self._batch.rows)
        return {"active": active, "waiting": len(self._waiting), **self._counts}

    async def close(self) -> None:
        """Stop the loop; requests still running or waiting get a RuntimeError."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail([*self._batch.rows, *self._waiting], RuntimeError("engine closed"))
        self._batch = _Batch(self._batch.decoder)
        self._waiting.clear()
        self._pool.shutdown(wait=False)

    def _start(self) -> None:
        """The background loop in the running event loop (again after a loop that is gone)."""
        if self._closed:
            raise RuntimeError("engine closed")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._batch = _Batch(self._batch.decoder)  # rows of another loop cannot be served here
            self._waiting.clear()
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="llm-engine")

    async def _run(self) -> None:
        while True:
            if not self._batch.rows and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._iterate()
            except Exception as error:  # a failed forward fails its requests, the engine keeps serving
                self._fail([*self._batch.rows], error)
                self._batch = _Batch(self._batch.decoder)

    async def _iterate(self) -> None:
        """One iteration (module doc): leave, join + first tokens, one decode step."""
        batch = self._batch
        if any(r.stopped for r in batch.rows):
            await self._compute(batch.drop_stopped)
        room = self.max_batch - len(batch.rows)
        joining: list[_Request] = []
        while self._waiting and len(joining) < room:
            joining.append(self._waiting.popleft())
        if joining:
            try:
                tokens = await self._compute(batch.admit, joining)
            except Exception as error:  # the prefill failed before the batch changed: only these fail
                self._fail(joining, error)
                return
            self._deliver(joining, tokens)
            if any(r.stopped for r in joining):
                await self._compute(batch.drop_stopped)
        if batch.rows:
            self._counts["max_batch_seen"] = max(self._counts["max_batch_seen"], len(batch.rows))
            tokens = await self._compute(batch.step)
            self._counts["steps"] += 1
            self._deliver(batch.rows, tokens)

    async def _compute(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _deliver(self, rows: list[_Request], tokens: list[int]) -> None:
        """Each still-consumed row gets its token; the last one carries why it is the last."""
        for r, token in zip(rows, tokens):
            if r.stopped:
                continue
            r.produced += 1
            r.last = token
            finish = "stop" if token in self.eos_ids else "length" if r.produced >= r.sampling.max_tokens else None
            r.stopped = finish is not None
            r.queue.put_nowait(Token(token, finish))
            self._counts["tokens"] += 1

    @staticmethod
    def _fail(reqs: list[_Request], error: BaseException) -> None:
        for r in reqs:
            if not r.stopped:
                r.stopped = True
                r.queue.put_nowait(error)
