"""``slimray serve``: a registered model from the MLflow registry as a Ray Serve application.

    slimray serve [model=models:/compress-mnist1d@candidate] [port=8000] [batching=false] [KEY=VALUE ...]

Classifiers: ``POST /predict`` ``{"inputs": [[...], ...]}`` (or ``{"texts": [...]}`` for a text model)
-> ``{"classes": [...], "logits": [[...], ...]}``; embedding models: ``POST /embed`` ``{"texts": [...]}``
-> ``{"embeddings": [[...]], "dim": N}``; causal language models (version tag ``slimray.kind=causal_lm``,
``experiment=llm``): the OpenAI routes ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``
(streaming, continuous batching: ``tasks.serving.llm_deployment``); ``GET /health`` (name, version, run
id); OpenAPI docs at ``/docs``. The alias is resolved once, here: every replica serves that one version. Requests are
grouped by ``@serve.batch`` (dynamic batching) and run inside each replica by the runtime the
version was selected for (ONNX Runtime, or OpenVINO: ``runtime=``). The version's files must match
the signed file list the pipeline recorded with it (``serve_app.verify_files``): else one line, exit 1,
nothing served. Bad requests get a 4xx with a
one-line message and never reach the model. ``ingress=auto`` (default): HAProxy with
``auth_token=...``, Serve's proxy on loopback without; ``ingress=grpc``: ``slimray.Model/Predict``
and ``Embed`` on ``grpc_port`` as well. Runs in the foreground until Ctrl-C, which deletes the
application and shuts down the Ray it started. Config: ``conf/serve/default.yaml`` (``ServeConfig``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from pipelines.scale.serve_config import ServeConfig, ingress_env, load_config
from tasks.reporting.deploy import NOT_REGISTERED_TAG, REGISTRY_TAG

USAGE = __doc__.strip().splitlines()[2].strip()


def _nothing_registered(client, name: str) -> str:
    """Why the last pipeline run that reports to ``name`` registered nothing, or "" if none did."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        ids, f"tags.`{REGISTRY_TAG}` = '{name}'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs or NOT_REGISTERED_TAG not in runs[0].data.tags:
        return ""
    return f"; its last pipeline run {runs[0].info.run_id} registered nothing: {runs[0].data.tags[NOT_REGISTERED_TAG]}"


def resolve(model_uri: str, tracking_uri: str) -> dict:
    """The ONE registered version ``model_uri`` names now (an alias is resolved here, once): name,
    version, run id and its ``models:/<name>/<version>`` URI. One-line ``ValueError`` when none."""
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
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        why = _nothing_registered(client, name)
        raise ValueError(f"model: no registered model {model_uri} in {tracking_uri}{why}") from None
    uri = f"models:/{name}/{mv.version}"
    runtime = (mv.tags or {}).get("slimray.runtime", "onnxruntime")  # what the benchmark selected it on
    return {
        "name": name,
        "version": str(mv.version),
        "run_id": mv.run_id or "",
        "requested": model_uri,
        "uri": uri,
        "runtime": runtime,
        "kind": (mv.tags or {}).get("slimray.kind", ""),  # causal_lm: the OpenAI-compatible routes
    }


def check_model(model_uri: str, tracking_uri: str) -> None:
    """Fail fast (one line) when ``model_uri`` names no registered model version."""
    resolve(model_uri, tracking_uri)


def served_runtime(cfg: ServeConfig, pinned: dict) -> str:
    """``serve.runtime`` when set, else the runtime the version was selected for (its tag)."""
    return cfg.runtime or pinned.get("runtime", "onnxruntime")


def build_app(cfg: ServeConfig, tracking_uri: str, pinned: dict | None = None):
    """The Serve application (FastAPI ingress + ONNX Runtime model) for ``cfg``, every replica on the
    ``pinned`` version (default: ``cfg.model`` resolved now)."""
    from functools import partial

    from pipelines.scale.serve_app import load_model
    from tasks.serving.deployment import ModelServer

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
    pinned = pinned or resolve(cfg.model, tracking_uri)
    runtime = served_runtime(cfg, pinned)
    if pinned.get("kind") == "causal_lm":
        from pipelines.scale.serve_app import load_lm
        from tasks.serving.llm_deployment import LLMServer

        lm = LLMServer.options(  # type: ignore[attr-defined]
            max_ongoing_requests=cfg.max_ongoing_requests,
            ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
            **scaling,
        )
        return lm.bind(llm_settings(cfg), partial(load_lm, pinned["uri"], tracking_uri, runtime=runtime), pinned)
    return deployment.bind(asdict(cfg), partial(load_model, pinned["uri"], tracking_uri, runtime=runtime), pinned)


