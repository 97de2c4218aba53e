"""The one training loop, with a pluggable loss and a pluggable validation score: teacher
training, distillation (classifiers, embedding students, mutual and multi-task), fine-tuning after
pruning and QAT all train through ``fit`` (composition, not inheritance).

``fit`` takes input tensor ``x`` and a tuple of per-sample ``targets`` (hard labels, teacher
logits, teacher vectors, ...); ``loss_fn(outputs, *target_batches)`` turns them into a scalar
(``tasks.training.losses``). A ``Score`` says what "better" means on the validation split: top-1
accuracy for classifiers (``accuracy_score``, what a ``(x_val, y_val)`` pair means), the best
``cos_mean`` to a reference model's vectors for embeddings
(``tasks.training.embedding.embedding_score``). Early stopping (``patience``) and the kept epoch
read that score only; the learning-rate schedule (``scheduler``) and the step's device apply to
every kind.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tasks.core.checks import at_least, fraction
from tasks.core.context import StepContext
from tasks.core.options import Optimizer, Scheduler


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: Optimizer = Optimizer.adamw
    momentum: float = 0.9
    scheduler: Scheduler = Scheduler.cosine
    patience: int = 0  # epochs without val improvement before stopping; 0 = never stop early
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        at_least("epochs", self.epochs, 0)  # 0: no training (a fine-tune that is off)
        at_least("batch_size", self.batch_size, 1)
        at_least("lr", self.lr, 0)  # 0 trains nothing: the weights stay as given
        at_least("weight_decay", self.weight_decay, 0)
        fraction("momentum", self.momentum)
        at_least("patience", self.patience, 0)
        at_least("eval_batch_size", self.eval_batch_size, 1)


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    raise ValueError(f"optim.optimizer: unknown value '{cfg.optimizer}' (adamw | sgd)")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, device: str = "cpu") -> torch.Tensor:
    """Logits of ``model`` over ``x`` in eval mode, returned on the CPU."""
    model.eval()
    outs = []
    use_bf16 = device.startswith("cuda")
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            outs.append(model(xb).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, device: str = "cpu") -> float:
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x, batch_size, device).argmax(1) == y).float().mean())


@dataclass(frozen=True)
class Score:
    """What ``fit`` compares epochs on: ``measure(model, device)`` returns the validation metrics,
    ``metric`` names the one that decides (higher is better; NaN: no rows, keep the latest).
    ``from_start``: the starting weights are a candidate too (``best_epoch`` -1)."""

    metric: str
    measure: Callable[[nn.Module, str], dict[str, float]]
    from_start: bool = False


def accuracy_score(x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> Score:
    """Top-1 accuracy on ``(x, y)`` as ``val_acc``: the classifiers' score."""
    return Score("val_acc", lambda model, device: {"val_acc": accuracy(model, x, y, batch_size, device)})


def _scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, rows: int) -> Any:
    """Cosine decay of the learning rate to 0 over all steps (``scheduler: cosine``), or None."""
    if cfg.scheduler != "cosine":
        return None
    total = max(1, cfg.epochs * max(1, math.ceil(rows / cfg.batch_size)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def _epoch(
    model: nn.Module,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, ...],
    perm: torch.Tensor,
    step: Callable[[torch.Tensor], None],
    loss_fn: Callable[..., torch.Tensor],
    cfg: OptimConfig,
    device: str,
    inputs: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """One pass over ``x`` in the order ``perm``; ``step(loss)`` updates; returns the mean loss."""
    model.train()
    total_loss = 0.0
    for i in range(0, len(x), cfg.batch_size):
        idx = perm[i : i + cfg.batch_size]
        xb = inputs(x[idx]).to(device)
        tb = [t[idx].to(device) for t in targets]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = loss_fn(model(xb).float(), *tb)
        step(loss)
        total_loss += float(loss.detach()) * len(idx)
    return total_loss / max(1, len(x))


def _stepper(
    model: nn.Module, opt: torch.optim.Optimizer, sched: Any, after_step: Callable[[nn.Module], None] | None
) -> Callable[[torch.Tensor], None]:
    def step(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if after_step is not None:
            after_step(model)

    return step


def fit(
    model: nn.Module,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, ...],
    *,
    loss_fn: Callable[..., torch.Tensor],
    cfg: OptimConfig,
    ctx: StepContext,
    val: tuple[torch.Tensor, torch.Tensor] | Score,
    extra_params: Sequence[nn.Parameter] = (),
    after_step: Callable[[nn.Module], None] | None = None,
    prefix: str = "",
    inputs: Callable[[torch.Tensor], torch.Tensor] = lambda xb: xb,
) -> dict[str, float]:
    """Train ``model`` in place on ``ctx.device``; keep the weights of the best validation score.

    ``val`` is a ``Score`` or ``(x_val, y_val)`` (``accuracy_score``). ``after_step`` runs after
    every optimizer step (e.g. to re-apply pruning masks); ``inputs`` maps a batch of ``x`` before
    the forward pass (e.g. cutting token padding). Logs ``{prefix}train_loss`` and
    ``{prefix}epoch_<metric>`` per epoch, then once the kept weights' metrics and
    ``{prefix}best_epoch``: a step's ``val_acc`` / ``cos_mean`` (what selection rules read, on the
    computed and the cached path alike) is that of the model it returns, never the last epoch's.
    Returns them (unprefixed). The model is left on the CPU in eval mode.
    """
    score = val if isinstance(val, Score) else accuracy_score(val[0], val[1], cfg.eval_batch_size)
    device = ctx.device
    model.to(device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    gen = ctx.seed_everything()
    opt = make_optimizer(list(model.parameters()) + list(extra_params), cfg)
    step = _stepper(model, opt, _scheduler(opt, cfg, len(x)), after_step)
    best: dict[str, float] = {score.metric: -1.0, "best_epoch": -1.0}  # below any accuracy or cosine
    if score.from_start:
        best = {**score.measure(model, device), "best_epoch": -1.0}
    best_state, stale = copy.deepcopy(model.state_dict()), 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        loss = _epoch(model, x, targets, perm, step, loss_fn, cfg, device, inputs)
        got = score.measure(model, device)
        value = got[score.metric]
        ctx.log_metrics({f"{prefix}train_loss": loss, f"{prefix}epoch_{score.metric}": value}, step=epoch)
        ctx.progress(f"epoch {epoch + 1}/{cfg.epochs} {score.metric}={value:.4f}")
        if value > best[score.metric] or math.isnan(value):  # no val rows: keep the latest weights
            best, best_state, stale = {**got, "best_epoch": float(epoch)}, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    ctx.log_metrics({f"{prefix}{k}": v for k, v in best.items()})
    return best
