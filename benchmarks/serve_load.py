"""Load test of ``slimray serve`` on loopback: a bounded async client (a fixed number of requests
and a time cap per level) at concurrency 1, 8 and 32, with and without dynamic batching, under one
of Serve's ingress options (``ServeConfig.ingress``: proxy | throughput | haproxy | grpc; under
grpc the clients call ``slimray.Model/Predict`` / ``Embed`` with the same JSON bodies). Every
server asks for the bearer token (haproxy and grpc need one), so all ingresses do the same work.

    .venv/bin/python benchmarks/serve_load.py [--requests 400] [--cap-s 20] [--models large,small,minilm]
        [--ingress proxy] [--levels 1,8,32]

Models (registered as ONNX in a temporary MLflow registry, one sample per request):
``large`` is the zoo's deep MLP (conf/model/mlp_deep.yaml, ~34M parameters: compute dominates),
``small`` the compress student architecture (conf/model/cnn1d_compact.yaml, ~14k parameters:
the HTTP path dominates). One replica, one ORT thread.

Prints ONE JSON object: per model and mode, per concurrency level p50/p99 latency (ms), req/s and
errors; ``batching_speedup_c32`` (req/s with / without batching at concurrency 32),
``p50_c1_minus_direct_ms`` (serve p50 at concurrency 1 minus an in-process ORT call on the same
model) and ``direct_batch_gain_b32`` (in-process ORT samples/s at batch 32 over batch 1: the most
batching can gain on that model). ``minilm`` (``benchmarks/serve_minilm.py``) is all-MiniLM-L6-v2
served on ``/embed`` from text, eight sentences a request: its levels, ``minilm_cos_min_100`` and
``minilm_rps_c16_vs_inprocess``. The results and a latency-vs-load plot are logged to MLflow
(experiment ``serve-load``, store from MLFLOW_TRACKING_URI, default ./mlflow.db). Targets: speedup
>= 3 (large), overhead <= 3 ms (small), MiniLM cosine >= 0.999 and >= 0.7x the in-process rate.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

LEVELS = (1, 8, 32)
TOKEN = "serve-load"  # the bearer token of every server this script starts
ARCHS = {
    "large": {"_target_": "tasks.models.zoo.MLP", "hidden": [2048] * 9},
    "small": {"_target_": "tasks.models.zoo.CNN1D", "channels": [32, 32, 32]},
}


def log(msg: str) -> None:
    print(f"[serve_load] {msg}", file=sys.stderr, flush=True)


def register(name: str, arch: dict, uri: str) -> bytes:
    import mlflow
    import onnx

    from tasks.models.build import build_model, complete_arch
    from tasks.runtime.onnx import to_onnx

    torch.manual_seed(0)
    model = build_model(complete_arch(arch, [40], 10)).eval()
    data = to_onnx(model, torch.randn(2, 40))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            onnx.load_from_string(data), name="model", registered_model_name=name, pip_requirements=["onnxruntime"]
        )
    mlflow.MlflowClient(uri).set_registered_model_alias(name, "bench", str(info.registered_model_version))
    return data


ONE_SAMPLE = json.dumps({"inputs": np.random.default_rng(0).normal(size=(1, 40)).round(4).tolist()})


async def level(url: str, concurrency: int, requests: int, cap_s: float, body: str = ONE_SAMPLE) -> dict:
    """``requests`` POSTs of ``body`` by ``concurrency`` workers, stopping at ``cap_s``."""
    import aiohttp

    latencies: list[float] = []
    errors, counter = 0, iter(range(requests))
    deadline = time.perf_counter() + cap_s

    async def worker(send):
        nonlocal errors
        for _ in counter:
            if time.perf_counter() > deadline:
                return
            t = time.perf_counter()
            ok = await send()
            latencies.append(time.perf_counter() - t) if ok else None
            errors += not ok

    start = time.perf_counter()
    if url.startswith("grpc://"):  # grpc://host:port/Method: one HTTP/2 channel, calls multiplexed on it
        import grpc
        from google.protobuf.wrappers_pb2 import BytesValue

        from tasks.serving.grpc_ingress import metadata, stub

        target, method = url.removeprefix("grpc://").split("/", 1)
        async with grpc.aio.insecure_channel(target) as channel:
            call, msg, md = stub(channel, method), BytesValue(value=body.encode()), metadata("bench", TOKEN)

            async def send_grpc() -> bool:
                try:
                    await call(msg, metadata=md, timeout=60)
                    return True
                except grpc.RpcError:
                    return False

            await asyncio.gather(*[worker(send_grpc) for _ in range(concurrency)])
    else:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def send_http() -> bool:
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await asyncio.gather(*[worker(send_http) for _ in range(concurrency)])
    wall = time.perf_counter() - start
    lat = np.array(latencies or [np.nan]) * 1e3
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + errors,
        "errors": errors,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "req_per_s": len(latencies) / wall,
    }


def direct(onnx_bytes: bytes, top: int) -> dict:
    """In-process ORT on the same model and thread: the p50 of one sample, and the batching ceiling
    (samples/s at a batch of ``top`` over samples/s one at a time: what batching can gain at most)."""
    from tasks.runtime.onnx import ort_session
    from tasks.runtime.timing import time_ort

    session, x = ort_session(onnx_bytes, 1), np.zeros((1, 40), np.float32)
    one = time_ort(session, x, 1, warmup=20, iters=200)
    batch = time_ort(session, x, top, warmup=5, iters=50)
    return {"p50_ms": one["p50_ms"], "batch_gain": batch["throughput"] / one["throughput"]}


def plot(results: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, levels in results.items():
        c = [r["concurrency"] for r in levels]
        axes[0].plot(c, [r["p50_ms"] for r in levels], marker="o", label=f"{key} p50")
        axes[1].plot(c, [r["req_per_s"] for r in levels], marker="o", label=key)
    for ax, label in zip(axes, ("latency p50 (ms)", "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def run_levels(serve, app, url: str, args, body: str = ONE_SAMPLE) -> list[dict]:
    """Deploy ``app``, warm it up, measure every level, delete it."""
    serve.run(app, name="bench", route_prefix="/")
    asyncio.run(level(url, 4, 20, 10, body))  # warm-up
    levels = [asyncio.run(level(url, c, args.requests, args.cap_s, body)) for c in args.levels]
    serve.delete("bench")
    return levels


def measure_model(name: str, serve, registry: str, ports: tuple[int, int], args, res: dict, curves: dict) -> None:
    """One model with and without batching: its levels and its headline figures into ``res``."""
    from pipelines.scale.serve import ServeConfig, build_app

    if name == "minilm":
        import serve_minilm

        onnx_bytes = serve_minilm.register(registry)
    else:
        onnx_bytes = register(f"bench-{name}", ARCHS[name], registry)
        ort = direct(onnx_bytes, max(args.levels))
        res[f"{name}_direct_p50_ms"] = ort["p50_ms"]
        res[f"{name}_direct_batch_gain_b{max(args.levels)}"] = ort["batch_gain"]  # the ceiling of batching
    route = "/embed" if name == "minilm" else "/predict"
    body = serve_minilm.body() if name == "minilm" else ONE_SAMPLE
    port, grpc_port = ports
    for batching in (True, False):
        key = f"{name}_{'batch' if batching else 'nobatch'}"
        cfg = ServeConfig(
            model=f"models:/bench-{name}@bench", port=port, grpc_port=grpc_port, batching=batching, max_batch_size=64,
            ingress=args.ingress, auth_token=TOKEN,
        )  # fmt: skip
        http_url = f"http://127.0.0.1:{port}{route}"
        url = f"grpc://127.0.0.1:{grpc_port}/{route[1:].title()}" if args.ingress == "grpc" else http_url
        if name == "minilm" and batching:  # quality and the in-process ratio on the batching app
            serve.run(build_app(cfg, registry), name="bench", route_prefix="/")
            res["minilm_cos_min_100"] = serve_minilm.cosine_min(http_url, onnx_bytes, cfg.threads, TOKEN)
            served = asyncio.run(level(url, 16, args.requests, args.cap_s, body))["req_per_s"]
            res["minilm_rps_c16"] = served
            res["minilm_rps_c16_vs_inprocess"] = served / serve_minilm.inprocess_rps(onnx_bytes, cfg.threads)
        curves[key] = run_levels(serve, build_app(cfg, registry), url, args, body)
        log(
            f"{key}: "
            + ", ".join(f"c{r['concurrency']} {r['req_per_s']:.0f} req/s p50 {r['p50_ms']:.1f} ms" for r in curves[key])
        )
    by_c = {k: {r["concurrency"]: r for r in v} for k, v in curves.items()}
    top = max(args.levels)
    res[f"{name}_batching_speedup_c{top}"] = (
        by_c[f"{name}_batch"][top]["req_per_s"] / by_c[f"{name}_nobatch"][top]["req_per_s"]
    )
    if f"{name}_direct_p50_ms" in res and 1 in args.levels:
        res[f"{name}_p50_c1_minus_direct_ms"] = by_c[f"{name}_nobatch"][1]["p50_ms"] - res[f"{name}_direct_p50_ms"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from pipelines.scale.serve import ServeConfig, start_options
    from pipelines.scale.serve_config import INGRESS, OPEN_INGRESS, ingress_env

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--cap-s", type=float, default=20.0)
    ap.add_argument("--models", default="large,small,minilm")
    ap.add_argument("--ingress", default="proxy", choices=sorted(INGRESS))
    ap.add_argument("--levels", type=lambda v: [int(c) for c in v.split(",")], default=list(LEVELS))
    args = ap.parse_args()
    if args.ingress in OPEN_INGRESS:  # Ray binds these on every interface: run where only loopback exists
        from machine import reexec_isolated

        reexec_isolated()
    res_netns = os.environ.get("SLIMRAY_BENCH_NETNS") == "1"
    os.environ.update(ingress_env(args.ingress))  # before Ray starts: Serve reads it in its actors
    import ray
    from ray import serve

    tmp = tempfile.mkdtemp(prefix="serve_load_")
    registry = f"sqlite:///{tmp}/mlflow.db"
    ports = (free_port(), free_port())  # HTTP, gRPC
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    res: dict = {
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?"),
        "cores": os.cpu_count(),
        "threads": 1,
        "ingress": args.ingress,
        "network_namespace": res_netns,
        "requests_per_level": args.requests,
        "cap_s": args.cap_s,
    }
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    started = ServeConfig(port=ports[0], grpc_port=ports[1], ingress=args.ingress, auth_token=TOKEN)
    serve.start(**start_options(started))
    curves: dict = {}
    try:
        for name in args.models.split(","):
            measure_model(name, serve, registry, ports, args, res, curves)
    finally:
        serve.shutdown()
        ray.shutdown()
    res["levels"] = curves
    res["errors_total"] = sum(r["errors"] for v in curves.values() for r in v)
    log_to_mlflow(res, plot(curves))
    print(json.dumps(res))


def log_to_mlflow(res: dict, png: bytes) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.store.tracking import ensure_experiment, resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(None))
    run = client.create_run(ensure_experiment(client, "serve-load"), run_name="serve_load")
    ts = int(time.time() * 1000)
    from mlflow.entities import Metric

    metrics = [Metric(k, float(v), ts, 0) for k, v in res.items() if isinstance(v, (int, float))]
    metrics += [
        Metric(f"{k}_{m}", float(r[m]), ts, r["concurrency"])
        for k, v in res["levels"].items()
        for r in v
        for m in ("p50_ms", "p99_ms", "req_per_s", "errors")
    ]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.log_text(run.info.run_id, json.dumps(res, indent=2), "serve_load.json")
    client.log_image(
        run.info.run_id, __import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(png)), "latency_vs_load.png"
    )
    client.set_terminated(run.info.run_id)
    res["mlflow_run_id"] = run.info.run_id


if __name__ == "__main__":
    main()
