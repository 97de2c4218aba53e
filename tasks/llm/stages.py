"""A Llama-family causal LM split into K pipeline stages of contiguous layers, each with its own KV cache.

Model parallelism for generation: stage 0 owns the token embedding, the last stage the final norm and
the LM head (a tied head is the embedding's tensor, held by both ends), and every stage a contiguous run
of decoder layers plus the rotary embedding (a few numbers). ``split_stages`` cuts the layers so that
the stages carry about the same weights, the LM head counted with the last stage: CPU decoding is bound
by reading the weights once per step, so the slowest stage is the one with the most bytes (a
layer-count split of SmolLM2-135M puts 15 layers + the 113 MB head on the last stage: 60% of the work).

A ``Stage`` keeps the KV cache of its own layers only, one Hugging Face ``DynamicCache`` per micro-batch
keyed by its tuple of sequence ids: the rows of a micro-batch are prefilled together and stay together
until they end (``free``), so each step is the same arithmetic as the unsplit model's ``generate`` on
those rows (same shapes, same mask) and greedy tokens are identical, with no per-step gather of
per-row caches.

``plan`` groups prompts into micro-batches of equal-length rows (no padding) and ``Tokens`` collects a
micro-batch's greedy tokens under ``tasks.llm.decoder``'s stopping rule; ``generate_local`` runs the
stages in one process (the reference schedule; the Ray actors of ``pipelines.scale.generate`` run the
same calls, one stage per actor).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from tasks.core.partition import balanced_cuts


def load_model(source: str | Path | dict) -> Any:
    """The causal LM of ``source``: a ``load_causal_lm`` path (a folder, a GGUF, ``"smollm2"``) or the
    files ``{"config.json", "model.safetensors"}`` that ``save_pretrained`` writes, as bytes."""
    from tasks.llm.model import build_causal_lm, load_causal_lm, load_lm_state

    if isinstance(source, (str, Path)):
        return load_causal_lm(str(source))[0]
    missing = [n for n in ("config.json", "model.safetensors") if not isinstance(source, dict) or n not in source]
    if missing:
        raise ValueError(f"model files: {missing[0]} is missing (give a folder or save_pretrained's files)")
    from safetensors.torch import load as load_safetensors

    config = json.loads(source["config.json"])
    return load_lm_state(build_causal_lm(config), load_safetensors(bytes(source["model.safetensors"])))


def _llama_parts(model: Any) -> Any:
    inner = getattr(model, "model", None)
    names = ("layers", "embed_tokens", "norm", "rotary_emb")
    missing = [n for n in names if not hasattr(inner, n)] if inner is not None else ["model"]
    if missing or getattr(model, "lm_head", None) is None:
        raise ValueError(f"model {type(model).__name__}: no Llama-family {(missing or ['lm_head'])[0]} to split")
    return inner


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def split_stages(model: Any, stages: int) -> list[tuple[int, int]]:
    """Contiguous layer ranges ``[(start, stop)]``, one per stage, each non-empty, minimising the largest
    stage's weights (the LM head counted with the last stage; see the module docstring)."""
    layers = _llama_parts(model).layers
    n = len(layers)
    if not isinstance(stages, int) or not 1 <= stages <= n:
        raise ValueError(f"stages: {stages!r} is not between 1 and the model's {n} layers")
    cost = [float(_params(layer)) for layer in layers]
    cost[-1] += _params(model.lm_head)
    edges = [0, *balanced_cuts(cost, stages), n]
    return list(zip(edges[:-1], edges[1:]))


