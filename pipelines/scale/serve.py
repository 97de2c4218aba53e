"""``slimray serve``: a registered ONNX model from the MLflow registry as a Ray Serve application.

    slimray serve [model=models:/compress-mnist1d@candidate] [port=8000] [batching=false] [KEY=VALUE ...]

``POST /predict`` ``{"inputs": [[...], ...]}`` -> ``{"classes": [...], "logits": [[...], ...]}``;
``GET /health``; OpenAPI docs at ``/docs``. Requests are grouped by ``@serve.batch`` (dynamic
batching) and run by ONNX Runtime inside each replica. Bad requests get a 4xx with a one-line
message and never reach the model. Runs in the foreground until Ctrl-C, which deletes the
application and shuts down the Ray it started. Config: ``conf/serve/default.yaml`` (``ServeConfig``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

USAGE = __doc__.strip().splitlines()[2].strip()


@dataclass
class AutoscalingConfig:
    enabled: bool = False  # true: replicas between min and max by ongoing requests
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 16.0


@dataclass
class ServeConfig:
    model: str = "models:/compress-mnist1d@candidate"  # models:/<name>@<alias> or models:/<name>/<version>
    host: str = "127.0.0.1"  # loopback only
    port: int = 8000
    name: str = "slimray"  # Serve application name
    replicas: int = 1  # fixed replica count (when autoscaling is off)
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    batching: bool = True  # @serve.batch dynamic batching of concurrent requests
    max_batch_size: int = 32  # requests per model call
    batch_wait_timeout_s: float = 0.002
    max_ongoing_requests: int = 128  # per replica; >= max_batch_size or batches never fill
    max_request_rows: int = 1024  # larger batches get 413
    threads: int = 1  # ORT intra-op threads per replica
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0  # > 0: ORT CUDA execution provider (fractional GPUs allowed)
    ray_num_cpus: int | None = None  # local Ray only (null: all cores)


class BadRequest(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_inputs(body: bytes, sample_shape: list, max_rows: int) -> np.ndarray:
    """The request body as a float32 batch of the model's sample shape, or ``BadRequest``."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"malformed JSON: {e}") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise BadRequest(422, 'body must be a JSON object {"inputs": [[...], ...]}')
    inputs = doc["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(422, "inputs: empty batch (expected a non-empty list of samples)")
    if len(inputs) > max_rows:
        raise BadRequest(413, f"inputs: batch of {len(inputs)} samples exceeds max_request_rows={max_rows}")
    try:
        arr = np.asarray(inputs)
    except ValueError:
        raise BadRequest(
            422, f"inputs: ragged samples (expected shape [N, {', '.join(map(str, sample_shape))}])"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise BadRequest(422, "inputs: values must be numbers")
    expected = [None if not isinstance(d, int) else d for d in sample_shape]
    if arr.ndim != 1 + len(expected) or any(e is not None and e != a for e, a in zip(expected, arr.shape[1:])):
        raise BadRequest(
            422,
            f"inputs: shape {list(arr.shape)} does not match the model's [N, "
            f"{', '.join(str(d) for d in sample_shape)}]",
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise BadRequest(422, "inputs: values must be finite (no NaN or Infinity)")
    return arr


def fetch_onnx(model_uri: str, tracking_uri: str) -> bytes:
    """The ONNX graph of a registered model (``models:/...``) as one self-contained byte string.

    ``mlflow.onnx.log_model`` stores large initializers as external data beside the graph;
    ``mlflow.onnx.load_model`` reads them back in, so the bytes carry every weight.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.onnx.load_model(model_uri).SerializeToString()


def check_model(model_uri: str, tracking_uri: str) -> None:
    """Fail fast (one line) when ``model_uri`` names no registered model version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    found = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not found:
        raise ValueError(f"model: '{model_uri}' is not models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = found.groups()
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists():
        raise ValueError(f"model: no MLflow store at {tracking_uri} (set MLFLOW_TRACKING_URI or run a pipeline first)")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        raise ValueError(f"model: no registered model {model_uri} in {tracking_uri}") from None


def check_host(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"host: '{host}' is not a loopback address (the server binds 127.0.0.1 or ::1 only)")


def build_app(cfg: ServeConfig, tracking_uri: str):
    """The Serve application (FastAPI ingress + ONNX Runtime model) for ``cfg``."""
    from pipelines.scale.serve_app import ModelServer

    scaling = (
        {"autoscaling_config": {k: v for k, v in asdict(cfg.autoscaling).items() if k != "enabled"}}
        if cfg.autoscaling.enabled
        else {"num_replicas": cfg.replicas}
    )
    deployment = ModelServer.options(  # type: ignore[attr-defined]
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
        **scaling,
    )
    return deployment.bind(asdict(cfg), tracking_uri)


def load_config(overrides: list[str]) -> ServeConfig:
    """``conf/serve/default.yaml`` composed by Hydra with ``overrides``, typed as ``ServeConfig``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from pipelines.config.compose import conf_dir

    ConfigStore.instance().store(name="serve_schema", node=ServeConfig)
    with initialize_config_dir(config_dir=str(conf_dir() / "serve"), version_base="1.3"):
        cfg = cast(ServeConfig, OmegaConf.to_object(compose(config_name="default", overrides=overrides)))
    for key in ("port", "replicas", "max_batch_size", "max_request_rows", "threads", "max_ongoing_requests"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    check_host(cfg.host)
    return cfg


def main(argv: list[str]) -> int:
    """Compose, check the model, deploy, wait for Ctrl-C, tear down. Exit 0, or 2 on bad config."""
    from pipelines.config.compose import one_line
    from pipelines.store.tracking import resolve_uri

    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        return 0
    try:
        cfg = load_config([a for a in argv])
        uri = resolve_uri(None)
        check_model(cfg.model, uri)
    except Exception as e:  # Hydra/OmegaConf/MLflow errors: one line, before Ray starts
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=cfg.ray_num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM tears down like Ctrl-C
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(build_app(cfg, uri), name=cfg.name, route_prefix="/")
        print(f"serving {cfg.model} on http://{cfg.host}:{cfg.port}/predict (docs: /docs); Ctrl-C stops", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping: deleting the application", file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    return 0