def llm_settings(cfg: ServeConfig) -> dict:
    """What an ``LLMServer`` replica reads of ``cfg``: sequences per decode step are ``max_batch_size``."""
    return {**asdict(cfg), "max_batch": cfg.max_batch_size}


def start_options(cfg: ServeConfig) -> dict:
    """``serve.start``'s options for ``cfg``: the HTTP proxy and, under ``ingress=grpc``, the gRPC one."""
    from tasks.serving.grpc_ingress import SERVICER

    timeout = 2 * cfg.request_timeout_s  # the replica answers 504 first
    options: dict = {"http_options": {"host": cfg.host, "port": cfg.port, "request_timeout_s": timeout}}
    if cfg.ingress == "grpc":
        options["grpc_options"] = {
            "port": cfg.grpc_port,
            "grpc_servicer_functions": [SERVICER],
            "request_timeout_s": timeout,
        }
    return options


class _Plain:
    """A text stream that drops ANSI colour codes (Ray colours its log lines unconditionally)."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(self.ANSI.sub("", text))

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _preload(uri: str, pinned: dict, runtime: str) -> str:
    """Fetch, verify and load the pinned version once here, so a model that cannot be fetched or
    loaded, or whose files do not match the signed file list recorded with it
    (``serve_app.verify_files``), is one line before any replica starts (replicas would retry it
    and end in a traceback). Every replica checks its own download again."""
    from pipelines.scale.serve_app import load_lm, load_model
    from pipelines.store.modelfiles import ModelFilesError

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would make the error two
    lm = pinned.get("kind") == "causal_lm"
    try:
        served = (load_lm if lm else load_model)(pinned["uri"], uri, 1, runtime=runtime)
    except ModelFilesError as e:
        raise RuntimeError(f"{e}: refusing to serve it (run {pinned['run_id']})") from None
    except Exception as e:  # noqa: BLE001 - any fetch/load failure is the same one line
        raise RuntimeError(f"model {pinned['uri']} (run {pinned['run_id']}) cannot be fetched or loaded: {e}") from None
    if served.note:
        print(f"warning: {served.note}", file=sys.stderr, flush=True)
    return "/v1" if lm else served.sig.route


def main(argv: list[str]) -> int:
    """Compose, resolve the model once, deploy, wait for Ctrl-C, tear down. Exit 0; 2 on a bad
    config or a model that is not registered; 1 when the model cannot be loaded or deployed."""
    from pipelines.config.compose import one_line
    from pipelines.store.tracking import resolve_uri

    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        return 0
    try:
        cfg = load_config(argv)
        uri = resolve_uri(None)
        pinned = resolve(cfg.model, uri)
    except Exception as e:  # Hydra/OmegaConf/MLflow errors: one line, before Ray starts
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if not sys.stderr.isatty():  # piped: no colour codes in the replicas' log prefixes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        sys.stdout, sys.stderr = _Plain(sys.stdout), _Plain(sys.stderr)  # nor in Ray's "[repeated Nx]"
    try:
        route = _preload(uri, pinned, served_runtime(cfg, pinned))
    except RuntimeError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    return _serve(cfg, uri, pinned, route)


def _serve(cfg: ServeConfig, uri: str, pinned: dict, route: str) -> int:
    import ray
    from ray import serve

    from pipelines.config.compose import one_line
    from pipelines.config.schema import RayConfig
    from pipelines.run.lifecycle import start_ray

    env = ingress_env(cfg.ingress)
    os.environ.update(env)  # read by Serve's controller and proxies at start
    started = start_ray(RayConfig(num_cpus=cfg.ray_num_cpus))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM tears down like Ctrl-C
    code = 0
    try:
        serve.start(**start_options(cfg))
        serve.run(build_app(cfg, uri, pinned), name=cfg.name, route_prefix="/")
        grpc = (
            f", gRPC slimray.Model on port {cfg.grpc_port} (application '{cfg.name}')" if cfg.ingress == "grpc" else ""
        )
        print(
            f"serving {pinned['requested']} = {pinned['name']} version {pinned['version']} (run {pinned['run_id']}) "
            f"on http://{cfg.host}:{cfg.port}{route}{grpc} (runtime: {served_runtime(cfg, pinned)}; "
            f"ingress: {cfg.ingress}; docs: /docs); Ctrl-C stops",
            flush=True,
        )
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping: deleting the application", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - a deployment that fails to start: one line, exit 1
        print(f"error: deploying {pinned['uri']} failed: {one_line(e)}", file=sys.stderr, flush=True)
        code = 1
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
        if "RAY_SERVE_HAPROXY_SERVER_STATE_BASE" in env:  # HAProxy's private folder
            shutil.rmtree(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)
    return code
