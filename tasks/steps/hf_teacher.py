"""The ``hf_teacher`` step: the user's own fine-tuned Hugging Face classifier folder as the teacher
(needs the nlp extra).

The folder is read offline and checked (``tasks.models.hf_load.load_classifier``: safetensors or a
``weights_only`` pickle, no custom code); the classifier is used as it is (not trained) and stored as
an ``HFSequenceClassifier`` (``tasks.models.hf_model``): a JSON arch (the folder's config, its
``id2label`` included, and input names) + the weights, so later steps rebuild it without the folder.
Loading the weights strictly into the rebuilt model here proves the artifact reloads.

The data must come from the same folder (``hf_text_data`` with ``model=<the folder>``): the same
input names in the same order, labels numbered by its ``id2label``, token ids inside its vocabulary.
A folder without a classification head (an encoder) and labeled data: the encoder gets a new head
for the data's label names (``id2label``) and both are fine-tuned with cross-entropy (``fine_tune``:
epochs, lr, ...; kept at the best validation accuracy), as ``AutoModelForSequenceClassification``
fine-tuning does; a classifier folder is never trained. With unlabeled data (``hf_text_data
label_column=""``) the folder's encoder, pooling and normalization become an ``HFEmbedder`` teacher
(``experiment=hf_embed``).
Pipelines that load the artifact later list the class in ``trusted_models``
(``tasks.models.hf_model.HFSequenceClassifier``), as ``experiment=textcls`` does for ``TextClassifier``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.checks import BadValue, at_least, require
from tasks.core.context import StepContext
from tasks.core.options import ModelKind, Scheduler, TaskKind
from tasks.core.types import Dataset, ModelArtifact
from tasks.models.build import count_params, make_artifact
from tasks.models.hf_folder import ModelFolderError, inspect_folder, position_limit
from tasks.models.hf_load import load_classifier, load_encoder, load_for_fine_tuning
from tasks.models.hf_model import HFEmbedder, HFSequenceClassifier, hf_classifier_arch, hf_embedder_arch
from tasks.training.embedding import trim_padding
from tasks.training.loop import OptimConfig, accuracy, fit
from tasks.training.losses import ce_loss


def _fine_tune_defaults() -> OptimConfig:
    """The usual recipe for fine-tuning a BERT-size encoder on a classification set."""
    return OptimConfig(
        epochs=3, batch_size=32, lr=5e-5, weight_decay=0.01, scheduler=Scheduler.cosine, eval_batch_size=64
    )


@dataclass
class HfTeacherConfig:
    path: str = ""  # the model folder (save_pretrained output of a classifier, or of an encoder to fine-tune); required
    batch_size: int = 64  # rows per forward pass for the validation accuracy
    fine_tune: OptimConfig = field(default_factory=_fine_tune_defaults)  # only for a folder without a head

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)


def _check_data(data: Dataset, folder: Path, input_names: list[str], num_labels: int, config) -> None:
    """The data was made for this folder: its inputs, its labels, its vocabulary and positions."""
    if list(data.input_names) != list(input_names):
        raise ValueError(
            f"hf_teacher: data '{data.name}' stacks inputs {list(data.input_names)}, {folder} takes {input_names}; "
            f"make the data with hf_text_data model={folder}"
        )
    if data.task == TaskKind.classification and data.num_classes != num_labels:
        raise ValueError(
            f"hf_teacher: data '{data.name}' has {data.num_classes} classes, {folder} has {num_labels} labels; "
            f"make the data with hf_text_data model={folder}"
        )
    ids = data.x_train[:, input_names.index("input_ids")]
    if len(ids) and int(ids.max()) >= int(config.vocab_size):
        raise ValueError(
            f"hf_teacher: data '{data.name}' has token id {int(ids.max())}, {folder}'s vocabulary has "
            f"{config.vocab_size}; make the data with hf_text_data model={folder}"
        )
    if data.x_train.shape[-1] > position_limit(config):
        raise ValueError(
            f"hf_teacher: data '{data.name}' rows are {data.x_train.shape[-1]} tokens, {folder} takes at most "
            f"{position_limit(config)}"
        )


def run(data: Dataset, *, cfg: HfTeacherConfig, ctx: StepContext) -> ModelArtifact:
    """The folder's classifier as a ``teacher`` artifact, with its validation accuracy on ``data``."""
    require("path", bool(cfg.path), "a Hugging Face model folder is required (a fine-tuned classifier)")
    folder = Path(cfg.path)
    info = inspect_folder(folder)
    if data.task == TaskKind.embedding:
        return _embedder(data, folder, info, ctx)
    if info.task != "classification":
        return _fine_tuned(data, folder, info, cfg, ctx)
    loaded, _ = load_classifier(folder)
    _check_data(data, folder, info.input_names, info.num_labels, loaded.config)
    arch = hf_classifier_arch(loaded.config.to_dict(), info.input_names)
    model = HFSequenceClassifier(arch["config"], arch["input_names"])
    _load_strict(model.model, loaded, folder)
    del loaded
    model.eval()
    metrics = {
        "val_acc": accuracy(model, data.x_val, data.y_val, cfg.batch_size),
        "params": float(count_params(model)),
    }
    ctx.log_metrics(metrics)
    return make_artifact(model, arch, name=ctx.step, kind=ModelKind.teacher, metrics=metrics)


