"""Greedy generation on Ray actors: K pipeline stages (model parallel), R replicas (data parallel), or R x K.

Each stage is an actor that loads the model and keeps only its layers and their KV cache
(``tasks.llm.stages.Stage``). A micro-batch (equal-length prompts, ``tasks.llm.stages.plan``) goes
through a replica by chaining the stage calls: the ObjectRef stage k returns is stage k+1's argument,
and the last stage's next tokens are stage 0's input of the next step, so activations move actor to
actor. The driver only reads each step's tokens (to stop a micro-batch at eos) and submits the next
step; with up to K + 1 micro-batches in flight per replica, stage 0 works on one micro-batch while
the later stages work on the others (GPipe-style, step after step).

The pool is ``pipelines.scale.pool.ChainPool``'s (R chains of K actors, placed and replaced alike),
with a stage actor of its own: ``ChainPool.map`` sends a batch once through a chain of stateless
functions, while generation loops the tokens back into stage 0 for every new token and keeps state (the
KV cache) in the actors between calls. So the loop is here; what it shares with ``map`` is the rule
on actor death: a replica whose actor dies (``RayActorError``) is replaced by a fresh chain, and its
micro-batches in flight start again from their prompts on a live replica (their caches died with
it; greedy decoding gives the same tokens again). Answers are kept by prompt index, the first one
only: every prompt is answered exactly once, and ``rows_lost`` / ``rows_duplicated`` count it.
"""

from __future__ import annotations

import collections
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError

from pipelines.scale.pool import MAX_RESTARTS_PER_REPLICA, Chain, ChainPool, PoolStats
from tasks.llm.stages import Stage, Tokens, load_model, plan


@dataclass(frozen=True)
class StageSpec:
    """What a stage actor builds: stage ``index`` of ``stages`` of the model at ``source`` (a path, or
    an ObjectRef of its files put once for every actor), on ``threads`` torch threads."""

    source: Any
    index: int
    stages: int
    threads: int = 1


@ray.remote(max_restarts=0)
class StageActor:
    """One pipeline stage of a causal LM: its layers and their KV cache, nothing else of the model."""

    def __init__(self, spec: StageSpec):
        torch.set_num_threads(spec.threads)
        source = ray.get(spec.source) if isinstance(spec.source, ray.ObjectRef) else spec.source
        self.stage = Stage(load_model(source), spec.index, spec.stages)  # the rest of the model is freed
        self.busy_s, self.calls, self.last = 0.0, 0, 0.0
        self.first: float | None = None

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"pid": os.getpid(), "node": ctx.get_node_id(), "layers": [self.stage.start, self.stage.stop]}

    def run(self, seq_ids: list[int], x: np.ndarray, start: int) -> np.ndarray:
        """Token ids or hidden states at positions ``start...`` through the stage: hidden states, or on
        the last stage the greedy next tokens [B,1]."""
        began = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only object-store arrays: never written
            positions = torch.arange(start, start + x.shape[1])
            out = self.stage.forward(seq_ids, torch.from_numpy(x), positions)
        result = (out.argmax(-1, keepdim=True) if self.stage.last else out).numpy()
        self.last = time.time()
        self.busy_s += self.last - began
        self.calls += 1
        self.first = began if self.first is None else self.first
        return result

    def free(self, seq_ids: list[int]) -> int:
        self.stage.free(seq_ids)
        return self.stage.cached()

    def stats(self, reset: bool = False) -> dict:
        """Busy seconds, calls and the first / last call's times since the last reset."""
        out = {"busy_s": self.busy_s, "calls": self.calls, "first": self.first or 0.0, "last": self.last}
        if reset:
            self.busy_s, self.calls, self.last, self.first = 0.0, 0, 0.0, None
        return out


@dataclass(eq=False)
class _Job:
    """One micro-batch on one replica: its prompt indices, tokens so far, cached length, pending ref."""

    rows: list[int]
    chain: Chain
    tokens: Tokens
    start: int = 0
    ref: Any = None


