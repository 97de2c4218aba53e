"""The ``prune`` step: make a trained model sparse (unstructured) or really smaller (structured).

Methods (``cfg.method``):

* ``magnitude`` -- unstructured L1 magnitude pruning of conv/linear weights (``torch.nn.utils.prune``),
  global or per layer; masks are folded into the weights and re-applied after every fine-tune
  step, so the zeros stay zero. Dense kernels do not run faster: this buys size, not speed.
* ``channel`` -- structured channel pruning with Torch-Pruning's ``DependencyGraph`` /
  ``MetaPruner`` (Fang et al., "DepGraph", CVPR 2023): coupled layers are pruned together and
  the model really shrinks. Any architecture the dependency graph traces works (residual
  additions, BatchNorm, LayerNorm, grouped/depthwise convs; attention blocks of a known layout
  lose whole heads). The pruned structure is stored as JSON in the arch config (``_pruned_``),
  so the result reloads as ``build_model(arch)`` + strict safetensors weights (never a pickle).
* ``gradual`` -- Automated Gradual Pruning (Zhu & Gupta 2017, "To prune, or not to prune"):
  over ``n = cfg.steps`` prune/fine-tune rounds the target sparsity follows the cubic schedule
  ``s_t = s_f + (s_i - s_f) * (1 - t/n)^3``, pruning fast while redundancy is high and slowly
  near the end; the base pruner is ``cfg.gradual_base`` (magnitude | channel).

Fine-tuning reuses the one loop, ``tasks.training.loop.fit``, with cross-entropy, or Hinton knowledge
distillation (``tasks.training.losses.kd_loss``) from cached teacher logits when ``logits`` is given
and ``cfg.kd_alpha > 0``. ``throughput`` is ``tasks.runtime.timing.deployed_speed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from tasks.compression.channels import IMPORTANCES, channel_pruner, channel_step, pruned_arch
from tasks.compression.sparsity import (
    agp_schedule,
    magnitude_prune,
    mask_applier,
    weight_sparsity,
)
from tasks.core.checks import at_least, fraction, interval, positive
from tasks.core.context import StepContext
from tasks.core.options import GradualBase, Importance, PruneMethod, PruneScope
from tasks.core.types import Dataset, Logits, ModelArtifact
from tasks.evaluation import stats
from tasks.models.build import count_nonzero, count_params, flops_one_sample, load_model, make_artifact
from tasks.runtime.timing import deployed_speed
from tasks.training.loop import OptimConfig, accuracy, fit
from tasks.training.losses import ce_loss, kd_loss
from tasks.training.transfer import training_rows, use_pool

MEASURES = True  # its trials' throughput (selection picks on it): the cache key holds the hardware

METHODS = ("magnitude", "channel", "gradual")
SCOPES = ("global", "layer")


@dataclass
class PruneConfig:
    method: PruneMethod = PruneMethod.channel
    amount: float = 0.5  # final sparsity (magnitude) or channel pruning ratio (channel)
    scope: PruneScope = PruneScope.layer  # one threshold/ranking for all layers, or per layer
    importance: Importance = Importance.l2  # channel importance
    max_layer_amount: float = 0.9  # channel + global scope: cap per layer (avoids layer collapse)
    round_to: int = 0  # channel: keep widths multiples of this (0 = any width)
    ignore: list[str] = field(default_factory=list)  # channel: module names never pruned (+ the output layer)
    gradual_base: GradualBase = GradualBase.magnitude  # gradual: the pruner of each round
    steps: int = 4  # gradual: number of prune/fine-tune rounds n
    initial_amount: float = 0.0  # gradual: s_i
    step_epochs: int = 1  # gradual: fine-tune epochs between rounds
    finetune: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=3, lr=1e-3))
    kd_alpha: float = 0.0  # > 0 and logits given: Hinton KD fine-tune
    kd_temperature: float = 4.0
    use_transfer: bool = False  # KD: also fit the teacher logits on data.x_transfer
    throughput_batch: int = 256
    throughput_iters: int = 20

    def __post_init__(self) -> None:
        fraction("amount", self.amount, open_high=True)
        fraction("max_layer_amount", self.max_layer_amount, open_low=True)
        at_least("round_to", self.round_to, 0)
        at_least("steps", self.steps, 1)
        interval("initial_amount", self.initial_amount, 0, self.amount)
        at_least("step_epochs", self.step_epochs, 0)
        fraction("kd_alpha", self.kd_alpha)
        positive("kd_temperature", self.kd_temperature)
        at_least("throughput_batch", self.throughput_batch, 1)
        at_least("throughput_iters", self.throughput_iters, 1)


def model_metrics(model: nn.Module, data: Dataset, cfg: PruneConfig) -> dict[str, float]:
    """val_acc, params, nonzero_params, sparsity (conv/linear weights), flops, size_bytes and throughput.

    ``flops`` is the benchmark's counter (``torch.utils.flop_counter``, one sample) and
    ``throughput`` the benchmark's measure on the deployed runtime: samples/s at the median
    latency of a batch of ``cfg.throughput_batch`` on ONNX Runtime, one thread. So the sweep
    selects on the number the benchmark later reports, not on torch-eager speed.
    """
    model = model.cpu().eval()
    speed, onnx_bytes = deployed_speed(model, data.x_train, cfg.throughput_batch, threads=1, iters=cfg.throughput_iters)
    acc = accuracy(model, data.x_val, data.y_val)
    return {
        "val_acc": acc,
        **stats.ci_metrics("val_acc", stats.proportion_ci(acc, len(data.y_val))),  # for select.confidence
        "params": float(count_params(model)),
        "nonzero_params": float(count_nonzero(model)),
        "sparsity": weight_sparsity(model),
        "flops": float(flops_one_sample(model, data.x_train)),
        "size_bytes": float(len(onnx_bytes)),
        "throughput": speed["throughput"],
    }


def fine_tune(
    model: nn.Module,
    data: Dataset,
    logits: Logits | None,
    cfg: PruneConfig,
    optim: OptimConfig,
    ctx: StepContext,
    after_step=None,
    prefix: str = "ft_",
) -> None:
    """Fine-tune in place: CE on labels, or Hinton KD on cached teacher logits (+ transfer pool)."""
    if optim.epochs <= 0:
        return
    val = (data.x_val, data.y_val)
    if logits is None or cfg.kd_alpha <= 0:
        fit(
            model,
            data.x_train,
            (data.y_train,),
            loss_fn=ce_loss,
            cfg=optim,
            ctx=ctx,
            val=val,
            after_step=after_step,
            prefix=prefix,
        )
        return
    x, y, t = training_rows(data, logits, cfg.use_transfer)  # the same rows and loss as `distill`

    def loss(s, yb, tb):
        return kd_loss(s, tb, yb, alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)

    fit(model, x, (y, t), loss_fn=loss, cfg=optim, ctx=ctx, val=val, after_step=after_step, prefix=prefix)


def _validate(model: ModelArtifact, data: Dataset, logits: Logits | None, cfg: PruneConfig) -> None:
    if cfg.method not in METHODS:
        raise ValueError(f"prune.method: unknown value '{cfg.method}' ({' | '.join(METHODS)})")
    if cfg.scope not in SCOPES:
        raise ValueError(f"prune.scope: unknown value '{cfg.scope}' ({' | '.join(SCOPES)})")
    if cfg.gradual_base not in ("magnitude", "channel"):
        raise ValueError(f"prune.gradual_base: unknown value '{cfg.gradual_base}' (magnitude | channel)")
    if cfg.importance not in IMPORTANCES:
        raise ValueError(f"prune.importance: unknown value '{cfg.importance}' ({' | '.join(IMPORTANCES)})")
    if model.onnx is not None and not model.state_dict:
        raise ValueError(f"prune: model '{model.name}' has no torch weights (kind {model.kind})")
    if logits is not None and cfg.kd_alpha > 0:
        if len(logits.train) != len(data.x_train):
            raise ValueError(f"prune: logits.train has {len(logits.train)} rows, data.x_train {len(data.x_train)}")
        if (
            cfg.use_transfer
            and data.x_transfer is not None
            and (logits.transfer is None or len(logits.transfer) != len(data.x_transfer))
        ):
            got = None if logits.transfer is None else len(logits.transfer)
            raise ValueError(
                f"prune.use_transfer: logits.transfer has {got} rows, data.x_transfer {len(data.x_transfer)}"
            )


def _prune_rounds(net: nn.Module, data: Dataset, logits: Logits | None, cfg: PruneConfig, ctx: StepContext):
    """Prune ``net`` in place to ``cfg.amount``; returns the masks to keep (unstructured) or None."""
    base = cfg.gradual_base if cfg.method == "gradual" else cfg.method
    n = cfg.steps if cfg.method == "gradual" else 1
    targets = agp_schedule(cfg.amount, n, cfg.initial_amount if n > 1 else 0.0)
    between = replace(cfg.finetune, epochs=cfg.step_epochs)
    example = data.x_train[:2]
    pruner = channel_pruner(net, example, cfg, cfg.amount, n, targets[0]) if base == "channel" else None
    masks = None
    for t in range(1, n + 1):
        if pruner is not None:
            channel_step(pruner, net, example)
        else:
            masks = magnitude_prune(net, targets[t], cfg.scope)
        ctx.log_metrics(
            {
                "target_amount": targets[t],
                "round_params": float(count_params(net)),
                "round_sparsity": weight_sparsity(net),
            },
            step=t,
        )
        if t < n:
            fine_tune(net, data, logits, cfg, between, ctx, mask_applier(masks) if masks else None, prefix=f"round{t}_")
    return masks


def run(
    model: ModelArtifact, data: Dataset, logits: Logits | None = None, *, cfg: PruneConfig, ctx: StepContext
) -> ModelArtifact:
    """Prune ``model`` (``cfg.method``), fine-tune it, measure it; returns a ``pruned`` artifact."""
    _validate(model, data, logits, cfg)
    if logits is not None and cfg.kd_alpha > 0:  # no pool in the data: KD on the labeled rows only
        cfg = replace(cfg, use_transfer=use_pool(data, cfg.use_transfer, ctx))
    ctx.seed_everything()
    net = load_model(model, ctx.trusted_targets)
    base = cfg.gradual_base if cfg.method == "gradual" else cfg.method
    before = model_metrics(net, data, cfg)
    ctx.log_metrics({f"base_{k}": v for k, v in before.items()})
    masks = _prune_rounds(net, data, logits, cfg, ctx)
    ctx.log_metrics({"val_acc_pruned": accuracy(net, data.x_val, data.y_val)})
    fine_tune(net, data, logits, cfg, cfg.finetune, ctx, mask_applier(masks) if masks else None)
    arch = pruned_arch(net, model.arch, ctx.trusted_targets) if base == "channel" else model.arch
    metrics = model_metrics(net, data, cfg)
    metrics["param_ratio"] = metrics["params"] / before["params"]
    metrics["speedup"] = metrics["throughput"] / before["throughput"]
    ctx.log_metrics(metrics)
    return make_artifact(net, arch, name=ctx.step, kind="pruned", parent=model.name, metrics=metrics)
