"""The Serve deployment behind ``slimray serve``: a FastAPI ingress around ``tasks.serving``.

Each replica downloads the ONE pinned model version it was given (``models:/<name>/<version>``,
resolved once by the command, never an alias) in ``__init__``, so a replica started later
(autoscaling, a restart) serves the same version even after the alias moved; it is ready only
once the model has loaded. Routes follow the model's task kind (``tasks.serving.model``):
``/predict`` for classifiers (arrays or texts), ``/embed`` for embedding models. Every request is
bounded before the work it would cause (``tasks.serving.limits``): body size while reading, JSON
nesting and size, text lengths, a timeout; with ``auth_token`` set, a bearer token. With batching
on, concurrent requests are concatenated by ``@serve.batch`` into one ORT call and split back.
(No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` type.)
"""

import asyncio
import hmac
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from pipelines.scale.serve_config import ServeConfig
from tasks.serving.limits import BadRequest, Limits, parse, read_body
from tasks.serving.model import ServedModel, concat, rows


def fetch_model(model_uri: str, tracking_uri: str, dst: str) -> tuple[bytes, Path]:
    """The graph of a registered version as one self-contained byte string and the folder of the
    files stored beside it (``serving.json``, a tokenizer; MLflow's ``extra_files/``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst))
    return mlflow.onnx.load_model(str(local)).SerializeToString(), local / "extra_files"


def load_model(model_uri: str, tracking_uri: str, threads: int, providers: list[str] | None = None) -> ServedModel:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_bytes, folder = fetch_model(model_uri, tracking_uri, tmp)
        return ServedModel(onnx_bytes, folder if folder.is_dir() else None, threads, providers)


def limits_of(cfg: ServeConfig) -> Limits:
    json_limits = (cfg.max_body_bytes, cfg.max_json_depth, cfg.max_json_elements)
    return Limits(*json_limits, cfg.max_request_rows, cfg.max_text_chars, cfg.max_batch_chars)


app = FastAPI(title="slimray", description="A model from the slimray registry (ONNX Runtime).")
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


@serve.deployment
@serve.ingress(app)
class ModelServer:
    def __init__(self, cfg: dict, tracking_uri: str, pinned: dict):
        import ray
        import torch  # noqa: F401  (onnxruntime CUDA wheels find cuDNN through torch)

        from tasks.runtime.onnx import providers_for

        self.cfg = ServeConfig(**{k: v for k, v in cfg.items() if k != "autoscaling"})
        self.pinned, self.limits = pinned, limits_of(self.cfg)
        providers = providers_for("cuda" if ray.get_gpu_ids() else "cpu")
        self.model = load_model(pinned["uri"], tracking_uri, self.cfg.threads, providers)
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()
        self.batched.set_max_batch_size(self.cfg.max_batch_size)  # type: ignore[attr-defined]
        self.batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def batched(self, feeds: list[dict]) -> list[np.ndarray]:
        out = self.model.run(concat(feeds))
        return np.split(out, np.cumsum([rows(f) for f in feeds])[:-1])

    @app.get("/health")
    def health(self) -> dict:
        sig = self.model.sig
        return {
            "status": "ok",
            **{k: self.pinned[k] for k in ("name", "version", "run_id", "requested")},
            "task": sig.task,
            "route": sig.route,
            "text": sig.text,
            "inputs": sig.inputs,
            "input_shape": sig.inputs[0]["shape"][1:] if len(sig.inputs) == 1 else None,
            "providers": self.model.session.get_providers(),
            "replica": self.replica,
        }

    async def _answer(self, route: str, request: Request) -> dict:
        if self.cfg.auth_token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.cfg.auth_token}".encode()):
                raise BadRequest(401, "missing or wrong bearer token (Authorization: Bearer <serve.auth_token>)")
        self.model.check_route(route)
        body = await read_body(request.stream(), request.headers.get("content-length"), self.limits.max_body_bytes)
        feed = self.model.feed(parse(body, self.limits), self.limits)
        out = await self.batched(feed) if self.cfg.batching else self.model.run(feed)
        return self.model.answer(out)

    async def _handle(self, route: str, request: Request):
        try:
            return await asyncio.wait_for(self._answer(route, request), self.cfg.request_timeout_s)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except asyncio.TimeoutError:
            return JSONResponse({"error": f"request took over request_timeout_s={self.cfg.request_timeout_s}"}, 504)

    @app.post("/predict", openapi_extra=BODY)
    async def predict(self, request: Request):
        """A classifier: ``{"inputs": [[...], ...]}`` (or inputs by name) or ``{"texts": [...]}``."""
        return await self._handle("/predict", request)

    @app.post("/embed", openapi_extra=BODY)
    async def embed(self, request: Request):
        """An embedding model: ``{"texts": [...]}`` -> ``{"embeddings": [[...]], "dim": N}``."""
        return await self._handle("/embed", request)
