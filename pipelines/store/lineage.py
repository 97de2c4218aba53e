"""Datasets in MLflow: a step that returns a ``Dataset`` (``tasks.core.types``) logs it as an MLflow
dataset, and every run that consumes it links it as an input, so the runs table's Dataset column
and the lineage view show which data each run saw.

- **The dataset** (``dataset_entity``): its ``name`` (``Dataset.name``), ``digest`` = slimray's
  content hash of the stored output (``content_digest``: sha256 over the sha256 of every file of
  the output's manifest, safetensors + JSON, so equal data is an equal digest whatever the key),
  ``source`` = the file the step's ``path`` param names when there is one, else the stored
  output ``runs:/<run>/output``, ``schema`` = the inputs and labels as tensor specs, ``profile`` =
  the row count of every split, the classes, the task kind and the input names.
- **Who logs it**: the worker, right after storing the step's output (``record_output``), on the
  step's own run with context ``output``, and tags that run ``slimray.dataset_digest``.
- **Who links it** (``Links``, driven by the recorder's events): the run of every trial of every
  step downstream of the dataset step (context: the input's name for a direct consumer, else
  ``upstream``), the sweep runs, a cache-hit record of the dataset step itself (``output``), and
  the parent run (``pipeline``). A cache hit reads the dataset from the run that computed it.
- **What a registered version says it was made from** (``Links.consumed``): only the datasets
  upstream of the step that made the model, each by name and digest (two datasets that share a
  name stay two).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import Dataset as MlflowDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from pipelines.config.graph import closure
from pipelines.config.spec import PipelineSpec, task_signature

if TYPE_CHECKING:
    from pipelines.run.state import StepState, Trial

from tasks.core.types import Dataset, TokenSet

CONTEXT = "mlflow.data.context"
DIGEST_TAG = "slimray.dataset_digest"
DIGEST_LEN = 32  # MLflow stores a dataset digest in 36 characters
SPLITS = ("train", "val", "test", "transfer", "calib")


def content_digest(manifest: dict) -> str:
    """Slimray's content hash of a stored output: sha256 over its files' sha256 (``manifest.json``)."""
    files = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:DIGEST_LEN]


def _schema(data: Dataset | TokenSet) -> str:
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types.schema import Schema, TensorSpec

    if isinstance(data, TokenSet):  # next-token prediction: the ids are both the inputs and the targets
        ids = Schema([TensorSpec(np.dtype("int64"), (-1,), "input_ids")])
        return json.dumps(TensorDatasetSchema(features=ids).to_dict())
    x, y = data.x_train, data.y_train
    name = ",".join(data.input_names) or "x"
    features = Schema([TensorSpec(np.dtype(str(x.dtype).removeprefix("torch.")), (-1, *x.shape[1:]), name)])
    targets = Schema([TensorSpec(np.dtype(str(y.dtype).removeprefix("torch.")), (-1, *y.shape[1:]), "y")])
    return json.dumps(TensorDatasetSchema(features=features, targets=targets).to_dict())


def _profile(data: Dataset | TokenSet) -> str:
    if isinstance(data, TokenSet):
        return json.dumps(
            {
                "eval_docs": len(data.eval_offsets) - 1,
                "eval_tokens": len(data.eval_ids),
                "calib_rows": len(data.calib),
                "distill_rows": len(data.distill),
                "prompts": len(data.prompt_offsets) - 1,
                "task": "causal_lm",
            }
        )
    rows = {s: len(v) for s in SPLITS if (v := getattr(data, f"x_{s}")) is not None}
    return json.dumps(
        {"rows": rows, "num_classes": data.num_classes, "task": data.task, "input_names": data.input_names}
    )


def _source(run_id: str, params: dict) -> tuple[str, str]:
    """(source type, source JSON): the file the step read when its ``path`` param names one."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    path = params.get("path")
    if isinstance(path, str) and path and os.path.exists(path):
        src = resolve_dataset_source(str(Path(path).resolve()))
        return src._get_source_type(), src.to_json()
    return "slimray", json.dumps({"uri": f"runs:/{run_id}/output"})


def dataset_entity(data: Dataset | TokenSet, digest: str, source_type: str, source: str) -> MlflowDataset:
    return MlflowDataset(data.name, digest, source_type, source, _schema(data), _profile(data))


