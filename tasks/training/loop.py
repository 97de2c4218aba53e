"""One training loop with a pluggable loss, shared by teacher training, distillation,
fine-tuning after pruning and QAT (composition, not inheritance).

``fit`` takes input tensor ``x`` and a tuple of per-sample ``targets`` (hard labels, teacher
logits, ...); ``loss_fn(logits, *target_batches)`` turns them into a scalar. Early stopping and
model selection read the validation split only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, ...],
    *,
    loss_fn: Callable[..., torch.Tensor],
    cfg: OptimConfig,
    ctx: StepContext,
    val: tuple[torch.Tensor, torch.Tensor],
    extra_params: Sequence[nn.Parameter] = (),
    after_step: Callable[[nn.Module], None] | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """Train ``model`` in place; keep the weights of the best val accuracy epoch.

    ``after_step`` runs after every optimizer step (e.g. to re-apply pruning masks).
    Logs ``{prefix}train_loss`` and ``{prefix}epoch_val_acc`` per epoch, then once
    ``{prefix}val_acc`` and ``{prefix}best_epoch``: the val accuracy of the weights the model is
    left with, so a step's ``val_acc`` (what selection rules read, on the computed and the
    cached path alike) is that of the model it returns, never the last epoch's. Returns them.
    """
    device = ctx.device
    model.to(device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    gen = ctx.seed_everything()
    opt = make_optimizer(list(model.parameters()) + list(extra_params), cfg)
    steps_per_epoch = max(1, math.ceil(len(x) / cfg.batch_size))
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = (
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        if cfg.scheduler == "cosine"
        else None
    )
    best = {"val_acc": -1.0, "epoch": -1}
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total_loss = 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = x[idx].to(device)
            tb = [t[idx].to(device) for t in targets]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                loss = loss_fn(model(xb).float(), *tb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if after_step is not None:
                after_step(model)
            total_loss += float(loss.detach()) * len(idx)
        val_acc = accuracy(model, val[0], val[1], cfg.eval_batch_size, device)
        ctx.log_metrics({f"{prefix}train_loss": total_loss / len(x), f"{prefix}epoch_val_acc": val_acc}, step=epoch)
        ctx.progress(f"epoch {epoch + 1}/{cfg.epochs} val_acc={val_acc:.4f}")
        if val_acc > best["val_acc"] or math.isnan(val_acc):  # no val rows: keep the latest weights
            best = {"val_acc": val_acc, "epoch": epoch}
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    result = {"val_acc": best["val_acc"], "best_epoch": float(best["epoch"])}
    ctx.log_metrics({f"{prefix}{k}": v for k, v in result.items()})
    return result
