"""The Ray Serve deployment of a served model: a FastAPI ingress around ``tasks.serving.model``.

One class serves both paths a model takes to an endpoint: ``slimray serve`` (``pipelines.scale``,
which hands it a loader of the ONE pinned registry version) and the benchmark's served
measurement (``tasks.serving.load``, which hands it a candidate's ONNX bytes). Each replica loads
its model in ``__init__``, so it is ready only once the model has loaded. Routes follow the model's
task kind (``tasks.serving.model``): ``/predict`` for classifiers (arrays or texts), ``/embed`` for
embedding models. Every request is bounded before the work it would cause
(``tasks.serving.limits``): body size while reading, JSON nesting and size, text lengths, a
timeout; with ``auth_token`` set, a bearer token. With batching on, concurrent requests are
concatenated by ``@serve.batch`` into one ORT call and split back. Under ``ingress=grpc`` the same
routes are the gRPC methods ``Predict`` and ``Embed`` (``tasks.serving.grpc_ingress``): the same
JSON body in a ``BytesValue``, bounded and answered by the same code.

``cfg`` is a plain dict with the keys of ``slimray serve``'s config that a replica reads (threads,
batching, max_batch_size, batch_wait_timeout_s, request_timeout_s, auth_token and the request
limits); ``load(threads, providers)`` returns the ``ServedModel``.
(No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` type.)
"""

import asyncio
import hmac
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from tasks.serving.limits import BadRequest, Limits, parse, read_body
from tasks.serving.model import ServedModel, concat, rows

# the keys of a replica's cfg that bound requests, as named in ``slimray serve``'s config
LIMIT_KEYS = (
    "max_body_bytes",
    "max_json_depth",
    "max_json_elements",
    "max_request_rows",
    "max_text_chars",
    "max_batch_chars",
)


def limits_of(cfg) -> Limits:
    return Limits(*(getattr(cfg, k) for k in LIMIT_KEYS))


def authorize(token: str, given: str) -> None:
    """With ``token`` set, the ``Authorization`` header ``given`` must be ``Bearer <token>`` (401)."""
    if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise BadRequest(401, "missing or wrong bearer token (Authorization: Bearer <serve.auth_token>)")


def model_from_bytes(onnx_bytes: bytes, threads: int, providers: list[str] | None = None) -> ServedModel:
    """A served array model from its ONNX bytes alone (no ``serving.json``: its graph's inputs)."""
    return ServedModel(onnx_bytes, None, threads, providers)


app = FastAPI(title="slimray", description="A model from the slimray registry (ONNX Runtime).")
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


@serve.deployment
@serve.ingress(app)
class ModelServer:
    def __init__(self, cfg: dict, load: Callable[..., ServedModel], pinned: dict):
        import ray
        import torch  # noqa: F401  (onnxruntime CUDA wheels find cuDNN through torch)

        from tasks.runtime.onnx import providers_for

        self.cfg = SimpleNamespace(**cfg)
        self.pinned, self.limits = pinned, limits_of(self.cfg)
        providers = providers_for("cuda" if ray.get_gpu_ids() else "cpu")
        self.model = load(self.cfg.threads, providers)
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
            "runtime": self.model.runtime,
            "providers": self.model.session.get_providers(),
            "replica": self.replica,
        }

    def _authorize(self, given: str) -> None:
        authorize(self.cfg.auth_token, given)

    async def _compute(self, body: bytes) -> dict:
        feed = self.model.feed(parse(body, self.limits), self.limits)
        out = await self.batched(feed) if self.cfg.batching else self.model.run(feed)
        return self.model.answer(out)

    async def _answer(self, route: str, request: Request) -> dict:
        self._authorize(request.headers.get("authorization", ""))
        self.model.check_route(route)
        body = await read_body(request.stream(), request.headers.get("content-length"), self.limits.max_body_bytes)
        return await self._compute(body)

    async def _handle(self, route: str, request: Request):
        try:
            return await asyncio.wait_for(self._answer(route, request), self.cfg.request_timeout_s)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except asyncio.TimeoutError:
            return JSONResponse({"error": f"request took over request_timeout_s={self.cfg.request_timeout_s}"}, 504)

    async def _grpc_answer(self, method: str, body: bytes, grpc_context) -> dict:
        from tasks.serving.grpc_ingress import METHODS

        self._authorize(dict(grpc_context.invocation_metadata()).get("authorization", ""))
        if METHODS[method] != self.model.sig.route:
            right = next(m for m, route in METHODS.items() if route == self.model.sig.route)
            raise BadRequest(404, f"this model answers slimray.Model/{right}, not {method}")
        if len(body) > self.limits.max_body_bytes:
            raise BadRequest(413, f"body of {len(body)} bytes exceeds max_body_bytes={self.limits.max_body_bytes}")
        return await self._compute(body)

    async def _grpc(self, method: str, request, grpc_context):
        """A gRPC call: the answer, or an empty reply with the error's status code and one-line details."""
        from tasks.serving.grpc_ingress import STATUS, reply

        try:
            return reply(
                await asyncio.wait_for(
                    self._grpc_answer(method, request.value, grpc_context), self.cfg.request_timeout_s
                )
            )
        except BadRequest as e:
            grpc_context.set_code(STATUS[e.status])
            grpc_context.set_details(str(e))
        except asyncio.TimeoutError:
            grpc_context.set_code(STATUS[504])
            grpc_context.set_details(f"request took over request_timeout_s={self.cfg.request_timeout_s}")
        return reply({})

    async def Predict(self, request, grpc_context):  # noqa: N802 - the gRPC method's name
        """``/predict`` over gRPC: ``slimray.Model/Predict`` with the JSON body in a ``BytesValue``."""
        return await self._grpc("Predict", request, grpc_context)

    async def Embed(self, request, grpc_context):  # noqa: N802 - the gRPC method's name
        """``/embed`` over gRPC: ``slimray.Model/Embed``."""
        return await self._grpc("Embed", request, grpc_context)

    @app.post("/predict", openapi_extra=BODY)
    async def predict(self, request: Request):
        """A classifier: ``{"inputs": [[...], ...]}`` (or inputs by name) or ``{"texts": [...]}``."""
        return await self._handle("/predict", request)

    @app.post("/embed", openapi_extra=BODY)
    async def embed(self, request: Request):
        """An embedding model: ``{"texts": [...]}`` -> ``{"embeddings": [[...]], "dim": N}``."""
        return await self._handle("/embed", request)
