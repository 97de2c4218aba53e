"""What ``slimray serve`` adds to the deployment (``tasks.serving.deployment.ModelServer``, shared
with the benchmark's served measurement): fetching the ONE pinned model version from MLflow.

Each replica downloads the pinned version it was given (``models:/<name>/<version>``, resolved
once by the command, never an alias) in ``__init__``, so a replica started later (autoscaling, a
restart) serves the same version even after the alias moved, on the runtime it was selected for
(the version's ``slimray.runtime`` tag, or ``serve.runtime`` when set).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tasks.serving.model import ServedModel


def fetch_model(model_uri: str, tracking_uri: str, dst: str) -> tuple[bytes, Path]:
    """The graph of a registered version as one self-contained byte string and the folder of the
    files stored beside it (``serving.json``, a tokenizer; MLflow's ``extra_files/``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst))
    return mlflow.onnx.load_model(str(local)).SerializeToString(), local / "extra_files"


def load_model(
    model_uri: str, tracking_uri: str, threads: int, providers: list[str] | None = None, runtime: str = "onnxruntime"
) -> ServedModel:
    """The served model of a pinned version on ``runtime`` (ORT with ``providers``, or OpenVINO)."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_bytes, folder = fetch_model(model_uri, tracking_uri, tmp)
        return ServedModel(onnx_bytes, folder if folder.is_dir() else None, threads, providers, runtime)
