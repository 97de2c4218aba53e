"""A candidate measured through the served path: ``benchmark.serving`` (off by default).

``served_figures`` deploys the candidate's ONNX bytes with the deployment ``slimray serve`` uses
(``tasks.serving.deployment.ModelServer``, ``@serve.batch`` on, ``max_batch_size``) as a Serve
application on 127.0.0.1, sends ``requests`` POSTs of one test sample from ``concurrency``
threads (each a keep-alive HTTP connection), deletes the application and returns
``serve_p50_ms``/``serve_p99_ms`` (per-request latency percentiles) and ``serve_rps`` (requests
per second of the whole load) at that concurrency, and ``serve_errors`` (non-200 answers).

Serve is started on a free loopback port when none runs on the Ray cluster (``serve_running``: once
for all candidates of a benchmark, shut down after); when one runs, each application is added to
it under its own route prefix and deleted after. The
replica asks for no CPU (``num_cpus=0``): the benchmark task that waits on it holds one already.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.core.checks import at_least
from tasks.evaluation.selection import OBJECTIVES

if TYPE_CHECKING:
    from tasks.core.context import StepContext
    from tasks.core.types import BenchmarkRow

SERVE_FIELDS = ("serve_p50_ms", "serve_p99_ms", "serve_rps")
# model-only figure -> the served figure it is compared with, and whether higher is better
PAIRS = (("throughput_b256", "serve_rps", True), ("latency_ms_p50_b1", "serve_p99_ms", False))


@dataclass
class ServingLoad:
    concurrency: int = 0  # clients sending at once; 0 = off (no served measurement)
    requests: int = 200  # requests per candidate (bounded load)
    max_batch_size: int = 8  # @serve.batch: requests per model call
    batch_wait_timeout_s: float = 0.002

    def __post_init__(self) -> None:
        at_least("concurrency", self.concurrency, 0)
        if self.concurrency:
            at_least("requests", self.requests, 1)
            at_least("max_batch_size", self.max_batch_size, 1)
            at_least("batch_wait_timeout_s", self.batch_wait_timeout_s, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_body(onnx_bytes: bytes, x) -> bytes:
    """One test sample as ``POST /predict`` takes it: a list for one input, by name for several."""
    from tasks.runtime.onnx import ort_feed, ort_session

    feed = ort_feed(ort_session(onnx_bytes, 1), x[:1])
    inputs = next(iter(feed.values())).tolist() if len(feed) == 1 else {k: v.tolist() for k, v in feed.items()}
    return json.dumps({"inputs": inputs}).encode()


def _client(port: int, path: str, body: bytes, n: int) -> tuple[list[float], int]:
    """``n`` requests one after another on one connection: their latencies (s) and the errors."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    lat, errors = [], 0
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            lat.append(time.perf_counter() - t0)
            errors += resp.status != 200
    finally:
        conn.close()
    return lat, errors


