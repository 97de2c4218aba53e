"""Registry versions and logged models that say what they are.

A step's ``Publication`` (``tasks.core.types``) names the model it registers (``Registration``,
whose ``source`` is the model's own name, a benchmark row) and every model it measured
(``ModelCard``: figures and what it is). The recorder (``pipelines.store.recorder``) registers
the ONNX and calls these functions, which add:

- to the **registered version**: tags with its figures and what they were measured on (the
  card: ``test_acc``, ``size_bytes``, ``throughput_b256``, ``latency_ms_p50_b1``, ...,
  ``hardware``, ``runtime``, ``threads``), its ``recipe`` (``recipe()``), the ``dataset`` and
  ``dataset_digest`` it was made from (``pipelines.store.lineage``), the ``git_commit``, and
  the publication's description (the report's summary) as the version's description;
- its **signature**: the ONNX graph's input and output names, dtypes and shapes
  (``onnx_signature``), logged with the model;
- one MLflow **logged model per card**, with the card's params, the tag ``slimray.candidate``
  and its figures as metrics ``benchmark.<figure>``, so that the experiment's models view
  compares every candidate. A model metric is logged through a run in MLflow: the card's
  metrics go through the step run that produced the model (a candidate's name is its step
  run's name), where ``benchmark.*`` cannot clash with the step's own metrics; a model with no
  step run (the torch reference row) goes through the publishing step's run. The registered
  model's card is put on its own (ONNX) logged model. The model ids are remembered on the
  publishing run (``slimray.logged_models``), so a cached rerun reuses them;
- its **signed file list** (``pipelines.store.modelfiles.FILES_TAG``, on the registered version
  and on its logged model): the sha256 of every file of the logged model, signed with the cache
  key for that logged model's id, which a cached registration and ``slimray serve`` check.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipelines.config.spec import PipelineSpec, task_signature

if TYPE_CHECKING:
    from pipelines.run.state import StepState

from tasks.core.types import ModelArtifact
from tasks.runtime.openvino import candidate_of

ModelCard = dict  # {"name", "metrics", "params"}: a measured model (tasks.reporting.cards)

MODELS_TAG = "slimray.logged_models"  # JSON {card name: model id} on the publishing step's run
CANDIDATE_TAG = "slimray.candidate"
MAX_DESCRIPTION = 5000  # MLflow's model version description column
ARROW = " → "


def logged_name(name: str) -> str:
    """A logged model's name: MLflow forbids ``/ : . % " '`` in it."""
    return re.sub(r"[/:.%\"']", "_", name) or "model"


# ---- recipe --------------------------------------------------------------------------------
def _trial_of(st: StepState, name: str):
    """The trial whose run name is ``name``, else the step's selected trial."""
    for t in st.trials:
        if (f"{st.spec.name}[{t.label}]" if t.label else st.spec.name) == name:
            return t
    return st.trials[st.selected if st.selected is not None else 0]


def _entry(st: StepState, trial) -> str:
    """``step[<swept values>,method=<m>]``: the values the sweep chose, and the step's method."""
    parts = [trial.label] if trial.label else []
    method = trial.params.get("method")
    if method is not None and "method=" not in trial.label:
        parts.append(f"method={method}")
    return f"{st.spec.name}[{','.join(parts)}]" if parts else st.spec.name


def _model_input(spec: PipelineSpec, step: str) -> str | None:
    """The step whose model this step transforms: its ``model`` input, when that is one model."""
    refs = spec.steps[step].inputs.get("model", [])
    inputs = task_signature(spec.steps[step].task)[0]
    if len(refs) == 1 and not refs[0].all_trials and inputs.get("model") is ModelArtifact:
        return refs[0].step
    return None


def recipe(spec: PipelineSpec, states: dict[str, StepState], model: str) -> str:
    """The chain of steps that made the model named ``model`` (a step's run name), oldest first:
    e.g. ``student_kd[alpha=0.5,temperature=2.0,method=hinton] → prune[amount=0.5,method=channel]
    → export → quantize[method=static_int8]``. A step transforms the model of its ``model``
    input; the chain starts at the step that made a model from something else (training,
    distillation, loading). ``model`` itself when it names no step of the pipeline. A row of
    another runtime (``prune[amount=0.5]@openvino``) was made by its candidate's chain."""
    model = candidate_of(model)
    step: str | None = model.split("[", 1)[0]
    if step not in spec.steps or step not in states:
        return model
    chain, name, seen = [], model, set()
    while step is not None and step not in seen:
        seen.add(step)
        chain.append(_entry(states[step], _trial_of(states[step], name)))
        step, name = _model_input(spec, step), ""
    return ARROW.join(reversed(chain))


def model_runs(states: dict[str, StepState]) -> dict[str, str]:
    """Run name -> the run holding that trial's output (the computing run of a cache hit)."""
    out = {}
    for st in states.values():
        for t in st.trials:
            run_id = t.hit.info.run_id if t.hit is not None else t.meta.run_id if t.meta is not None else None
            if run_id:
                out[f"{st.spec.name}[{t.label}]" if t.label else st.spec.name] = run_id
    return out