def _fine_tuned(data: Dataset, folder: Path, info, cfg: HfTeacherConfig, ctx: StepContext) -> ModelArtifact:
    """An encoder folder and labeled data: a new head for the data's labels, fine-tuned with the encoder."""
    if cfg.fine_tune.epochs < 1:
        raise BadValue("fine_tune.epochs", f"0 leaves the new classification head of {folder} untrained (>= 1)")
    names = data.class_names or [str(i) for i in range(data.num_classes)]
    ctx.seed_everything()  # the new head's initial weights
    loaded = load_for_fine_tuning(folder, dict(enumerate(names)))
    _check_data(data, folder, info.input_names, data.num_classes, loaded.config)
    arch = hf_classifier_arch(loaded.config.to_dict(), info.input_names)
    model = HFSequenceClassifier(arch["config"], arch["input_names"])
    _load_strict(model.model, loaded, folder)
    del loaded
    ctx.note(
        f"hf_teacher: {folder} has no classification head: fine-tuning it with a new head for "
        f"{len(names)} labels ({cfg.fine_tune.epochs} epochs on {len(data.x_train)} rows)"
    )
    val = (data.x_val, data.y_val)
    best = fit(
        model, data.x_train, (data.y_train,), loss_fn=ce_loss, cfg=cfg.fine_tune, ctx=ctx, val=val, inputs=trim_padding
    )
    metrics = {"val_acc": best["val_acc"], "params": float(count_params(model))}
    ctx.log_metrics({"params": metrics["params"]})
    return make_artifact(model, arch, name=ctx.step, kind=ModelKind.teacher, metrics=metrics)


def _embedder(data: Dataset, folder: Path, info, ctx: StepContext) -> ModelArtifact:
    """Unlabeled data: the folder's encoder with its pooling (sentence-transformers config, else mean)
    and normalization as an ``HFEmbedder`` teacher (a classifier folder's encoder too, head dropped)."""
    loaded, _, pooling = load_encoder(folder)
    _check_data(data, folder, info.input_names, 0, loaded.config)
    arch = hf_embedder_arch(loaded.config.to_dict(), info.input_names, pooling, info.normalize)
    model = HFEmbedder(arch["config"], arch["input_names"], pooling, info.normalize)
    _load_strict(model.model, loaded, folder)
    del loaded
    metrics = {"params": float(count_params(model.eval()))}
    ctx.log_metrics(metrics)
    normalized = ", normalized" if info.normalize else ""
    ctx.note(f"hf_teacher: {folder} as an embedding model ({pooling} pooling{normalized})")
    return make_artifact(model, arch, name=ctx.step, kind=ModelKind.teacher, metrics=metrics)


def _load_strict(rebuilt, loaded, folder: Path) -> None:
    """The folder's weights into the model rebuilt from its config, every tensor or one line: the
    proof that the stored artifact (config + weights) reloads without the folder."""
    try:
        rebuilt.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as e:
        why = str(e).strip().splitlines()[0]
        raise ModelFolderError(f"{folder}: the weights do not fit the model rebuilt from its config ({why})") from None
