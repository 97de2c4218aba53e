"""``slimray serve``: a registered ONNX model from the MLflow registry as a Ray Serve application.

    slimray serve [model=models:/compress-mnist1d@candidate] [port=8000] [batching=false] [KEY=VALUE ...]

``POST /predict`` ``{"inputs": [[...], ...]}`` -> ``{"classes": [...], "logits": [[...], ...]}``;
``GET /health``; OpenAPI docs at ``/docs``. Requests are grouped by ``@serve.batch`` (dynamic
batching) and run by ONNX Runtime inside each replica. Bad requests get a 4xx with a one-line
message and never reach the model. Runs in the foreground until Ctrl-C, which deletes the
application and shuts down the Ray it started. Config: ``conf/serve/default.yaml`` (``ServeConfig``).
"""

from __future__ import annotations

import re
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from pipelines.scale.serve_config import ServeConfig, load_config

USAGE = __doc__.strip().splitlines()[2].strip()


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


def main(argv: list[str]) -> int:
    """Compose, check the model, deploy, wait for Ctrl-C, tear down. Exit 0, or 2 on bad config."""
    from pipelines.config.compose import one_line
    from pipelines.store.tracking import resolve_uri

    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        return 0
    try:
        cfg = load_config(argv)
        uri = resolve_uri(None)
        check_model(cfg.model, uri)
    except Exception as e:  # Hydra/OmegaConf/MLflow errors: one line, before Ray starts
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    from pipelines.config.schema import RayConfig
    from pipelines.run.lifecycle import start_ray

    started = start_ray(RayConfig(num_cpus=cfg.ray_num_cpus))
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