# ---- signature -----------------------------------------------------------------------------
def onnx_signature(model):
    """The ``ModelSignature`` of an ONNX model: each graph input and output as a tensor spec
    (name, numpy dtype, shape with -1 for a symbolic dimension such as the batch)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec
    from onnx import helper

    weights = {init.name for init in model.graph.initializer}

    def schema(values) -> Schema:
        specs: list[ColSpec | TensorSpec] = []
        for v in values:
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            specs.append(TensorSpec(np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims, v.name))
        return Schema(specs)

    inputs = [v for v in model.graph.input if v.name not in weights]
    return ModelSignature(inputs=schema(inputs), outputs=schema(model.graph.output))


# ---- version -------------------------------------------------------------------------------
def _figure(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def version_tags(
    card: ModelCard | None, model: str, recipe_text: str, datasets: list[tuple[str, str]], commit: str
) -> dict[str, str]:
    """The tags of a registered version (see the module docstring); ``datasets``: the (name,
    digest) of each dataset the model was made from, in the same order in both tags. These win
    over the card's params of the same name (its ``dataset`` is what the figures were measured on,
    kept on the logged model's card)."""
    tags: dict[str, str] = {}
    if card is not None:
        tags.update({k: _figure(v) for k, v in card["metrics"].items()})
        tags.update({k: v for k, v in card["params"].items() if v != ""})
    tags |= {"model": model, "recipe": recipe_text, "git_commit": commit}
    if datasets:
        tags["dataset"] = ",".join(name for name, _ in datasets)
        tags["dataset_digest"] = ",".join(digest for _, digest in datasets)
    return {k: v[:5000] for k, v in tags.items()}


def describe_version(client: MlflowClient, name: str, version: str, tags: dict[str, str], description: str) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if description:
        text = description if len(description) <= MAX_DESCRIPTION else description[: MAX_DESCRIPTION - 40] + "\n\n…"
        client.update_model_version(name, version, description=text)


# ---- logged models -------------------------------------------------------------------------
def model_id_of(version) -> str | None:
    """The logged model a registry version was made from (``models:/<model id>``)."""
    source = str(version.source or "")
    return version.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)


def _remembered(client: MlflowClient, run_id: str | None) -> dict[str, str]:
    if not run_id:
        return {}
    try:
        return dict(json.loads(client.get_run(run_id).data.tags.get(MODELS_TAG, "{}")))
    except ValueError:
        return {}


def _exists(client: MlflowClient, model_id: str) -> bool:
    try:
        return client.get_logged_model(model_id).model_id == model_id
    except Exception:  # noqa: BLE001 - deleted or unreadable: log it again
        return False


def describe_model(client: MlflowClient, model_id: str, card: ModelCard, run_id: str) -> None:
    """A card on a logged model: its params, the candidate tag, its figures as ``benchmark.*``
    metrics (logged through ``run_id``, see the module docstring)."""
    if card["params"]:
        client.log_model_params(model_id, {k: v or "-" for k, v in card["params"].items()})
    client.set_logged_model_tags(model_id, {CANDIDATE_TAG: card["name"]})
    ts = int(time.time() * 1000)
    metrics = [Metric(f"benchmark.{k}", float(v), ts, 0, model_id=model_id) for k, v in card["metrics"].items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics, synchronous=True)


def log_cards(
    client: MlflowClient,
    experiment_id: str,
    cards: list[ModelCard],
    runs: dict[str, str],
    publisher: str | None,
    fallback_run: str,
    registered: dict[str, str | None],
) -> dict[str, str]:
    """One logged model per card (card name -> model id); ``registered`` maps the name of a model
    just registered to its own logged model, which gets its card instead of a new model. Models
    the publishing run remembers are reused as they are."""
    known = _remembered(client, publisher)
    ids: dict[str, str] = {}
    for card in cards:
        if card["name"] in known and _exists(client, known[card["name"]]):
            ids[card["name"]] = known[card["name"]]
            continue
        run_id = runs.get(card["name"]) or publisher or fallback_run
        model_id = registered.get(card["name"]) or None
        if model_id is None:
            model_id = client.create_logged_model(experiment_id, logged_name(card["name"]), run_id).model_id
            client.finalize_logged_model(model_id, "READY")
        describe_model(client, model_id, card, run_id)
        ids[card["name"]] = model_id
    text = json.dumps(ids)
    if publisher and ids and len(text) <= 8000:
        client.set_tag(publisher, MODELS_TAG, text)
    return ids


def log_files_model(client: MlflowClient, model_id: str, name: str, files: dict[str, bytes], run_id: str):
    """``files`` as they are into the new logged model ``model_id`` (a causal LM: its graph or weights,
    tokenizer, generation config; ``tasks.llm.served``), registered as a new version of ``name`` made
    by ``run_id``; returns (model id, version)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for file, data in files.items():
            Path(tmp, Path(file).name).write_bytes(data)
        client.log_model_artifacts(model_id, tmp)
    client.finalize_logged_model(model_id, "READY")
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - not registered yet
        client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
    return model_id, str(mv.version)