class Stage:
    """Layers ``[start, stop)`` of ``model`` (and the embedding / norm + head at the ends) with their KV
    cache per micro-batch. ``forward`` takes token ids (stage 0) or the previous stage's hidden states."""

    def __init__(self, model: Any, index: int, stages: int):
        inner = _llama_parts(model)
        self.start, self.stop = split_stages(model, stages)[index]
        self.first, self.last = index == 0, index == stages - 1
        self.config = model.config
        self.layers = list(inner.layers[self.start : self.stop])
        self.rotary = inner.rotary_emb
        self.embed = inner.embed_tokens if self.first else None
        self.norm: Any = inner.norm if self.last else None
        self.head: Any = model.lm_head if self.last else None
        self.caches: dict[tuple[int, ...], DynamicCache] = {}

    def cached(self) -> int:
        """How many sequences hold a cache here."""
        return sum(len(k) for k in self.caches)

    def _cache(self, seq_ids: tuple[int, ...], start: int) -> DynamicCache:
        if start == 0:
            taken = set(seq_ids) & {s for key in self.caches for s in key}
            if taken:
                raise ValueError(f"seq_ids: {sorted(taken)[0]} already holds a cache (free it first)")
            self.caches[seq_ids] = DynamicCache(config=self.config)
        elif seq_ids not in self.caches:
            raise ValueError(f"seq_ids: {list(seq_ids)} have no cache here (prefill them at position 0)")
        cache = self.caches[seq_ids]
        length = cache.get_seq_length(self.start)
        if length != start:
            raise ValueError(f"positions: start at {start}, but {list(seq_ids)} have {length} cached tokens")
        return cache

    @torch.no_grad()
    def forward(self, seq_ids: list[int], x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x`` (ids [B,T] on stage 0, else hidden [B,T,H]) at ``positions`` [T] through this stage:
        hidden [B,T,H], or on the last stage the last position's logits [B,V]."""
        start = int(positions[0])
        cache = self._cache(tuple(int(s) for s in seq_ids), start)
        hidden = self.embed(x) if self.embed is not None else x
        if hidden.shape[0] != len(seq_ids):
            raise ValueError(f"seq_ids: {len(seq_ids)} ids for {hidden.shape[0]} rows")
        position_ids = positions.reshape(1, -1)
        mask = torch.ones(hidden.shape[0], start + hidden.shape[1], dtype=torch.long)
        causal = create_causal_mask(self.config, hidden, mask, cache, position_ids, layer_idx=self.start)
        rope = self.rotary(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(
                hidden, attention_mask=causal, position_embeddings=rope, position_ids=position_ids, cache=cache
            )
        if self.head is None:
            return hidden
        return self.head(self.norm(hidden)[:, -1:, :])[:, 0, :]  # generate's logits_to_keep=1

    def free(self, seq_ids: list[int]) -> None:
        """Drop the cache of the micro-batch ``seq_ids`` (a sequence that ended); unknown ids are ignored."""
        self.caches.pop(tuple(int(s) for s in seq_ids), None)


def make_stages(model: Any, stages: int) -> list[Stage]:
    """All K stages of ``model`` in one process (the local reference of the actor pipeline)."""
    return [Stage(model, k, stages) for k in range(stages)]


def plan(prompts: list[list[int]], micro_batches: int) -> list[list[int]]:
    """Prompt indices in micro-batches of equal-length prompts, each at most ``ceil(N / micro_batches)``
    rows (prompts of one length, in input order, fill a micro-batch before the next starts)."""
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("prompts: an empty or non-list set of prompts")
    for i, p in enumerate(prompts):
        if not isinstance(p, (list, tuple)) or not p or not all(isinstance(t, (int, np.integer)) for t in p):
            raise ValueError(f"prompts[{i}]: not a non-empty list of token ids")
    if not isinstance(micro_batches, int) or micro_batches < 1:
        raise ValueError(f"micro_batches: {micro_batches!r} is not a positive integer")
    size = -(-len(prompts) // micro_batches)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    return [rows[a : a + size] for rows in groups.values() for a in range(0, len(rows), size)]


@dataclass
class Tokens:
    """The greedy tokens of one micro-batch so far, under the decoder's stopping rule: a row that
    produced ``eos_id`` is padded with it, and the micro-batch ends when every row is done or
    ``max_new_tokens`` are out."""

    rows: int
    max_new_tokens: int
    eos_id: int | None
    steps: list[np.ndarray] = field(default_factory=list)
    done: np.ndarray | None = None

    def add(self, token: np.ndarray) -> bool:
        """Record one step's tokens [B] (or [B,1]); whether the micro-batch has ended."""
        token = np.asarray(token).reshape(self.rows).astype(np.int64)
        done = np.zeros(self.rows, bool) if self.done is None else self.done
        self.steps.append(np.where(done, self.eos_id if self.eos_id is not None else -1, token))
        if self.eos_id is not None:
            done = done | (token == self.eos_id)
        self.done = done
        return len(self.steps) >= self.max_new_tokens or bool(done.all() and self.eos_id is not None)

    def result(self) -> np.ndarray:
        """[B, max_new_tokens], padded with ``eos_id`` (or -1) after an early end."""
        out = np.full((self.rows, self.max_new_tokens), -1 if self.eos_id is None else self.eos_id, np.int64)
        if self.steps:
            out[:, : len(self.steps)] = np.stack(self.steps, 1)
        return out


def generate_local(
    stages: list[Stage], prompts: list[list[int]], max_new_tokens: int, eos_id: int | None, micro_batches: int = 1
) -> list[list[int]]:
    """Greedy tokens per prompt through ``stages`` in this process, one micro-batch after another."""
    out: list[list[int]] = [[] for _ in prompts]
    for rows in plan(prompts, micro_batches):
        tokens, x = Tokens(len(rows), max_new_tokens, eos_id), torch.tensor([prompts[i] for i in rows])
        start, ended = 0, max_new_tokens <= 0
        while not ended:
            positions = torch.arange(start, start + x.shape[1])
            for stage in stages:
                x = stage.forward(rows, x, positions)
            start += positions.numel()
            x = x.argmax(-1, keepdim=True)
            ended = tokens.add(x.numpy())
        for stage in stages:
            stage.free(rows)
        for i, row in zip(rows, tokens.result(), strict=True):
            out[i] = row.tolist()
    return out
