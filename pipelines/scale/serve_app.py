"""The Serve deployment behind ``slimray serve``: a FastAPI ingress around an ONNX Runtime session.

Each replica downloads the registered model's ONNX file once (in ``__init__``) and answers
``/predict``. With batching on, concurrent requests are concatenated by ``@serve.batch`` into one
ORT call (the batch size and wait time come from the config at start-up) and the logits are split
back per request. Validation happens before batching, so a bad request never joins a batch.
(No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` type.)
"""

import json

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from pipelines.scale.serve_config import ServeConfig


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


app = FastAPI(title="slimray", description="Predictions of a model from the slimray registry (ONNX Runtime).")

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {
                            "type": "array",
                            "description": "a batch of samples in the model's input shape",
                            "items": {},
                        }
                    },
                    "example": {"inputs": [[0.0] * 4]},
                }
            }
        },
    }
}


@serve.deployment
@serve.ingress(app)
class ModelServer:
    def __init__(self, cfg: dict, tracking_uri: str):
        import ray
        import torch  # noqa: F401  (onnxruntime CUDA wheels find cuDNN through torch)

        from tasks.runtime.onnx import ort_session, providers_for

        self.cfg = ServeConfig(**{k: v for k, v in cfg.items() if k != "autoscaling"})
        self.model_uri = self.cfg.model
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.session = ort_session(
            fetch_onnx(self.model_uri, tracking_uri), self.cfg.threads, providers=providers_for(device)
        )
        first = self.session.get_inputs()[0]
        self.input_name, self.sample_shape = first.name, list(first.shape[1:])
        self.batched.set_max_batch_size(self.cfg.max_batch_size)  # type: ignore[attr-defined]
        self.batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def batched(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        logits = self.run(np.concatenate(batches))
        return np.split(logits, np.cumsum([len(b) for b in batches])[:-1])

    @app.get("/health")
    def health(self) -> dict:
        return {
            "status": "ok",
            "model": self.model_uri,
            "input_shape": self.sample_shape,
            "providers": self.session.get_providers(),
        }

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(self, request: Request):
        try:
            x = parse_inputs(await request.body(), self.sample_shape, self.cfg.max_request_rows)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        logits = await self.batched(x) if self.cfg.batching else self.run(x)
        return {"classes": logits.argmax(1).tolist(), "logits": logits.tolist()}
