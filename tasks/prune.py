"""Task ``prune``: make a trained model sparse (unstructured) or really smaller (structured).

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

Fine-tuning reuses ``tasks.train.fit`` with cross-entropy, or Hinton knowledge distillation
from cached teacher logits when ``logits`` is given and ``cfg.kd_alpha > 0``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch_pruning as tp
from torch import nn

from tasks.benchmark import flops_one_sample
from tasks.context import StepContext
from tasks.distill import kd_loss, training_rows, use_pool
from tasks.models import PRUNED, build_model, count_nonzero, count_params, load_model, make_artifact, structure_of
from tasks.onnx_utils import deployed_speed
from tasks.options import GradualBase, Importance, PruneMethod, PruneScope
from tasks.sparsity import (
    agp_schedule,
    attention_modules,
    magnitude_prune,
    mask_applier,
    output_layers,
    update_attention,
    weight_sparsity,
)
from tasks.train import OptimConfig, accuracy, ce_loss, fit
from tasks.types import Dataset, Logits, ModelArtifact

METHODS = ("magnitude", "channel", "gradual")
SCOPES = ("global", "layer")
IMPORTANCES = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    "random": lambda: tp.importance.RandomImportance(),
}


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


def pruned_arch(model: nn.Module, arch: dict, trusted: Iterable[str] = ()) -> dict:
    """The arch config of a channel-pruned ``model``: the original constructor config plus the
    pruned structure (``_pruned_``, see ``tasks.models.structure_of``), verified to rebuild the
    exact tensor shapes. Works for any class: no per-architecture width readers."""
    base_arch = {k: v for k, v in copy.deepcopy(arch).items() if k != PRUNED}
    structure = structure_of(model, build_model(base_arch, trusted))
    new = {**base_arch, PRUNED: structure} if structure["shapes"] or structure["attributes"] else base_arch
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in build_model(new, trusted).state_dict().items()}
    if want != got:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise ValueError(
            f"prune: the stored structure of '{arch.get('_target_')}' does not rebuild it (mismatched: {bad[:4]})"
        )
    return new


def ignored_layers(model: nn.Module, example: torch.Tensor, names: Sequence[str]) -> list[nn.Module]:
    """The output layer plus the modules ``prune.ignore`` names (each must exist)."""
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            raise ValueError(f"prune.ignore: the model has no module '{n}' (e.g. {sorted(modules)[1:6]})")
    return output_layers(model, example) + [modules[n] for n in names]


def channel_pruner(
    model: nn.Module, example: torch.Tensor, cfg: PruneConfig, amount: float, steps: int = 1, initial: float = 0.0
) -> tp.pruner.MetaPruner:
    """A Torch-Pruning ``MetaPruner`` reaching channel ratio ``amount`` in ``steps`` (AGP) rounds.

    ``scope=global`` ranks channels of all layers together (capped at ``max_layer_amount`` per
    layer); ``layer`` removes the same fraction from every layer. The output layer keeps its
    outputs; its inputs shrink with the layer before it (the dependency graph couples them).
    Attention blocks of a known layout lose whole heads (the same ratio) and keep the head size.
    """
    heads = {p: getattr(m, attr) for m, attr, projs, _ in attention_modules(model) for p in projs}
    return tp.pruner.MetaPruner(
        model,
        example,
        importance=IMPORTANCES[cfg.importance](),
        pruning_ratio=amount,
        global_pruning=cfg.scope == "global",
        max_pruning_ratio=cfg.max_layer_amount if cfg.scope == "global" else 1.0,
        iterative_steps=steps,
        iterative_pruning_ratio_scheduler=lambda r, n: agp_schedule(r, n, initial),
        ignored_layers=ignored_layers(model, example, cfg.ignore),
        round_to=cfg.round_to or None,
        num_heads=heads,
        prune_num_heads=bool(heads),
        prune_head_dims=not heads,
        head_pruning_ratio=amount if heads else 0.0,
    )


def channel_step(pruner: tp.pruner.MetaPruner, model: nn.Module, example: torch.Tensor) -> None:
    """One pruning round, then the attention attributes, then a check that the model still runs
    and gives outputs of the same shape (a layout Torch-Pruning cannot see fails here, by name)."""
    with torch.no_grad():
        before = model.eval()(example).shape
    pruner.step()
    update_attention(model, pruner.num_heads)
    try:
        with torch.no_grad():
            after = model(example).shape
    except RuntimeError as e:
        raise ValueError(
            f"prune: the channel-pruned {type(model).__name__} no longer runs ({str(e).splitlines()[0]}); "
            f"add the failing module to prune.ignore or use method=magnitude"
        ) from None
    if after != before:
        raise ValueError(f"prune: channel pruning changed the output shape {list(before)} -> {list(after)}")


def model_metrics(model: nn.Module, data: Dataset, cfg: PruneConfig) -> dict[str, float]:
    """val_acc, params, nonzero_params, sparsity (conv/linear weights), flops, size_bytes and throughput.

    ``flops`` is the benchmark's counter (``torch.utils.flop_counter``, one sample) and
    ``throughput`` the benchmark's measure on the deployed runtime: samples/s at the median
    latency of a batch of ``cfg.throughput_batch`` on ONNX Runtime, one thread. So the sweep
    selects on the number the benchmark later reports, not on torch-eager speed.
    """
    model = model.cpu().eval()
    speed, onnx_bytes = deployed_speed(model, data.x_train, cfg.throughput_batch, threads=1, iters=cfg.throughput_iters)
    return {
        "val_acc": accuracy(model, data.x_val, data.y_val),
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
    if not 0.0 <= cfg.amount < 1.0:
        raise ValueError(f"prune.amount: {cfg.amount} is not in [0, 1)")
    if cfg.steps < 1:
        raise ValueError(f"prune.steps: {cfg.steps} must be >= 1")
    if not 0.0 <= cfg.initial_amount <= cfg.amount:
        raise ValueError(f"prune.initial_amount: {cfg.initial_amount} is not in [0, amount={cfg.amount}]")
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