def record_output(client: MlflowClient, run_id: str, value, params: dict) -> None:
    """Worker side: a ``Dataset`` (or a causal LM's ``TokenSet``) output just stored under ``output/``
    becomes an MLflow dataset input of its own run (context ``output``); its digest is read from the
    stored manifest."""
    if not isinstance(value, (Dataset, TokenSet)):
        return
    with tempfile.TemporaryDirectory() as tmp:
        manifest = json.loads(Path(client.download_artifacts(run_id, "output/manifest.json", tmp)).read_text())
    digest = content_digest(manifest)
    entity = dataset_entity(value, digest, *_source(run_id, params))
    client.log_inputs(run_id, [DatasetInput(entity, [InputTag(CONTEXT, "output")])])
    client.set_tag(run_id, DIGEST_TAG, digest)


def datasets_of(client: MlflowClient, run_id: str) -> list[MlflowDataset]:
    """The datasets a run produced (its inputs with context ``output``)."""
    inputs = client.get_run(run_id).inputs
    found = []
    for d in inputs.dataset_inputs if inputs is not None else []:
        if any(t.key == CONTEXT and t.value == "output" for t in d.tags):
            found.append(d.dataset)
    return found


def link(client: MlflowClient, run_id: str, datasets: list[MlflowDataset], context: str) -> None:
    if datasets:
        client.log_inputs(run_id, [DatasetInput(d, [InputTag(CONTEXT, context)]) for d in datasets])


def dataset_steps(spec: PipelineSpec) -> list[str]:
    return [n for n, s in spec.steps.items() if task_signature(s.task)[3] in (Dataset, TokenSet)]


class Links:
    """Links the execution's datasets to the runs that consume them (see the module docstring)."""

    def __init__(self, client: MlflowClient, root_run: str, spec: PipelineSpec):
        self.client, self.root_run, self.spec = client, root_run, spec
        self.sources = dataset_steps(spec)
        graph = {n: s.upstream for n, s in spec.steps.items()}
        self.below = {d: closure(graph, [d], down=True) - {d} for d in self.sources}
        self.datasets: dict[str, list[MlflowDataset]] = {}  # dataset step -> its datasets

    def consumed(self, step: str) -> list[tuple[str, str]]:
        """(name, digest) of every dataset ``step`` was made from: those of the dataset steps
        upstream of it (itself included), in pipeline order, for the registry's version tags.
        Two datasets of one name stay two entries; the same data reached twice is one."""
        graph = {n: s.upstream for n, s in self.spec.steps.items()}
        upstream = closure(graph, [step])
        found: list[tuple[str, str]] = []
        for source in self.sources:
            for d in self.datasets.get(source, []) if source in upstream else []:
                if (d.name, d.digest) not in found:
                    found.append((d.name, d.digest))
        return found

    def _context(self, step: str, source: str) -> str:
        names = [p for p, refs in self.spec.steps[step].inputs.items() if any(r.step == source for r in refs)]
        return ",".join(names) or "upstream"

    def on_event(self, event: str, st: StepState, trial: Trial | None) -> None:
        if event in ("trial_cached", "trial_finished") and trial is not None:
            self.on_trial(st, trial)
        elif event == "step_finished":
            self.on_step_finished(st)

    def on_trial(self, st: StepState, t: Trial) -> None:
        """A trial that has its run (computed, loaded from the cache or recorded as a hit)."""
        if t.meta is None:
            return
        name = st.spec.name
        if name in self.below:
            origin = t.hit.info.run_id if t.hit is not None else t.meta.run_id
            self.datasets[name] = datasets_of(self.client, origin)
            if origin != t.meta.run_id:
                link(self.client, t.meta.run_id, self.datasets[name], "output")
        for source, ds in self.datasets.items():
            if name in self.below[source]:
                link(self.client, t.meta.run_id, ds, self._context(name, source))

    def on_step_finished(self, st: StepState) -> None:
        name = st.spec.name
        if name in self.datasets and st.status in ("done", "cached"):
            link(self.client, self.root_run, self.datasets[name], "pipeline")
        for source, ds in self.datasets.items():
            if st.run_id and name in self.below[source]:
                link(self.client, st.run_id, ds, self._context(name, source))