class GenerationPool(ChainPool):
    """``replicas`` chains of ``stages`` stage actors of the model at ``source`` (a ``load_causal_lm``
    path, ``{"config.json", "model.safetensors"}`` bytes, or an ObjectRef of those bytes). ``num_cpus``
    per actor; ``stage_options``: extra Ray actor options per stage (``{"resources": {...}}`` places it)."""

    def __init__(
        self,
        source: Any,
        *,
        stages: int = 1,
        replicas: int = 1,
        num_cpus: float = 1.0,
        threads: int = 1,
        stage_options: list[dict] | None = None,
    ):
        if stage_options is not None and len(stage_options) != stages:
            raise ValueError(f"stage_options: {len(stage_options)} entries for {stages} stages")
        self.stage_options = stage_options or [{} for _ in range(stages)]
        self.steps_done = 0  # decode steps answered so far, all calls together (progress, for watchers)
        if isinstance(source, dict):
            source = ray.put(source)  # the model's bytes: put once, read by every actor
        ref = source if isinstance(source, ray.ObjectRef) else str(source)
        specs = [StageSpec(ref, k, stages, threads) for k in range(stages)]
        super().__init__(specs, replicas, num_cpus=num_cpus)

    def _new_chain(self) -> Chain:
        self.generation += 1
        remote: Any = StageActor
        actors = [remote.options(**self.options, **o).remote(s) for s, o in zip(self.stage_fns, self.stage_options)]
        return Chain(actors, self.generation)

    def _submit_step(self, job: _Job, x: Any, width: int) -> None:
        ref = x
        for actor in job.chain.actors:
            ref = actor.run.remote(job.rows, ref, job.start)
        job.start += width
        job.ref = ref

    def _start(self, pending: collections.deque, prompts: list, new: int, eos: int | None) -> list[_Job]:
        """New jobs on the least busy replicas while they have room in their window."""
        jobs = []
        while pending:
            chain = min(self.chains, key=lambda c: c.in_flight)
            if chain.in_flight >= self.window:
                break
            rows = pending.popleft()
            job = _Job(rows, chain, Tokens(len(rows), new, eos))
            ids = np.array([prompts[i] for i in rows], np.int64)
            self._submit_step(job, ids, ids.shape[1])
            chain.in_flight += 1
            jobs.append(job)
        return jobs

    def _lost(self, job: _Job, pending: collections.deque, stats: PoolStats) -> None:
        """A job whose replica died: back to the queue; the replica replaced (once)."""
        pending.appendleft(job.rows)
        stats.resubmitted += 1
        if job.chain in self.chains:
            if stats.restarts >= MAX_RESTARTS_PER_REPLICA * len(self.chains):
                raise RuntimeError(f"generation: replicas died {stats.restarts} times; giving up") from None
            self._replace(self.chains.index(job.chain))
            stats.restarts += 1

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None = None, micro_batches: int = 0
    ) -> tuple[list[list[int]], dict]:
        """Greedy tokens per prompt (``max_new_tokens`` each, padded with ``eos_id`` after it), and a
        summary: tokens/s, restarts, ``rows_lost``, ``rows_duplicated``, stage utilisation."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: {max_new_tokens!r} is not a positive integer")
        units = plan(prompts, micro_batches or len(self.chains) * self.window)
        pending, active = collections.deque(units), dict[Any, _Job]()
        answers: list[list[int] | None] = [None] * len(prompts)
        stats, duplicated = PoolStats(batches=len(units), rows=len(prompts)), 0
        ray.get([a.stats.remote(reset=True) for c in self.chains for a in c.actors])  # this call's figures only
        began = time.perf_counter()
        while pending or active:
            active.update((j.ref, j) for j in self._start(pending, prompts, max_new_tokens, eos_id))
            stats.peak_in_flight = max(stats.peak_in_flight, len(active))
            [ref], _ = ray.wait(list(active), num_returns=1)
            job = active.pop(ref)
            try:
                ended = job.tokens.add(ray.get(ref))
            except RayActorError:
                self._lost(job, pending, stats)
                continue
            self.steps_done += 1
            if not ended:
                self._submit_step(job, ref, 1)
                active[job.ref] = job
                continue
            job.chain.in_flight -= 1
            for actor in job.chain.actors:
                actor.free.remote(job.rows)
            for i, row in zip(job.rows, job.tokens.result(), strict=True):
                duplicated += answers[i] is not None
                answers[i] = answers[i] or row.tolist()
        stats.wall_s = time.perf_counter() - began
        stats.actor_stats = [[self._stats(a) for a in c.actors] for c in self.chains]
        summary = stats.summary()
        lost = sum(a is None for a in answers)
        summary.update(
            rows_lost=lost, rows_duplicated=duplicated, tokens_per_s=len(prompts) * max_new_tokens / stats.wall_s
        )
        return [a or [] for a in answers], summary


def batch_generate(
    source: Any,
    prompts: list[list[int]],
    *,
    stages: int = 1,
    replicas: int = 1,
    max_new_tokens: int = 32,
    eos_id: int | None = None,
    micro_batches: int = 0,
    num_cpus: float = 1.0,
    threads: int = 1,
    stage_options: list[dict] | None = None,
) -> tuple[list[list[int]], dict]:
    """Greedy tokens per prompt on ``replicas`` x ``stages`` actors started for this call, and the summary."""
    pool = GenerationPool(
        source, stages=stages, replicas=replicas, num_cpus=num_cpus, threads=threads, stage_options=stage_options
    )
    try:
        return pool.generate(prompts, max_new_tokens, eos_id, micro_batches)
    finally:
        pool.shutdown()


def pipeline_generate(
    source: Any,
    prompts: list[list[int]],
    *,
    stages: int = 2,
    max_new_tokens: int = 32,
    eos_id: int | None = None,
    micro_batches: int = 0,
    num_cpus: float = 1.0,
    stage_options: list[dict] | None = None,
) -> list[list[int]]:
    """Greedy tokens per prompt from one pipeline of ``stages`` actors (model parallel)."""
    out, _ = batch_generate(
        source,
        prompts,
        stages=stages,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        micro_batches=micro_batches,
        num_cpus=num_cpus,
        stage_options=stage_options,
    )
    return out


def generate_file(
    source: str, prompts_path: str | Path, out_path: str | Path, *, chat: bool = False, **options
) -> dict:
    """Greedy completions of every prompt of ``prompts_path`` (``tasks.llm.text.read_prompts``; ``chat``:
    rendered with the tokenizer's chat template) by the causal LM at ``source`` on R x K actors
    (``options``: ``batch_generate``'s), written to ``out_path`` as JSON lines ``{"index", "prompt",
    "completion", "tokens"}`` in the file's order, all or nothing (a temporary file renamed at the end).
    Returns the run's summary."""
    import json

    from tasks.llm.model import load_tokenizer
    from tasks.llm.text import read_prompts, render_chat

    texts = read_prompts(prompts_path)
    tokenizer = load_tokenizer(source)
    ids = [render_chat(tokenizer, t) if chat else tokenizer(t)["input_ids"] for t in texts]
    options.setdefault("eos_id", tokenizer.eos_token_id)
    tokens, summary = batch_generate(source, ids, **options)
    out = Path(out_path)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i, (text, row) in enumerate(zip(texts, tokens, strict=True)):
            row = row[: row.index(options["eos_id"])] if options["eos_id"] in row else row  # eos, then padding
            done = {"index": i, "prompt": text, "completion": tokenizer.decode(row, skip_special_tokens=True)}
            f.write(json.dumps({**done, "tokens": row}) + "\n")
    tmp.replace(out)
    return summary