def fire(port: int, path: str, body: bytes, load: ServingLoad) -> dict[str, float]:
    """The load: ``requests`` split over ``concurrency`` clients; percentiles, rate and errors."""
    c = load.concurrency
    shares = [load.requests // c + (i < load.requests % c) for i in range(c)]
    _client(port, path, body, min(10, load.requests))  # warm-up: the first calls pay for connection setup
    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        results = list(pool.map(lambda n: _client(port, path, body, n), [s for s in shares if s]))
    wall = time.perf_counter() - t0
    lat = np.concatenate([np.asarray(r[0]) for r in results]) * 1000.0
    return {
        "serve_p50_ms": float(np.percentile(lat, 50)),
        "serve_p99_ms": float(np.percentile(lat, 99)),
        "serve_rps": float(len(lat) / wall),
        "serve_errors": float(sum(r[1] for r in results)),
    }


@contextmanager
def serve_running() -> Iterator[int]:
    """The HTTP port of Serve on this Ray cluster: the running one's, or a free loopback port it is
    started on here (and shut down on exit)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        yield int(client.http_config.port)
        return
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()


def served_figures(onnx_bytes: bytes, x, threads: int, load: ServingLoad) -> dict[str, float]:
    """Deploy, load, tear down (see the module doc); the figures of ``fire``."""
    from functools import partial

    from ray import serve

    from tasks.serving.deployment import LIMIT_KEYS, ModelServer, model_from_bytes
    from tasks.serving.limits import Limits

    body = request_body(onnx_bytes, x)
    cfg = dict(zip(LIMIT_KEYS, astuple(Limits()))) | {"threads": threads, "batching": True}
    cfg |= {"max_batch_size": load.max_batch_size, "batch_wait_timeout_s": load.batch_wait_timeout_s}
    cfg |= {"request_timeout_s": 60.0, "auth_token": ""}
    name = f"slimray-bench-{uuid.uuid4().hex[:8]}"
    pinned = {"name": name, "version": "", "run_id": "", "requested": "benchmark.serving"}
    deployment = ModelServer.options(  # type: ignore[attr-defined]
        max_ongoing_requests=max(load.max_batch_size, load.concurrency) * 2,
        ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False, "log_level": "WARNING"},  # no line per request
    )
    with serve_running() as port:
        try:
            app = deployment.bind(cfg, partial(model_from_bytes, onnx_bytes), pinned)
            serve.run(app, name=name, route_prefix=f"/{name}")
            return fire(port, f"/{name}/predict", body, load)
        finally:
            serve.delete(name)


def check_objective(objective: str, load: ServingLoad) -> None:
    """One line naming ``benchmark.objective`` unless it is known and, for a served figure, measured."""
    if objective not in OBJECTIVES:
        raise ValueError(f"benchmark.objective: '{objective}' is not one of {sorted(OBJECTIVES)}")
    if objective in SERVE_FIELDS and not load.concurrency:
        raise ValueError(f"benchmark.objective: '{objective}' needs benchmark.serving.concurrency >= 1")


def ranking_note(rows: list[BenchmarkRow]) -> str:
    """One line when the served figures order the served rows differently from the model-only ones."""
    served = [r for r in rows if r.serve_rps is not None]
    differ = []
    for model, serve, high in PAIRS:
        have = [r for r in served if getattr(r, model) is not None]
        ranks = [[r.name for r in sorted(have, key=lambda r: getattr(r, k), reverse=high)] for k in (model, serve)]
        if len(have) > 1 and ranks[0] != ranks[1]:
            differ.append(f"{model} {', '.join(ranks[0])} vs {serve} {', '.join(ranks[1])}")
    head = "served and model-only figures rank the candidates differently (best first): "
    return head + "; ".join(differ) if differ else ""


def serve_rows(
    measured: list[tuple[BenchmarkRow, Any]],
    blobs: dict[str, bytes],
    x,
    threads: int,
    load: ServingLoad,
    ctx: StepContext,
) -> tuple[list[BenchmarkRow], list[str]]:
    """The rows of the benchmark's ``measured`` (row, timer) pairs, and with ``load.concurrency`` the
    served figures set on every row with ONNX bytes in ``blobs`` that is neither simulated nor
    rejected; the notes (errors, ``ranking_note``)."""
    rows = [row for row, _ in measured]
    if not load.concurrency:
        return rows, []
    notes = []
    todo = [r for r in rows if r.name in blobs and not (r.simulated or r.rejected)]
    with serve_running():  # one Serve for all candidates, each its own application in turn
        for i, row in enumerate(todo):
            ctx.progress(f"serving {row.name} ({i + 1}/{len(todo)}) at concurrency {load.concurrency}")
            figures = served_figures(blobs[row.name], x, threads, load)
            for key in SERVE_FIELDS:
                setattr(row, key, figures[key])
            if figures["serve_errors"]:
                errors = f"{figures['serve_errors']:.0f} error(s) in {load.requests} requests"
                notes.append(f"'{row.name}' served with {errors}")
    notes += [n for n in [ranking_note(rows)] if n]
    for note in notes:
        ctx.note(note)
    return rows, notes
