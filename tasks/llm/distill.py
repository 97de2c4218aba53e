"""Knowledge distillation of a causal LM from the teacher's cached top-k log-probabilities.

The teacher is run once (``topk_logits``) and only its k most likely tokens per position are
kept (values float16, ids int32: 6 bytes per entry instead of 4·V), as in the sparse / top-k KD
used to heal pruned LLMs (Minitron, Muralidharan et al. 2024, arXiv:2407.14679, distils on the
teacher's logits; "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs", Anshumann
et al. 2025, arXiv:2503.16870, analyses the cached top-k variant). The loss is Hinton et al.'s
(2015, arXiv:1503.02531) temperature-scaled KL(teacher || student), multiplied by T^2 so gradient
sizes do not depend on T, restricted to the teacher's top-k support:

    p_i = softmax_k(v_i / T)                       teacher, renormalised over its k ids
    log q_i = log_softmax_V(z / T)[ids_i]          student, normalised over the FULL vocabulary
    loss = T^2 · mean_positions sum_i p_i (log p_i - log q_i)

Normalising the student over the full vocabulary (not over the k ids) keeps the loss >= 0 and
zero only when the student puts the teacher's renormalised mass exactly on those k tokens, so
mass the student leaks outside the support is penalised instead of being renormalised away.
Logits at position t and the teacher's top-k at position t both predict token t+1: no shift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


@torch.no_grad()
def topk_logits(model: Any, ids: torch.Tensor, k: int = 64, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's top-k next-token log-probabilities per position: (values float16 [n, T, k],
    token ids int32 [n, T, k]), sorted by decreasing probability. Log-softmax in float32 over
    the full vocabulary before the top-k, so the values are true log-probabilities."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long or ids.numel() == 0:
        raise ValueError(f"ids: need a non-empty torch.long tensor [n, T], got {getattr(ids, 'shape', ids)!r}")
    vocab = model.config.vocab_size
    if not 1 <= int(k) <= vocab:
        raise ValueError(f"k: must be in 1..{vocab} (vocab_size), got {k}")
    if batch < 1:
        raise ValueError(f"batch: must be >= 1, got {batch}")
    was_training = model.training
    model.eval()
    values, indices = [], []
    try:
        for start in range(0, ids.shape[0], batch):
            logits = model(input_ids=ids[start : start + batch], use_cache=False).logits
            top = torch.topk(torch.log_softmax(logits.float(), dim=-1), int(k), dim=-1)
            values.append(top.values.to(torch.float16))
            indices.append(top.indices.to(torch.int32))
    finally:
        model.train(was_training)
    return torch.cat(values), torch.cat(indices)


def topk_kd_loss(
    student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """T^2 · KL(teacher || student) on the teacher's top-k support, mean over positions (formula in
    the module docstring). ``student_logits`` [B, T, V]; ``values``/``indices`` [B, T, k]."""
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    if student_logits.shape[:-1] != values.shape[:-1] or values.shape != indices.shape:
        raise ValueError(
            f"values: shape {tuple(values.shape)} / indices {tuple(indices.shape)} do not match"
            f" student_logits {tuple(student_logits.shape)}"
        )
    t = float(temperature)
    teacher_logp = torch.log_softmax(values.float() / t, dim=-1)
    student_logp = torch.log_softmax(student_logits.float() / t, dim=-1).gather(-1, indices.long())
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=-1)
    return kl.mean() * t * t


def make_optimizer(student: Any, lr: float = 1e-4, state: dict | None = None) -> torch.optim.Optimizer:
    """AdamW over the student's trainable parameters (weight decay 0: healing, not regularising),
    loaded from ``state`` (an ``optimizer.state_dict()``) when resuming from a checkpoint."""
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    if state is not None:
        opt.load_state_dict(state)
    return opt


def train_step(
    student: Any, opt: torch.optim.Optimizer, batch_tensors: tuple[torch.Tensor, ...], temperature: float = 1.0
) -> float:
    """One optimisation step on (ids [B,T], values [B,T,k], indices [B,T,k]); returns the loss.
    Works unchanged on a DDP-wrapped student (the forward goes through the wrapper)."""
    ids, values, indices = batch_tensors
    student.train()
    opt.zero_grad(set_to_none=True)
    logits = student(input_ids=ids, use_cache=False).logits
    loss = topk_kd_loss(logits, values, indices, temperature)
    loss.backward()
    opt.step()
    return float(loss.detach())


def schedule(n: int, batch: int, epochs: int, seed: int = 0) -> list[torch.Tensor]:
    """The row indices of every step, in order: each epoch a permutation of the n rows drawn from
    a generator seeded with (seed, epoch), cut into batches (the last one may be short). A pure
    function of its arguments, so a resumed run skips exactly the steps already taken."""
    steps: list[torch.Tensor] = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        steps.extend(order[i : i + batch] for i in range(0, n, batch))
    return steps


def _check_distill_args(ids, values, indices, epochs, batch, lr) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(f"ids: need a non-empty tensor [n, T], got {getattr(ids, 'shape', ids)!r}")
    if values.shape[:2] != ids.shape or indices.shape != values.shape:
        raise ValueError(f"values: shape {tuple(values.shape)} does not match ids {tuple(ids.shape)} + [k]")
    for key, value in (("epochs", epochs), ("batch", batch)):
        if int(value) < 1:
            raise ValueError(f"{key}: must be >= 1, got {value}")
    if lr <= 0:
        raise ValueError(f"lr: must be > 0, got {lr}")


def distill(
    student: Any,
    ids: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    *,
    epochs: int = 1,
    batch: int = 4,
    lr: float = 1e-4,
    temperature: float = 1.0,
    max_steps: int | None = None,
    on_step: Callable[[dict], None] | None = None,
    seed: int = 0,
    start_step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    optimizer_state: dict | None = None,
) -> list[dict]:
    """Heal ``student`` on cached teacher top-k log-probabilities with AdamW on CPU.

    Returns the history [{"step", "tokens", "loss"}] of the steps run here (step counts from 1
    over the whole run, tokens is the cumulative number of positions trained on), and calls
    ``on_step(record)`` after each step (progress, metrics, checkpointing). Deterministic given
    ``seed`` (torch seeded, batch order from ``schedule``). Resuming: pass the ``start_step``
    already done and the optimizer (``optimizer``, or its ``optimizer_state`` dict, e.g. from a
    Ray Train checkpoint); the same schedule is replayed from that step. A caller that wants to
    checkpoint the optimizer passes its own ``optimizer`` (see ``make_optimizer``) and reads
    ``optimizer.state_dict()`` in ``on_step``."""
    _check_distill_args(ids, values, indices, epochs, batch, lr)
    torch.manual_seed(int(seed))
    opt = optimizer if optimizer is not None else make_optimizer(student, lr, optimizer_state)
    steps = schedule(ids.shape[0], int(batch), int(epochs), seed)
    last = len(steps) if max_steps is None else min(len(steps), int(max_steps))
    tokens = sum(len(rows) for rows in steps[:start_step]) * ids.shape[1]
    history = []
    for step in range(int(start_step), last):
        rows = steps[step]
        loss = train_step(student, opt, (ids[rows], values[rows], indices[rows]), temperature)
        tokens += len(rows) * ids.shape[1]
        record = {"step": step + 1, "tokens": tokens, "loss": loss}
        history.append(record)
        if on_step is not None:
            on_step(record)
    student.eval()
    return history
