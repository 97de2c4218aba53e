"""The ``lm_topk`` step: the teacher's top-k next-token log-probabilities on the distillation rows,
computed once so every student's healing reads them from the cache.

Data-parallel: with ``replicas > 1`` the rows go through ``ctx.map_batches`` (actors that each load
the teacher once; an actor killed mid-run has its batches redone, each row exactly once). The
output is a ``Logits`` whose ``train`` holds the log-probabilities (float16 ``[rows, seq_len, k]``)
and ``features["indices"]`` their token ids (int32), stored as safetensors (size logged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.core.checks import at_least, require
from tasks.core.context import StepContext
from tasks.core.types import Logits
from tasks.llm.types import CausalLM, TokenSet


@dataclass
class LmTopkConfig:
    k: int = 64  # kept log-probabilities per position
    batch_size: int = 4  # rows per forward pass
    replicas: int = 1  # > 1: data-parallel actors, each loading the teacher once
    cpus_per_replica: float = 1.0

    def __post_init__(self) -> None:
        at_least("k", self.k, 1)
        at_least("batch_size", self.batch_size, 1)
        at_least("replicas", self.replicas, 1)
        require("cpus_per_replica", self.cpus_per_replica > 0, "must be > 0")


class TopkFn:
    """Picklable factory: loads the teacher once per worker; a batch of rows ``[B, T]`` becomes
    ``[B, T, 2k]`` (the log-probabilities, then their token ids as floats: exact below 2**24)."""

    def __init__(self, teacher: CausalLM, k: int):
        self.teacher, self.k = teacher, k

    def __call__(self):
        from tasks.llm.distill import topk_logits
        from tasks.llm.model import build_causal_lm, load_lm_state

        model = build_causal_lm(self.teacher.config)
        load_lm_state(model, self.teacher.state_dict)

        def apply(rows: torch.Tensor) -> torch.Tensor:
            values, indices = topk_logits(model, rows.long(), self.k, batch=len(rows))
            return torch.cat([values.float(), indices.float()], dim=-1)

        return apply


def run(teacher: CausalLM, data: TokenSet, *, cfg: LmTopkConfig, ctx: StepContext) -> Logits:
    """The teacher's top-k log-probabilities at every position of ``data.distill``."""

    require("k", cfg.k <= int(teacher.config["vocab_size"]), f"the vocabulary has {teacher.config['vocab_size']}")
    out = ctx.map_batches(
        TopkFn(teacher, cfg.k),
        data.distill,
        batch_size=cfg.batch_size,
        replicas=cfg.replicas,
        cpus_per_replica=cfg.cpus_per_replica,
    )
    values, indices = out[..., : cfg.k].half(), out[..., cfg.k :].int()
    size = values.numel() * 2 + indices.numel() * 4
    ctx.log_metrics({"rows": len(values), "positions": values.shape[0] * values.shape[1], "bytes": size})
    return Logits(train=values.contiguous(), features={"indices": indices.contiguous()}, teacher=teacher.name)
