"""What ``slimray serve`` adds to the deployment (``tasks.serving.deployment.ModelServer``, shared
with the benchmark's served measurement): fetching the ONE pinned model version from MLflow.

Each replica downloads the pinned version it was given (``models:/<name>/<version>``, resolved
once by the command, never an alias) in ``__init__``, so a replica started later (autoscaling, a
restart) serves the same version even after the alias moved, on the runtime it was selected for
(the version's ``slimray.runtime`` tag, or ``serve.runtime`` when set).

Before anything of the download is read (``MLmodel`` names the file ``mlflow.onnx`` opens), every
file is checked against the signed file list the pipeline recorded with the version
(``pipelines.store.modelfiles.FILES_TAG``, signed with the cache key for the version's logged
model): a file missing, added or changed is a one-line ``ModelFilesError`` and nothing is
served. Where that cannot be checked - no cache key on this node, or a version registered
outside a slimray pipeline (no list) - the model is served and ``ServedModel.note`` says its
files were not verified.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from pipelines.store import modelfiles, registry, signing
from tasks.serving.model import ServedModel


def verify_files(model_uri: str, tracking_uri: str, folder: Path) -> str:
    """Check the downloaded files of the pinned version ``models:/<name>/<version>`` against its
    signed file list: "" when they match, a one-line note when they cannot be checked here, a
    ``ModelFilesError`` (one line, naming the file) when they do not match."""
    from mlflow.tracking import MlflowClient

    found = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    if not found:
        raise ValueError(f"model: '{model_uri}' is not a pinned models:/<name>/<version>")
    mv = MlflowClient(tracking_uri=tracking_uri).get_model_version(*found.groups())
    recorded = (mv.tags or {}).get(modelfiles.FILES_TAG)
    if recorded is None:
        return f"{model_uri}: files not verified (no signed file list {modelfiles.FILES_TAG}: not a pipeline's version)"
    if not signing.key_path().exists():
        return f"{model_uri}: files not verified (no cache key at {signing.key_path()} on this node)"
    modelfiles.check_files(folder, recorded, registry.model_id_of(mv) or "", f"model {model_uri}")
    return ""


def fetch_model(model_uri: str, tracking_uri: str, dst: str) -> tuple[bytes, Path, str]:
    """The graph of a registered version as one self-contained byte string, the folder of the
    files stored beside it (``serving.json``, a tokenizer; MLflow's ``extra_files/``) and the
    note of ``verify_files`` (checked before MLflow reads any of it)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst))
    note = verify_files(model_uri, tracking_uri, local)
    return mlflow.onnx.load_model(str(local)).SerializeToString(), local / "extra_files", note


def load_model(
    model_uri: str, tracking_uri: str, threads: int, providers: list[str] | None = None, runtime: str = "onnxruntime"
) -> ServedModel:
    """The served model of a pinned version on ``runtime`` (ORT with ``providers``, or OpenVINO)."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_bytes, folder, note = fetch_model(model_uri, tracking_uri, tmp)
        served = ServedModel(onnx_bytes, folder if folder.is_dir() else None, threads, providers, runtime)
    served.note = note
    return served


def load_lm(model_uri: str, tracking_uri: str, threads: int, runtime: str = "onnxruntime"):
    """The served causal LM (``tasks.llm.served.ServedLM``) of a pinned version registered as files
    (``slimray.kind=causal_lm``): downloaded, checked against its signed file list, then loaded."""
    import mlflow

    from tasks.llm.served import load_served

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        note = verify_files(model_uri, tracking_uri, local)
        served = load_served(local, runtime, threads)
    served.note = note
    return served
