"""A registered model as served: its ONNX graph, its signature and, for a text model, its tokenizer.

A model version carries ``serving.json`` (the task kind, the graph's inputs by name/dtype/shape and
whether it takes text) and, for a text model, the tokenizer's files beside it (MLflow's
``extra_files/`` of the logged model); both are written at registration (``serving_files``), so
serving never fetches anything from a hub. A version
without ``serving.json`` (registered before it existed) is an array classifier.

Routes follow the task kind: a classifier answers ``POST /predict`` (``{"inputs": ...}`` for an array
model, ``{"texts": [...]}`` for a text model) with class ids and logits, and with label names and
probabilities when its folder's ``id2label`` names the classes; an embedding model ``POST /embed``. A request to the
other route gets a 404 naming the right one. Multi-input graphs are fed by name:
``{"inputs": {"input_ids": [[...]], "attention_mask": [[...]], ...}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.serving.limits import BadRequest, Limits, texts_of

SERVING_FILE = "serving.json"
SERVING_RUNTIMES = ("onnxruntime", "openvino")  # what serves a version: the runtime it was selected for
TOKENIZER_FILES = (
    *("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"),
    *("vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model"),  # BPE and SentencePiece vocabularies
)
_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}
_ONNX_DTYPES = {1: "float32", 7: "int64", 6: "int32"}


def graph_inputs(onnx_bytes: bytes) -> list[dict]:
    """The graph's inputs: name, dtype and shape (a symbolic dimension is None)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    init = {i.name for i in graph.initializer}
    out = []
    for i in graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out.append({"name": i.name, "dtype": _ONNX_DTYPES.get(t.elem_type, "float32"), "shape": dims})
    return out


def serving_files(onnx_bytes: bytes, task: str, tokenizer: str = "", max_length: int = 0) -> dict[str, bytes]:
    """``serving.json`` and, when ``tokenizer`` names a model folder or package, its tokenizer files
    (and the label names of its ``config.json`` ``id2label``, when it is a classifier's folder)."""
    files: dict[str, bytes] = {}
    labels: list[str] = []
    if tokenizer:
        from tasks.models.transformer import package_dir

        folder = package_dir(tokenizer)
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                files[name] = (folder / name).read_bytes()
        if "tokenizer_config.json" not in files:
            raise ValueError(f"tokenizer '{tokenizer}': {folder} has no tokenizer_config.json")
        labels = label_names(folder) if task == "classification" else []
    sig = {"task": task, "inputs": graph_inputs(onnx_bytes), "text": bool(tokenizer), "max_length": max_length}
    sig["labels"] = labels
    files[SERVING_FILE] = json.dumps(sig, indent=2).encode()
    return files


def label_names(folder: Path) -> list[str]:
    """A classifier folder's ``id2label`` as a list by class id; [] without one (or with the
    ``LABEL_<i>`` names ``transformers`` makes up when a config has none)."""
    path = folder / "config.json"
    id2label = json.loads(path.read_text()).get("id2label") if path.is_file() else None
    if not isinstance(id2label, dict) or not id2label:
        return []
    names = {int(k): str(v) for k, v in id2label.items()}
    if sorted(names) != list(range(len(names))) or all(v == f"LABEL_{k}" for k, v in names.items()):
        return []
    return [names[i] for i in range(len(names))]


@dataclass
class Signature:
    task: str  # classification | embedding
    inputs: list[dict]
    text: bool
    max_length: int
    labels: list[str] = field(default_factory=list)  # class names by id, when the model has them

    @property
    def route(self) -> str:
        return "/embed" if self.task == "embedding" else "/predict"


def _dim(d) -> int | None:
    return d if isinstance(d, int) else None


def load_signature(folder: Path | None, session) -> Signature:
    """``serving.json`` in ``folder``, or an array classifier from the session's inputs."""
    path = folder / SERVING_FILE if folder is not None else None
    if path is not None and path.is_file():
        return Signature(**json.loads(path.read_text()))
    inputs = [
        {"name": i.name, "dtype": _DTYPES.get(i.type, "float32"), "shape": [_dim(d) for d in i.shape]}
        for i in session.get_inputs()
    ]
    return Signature("classification", inputs, False, 0)


def _array(values, spec: dict, max_rows: int) -> np.ndarray:
    """One input's batch as ``spec``'s dtype and shape, or ``BadRequest``."""
    name, sample = spec["name"], spec["shape"][1:]
    if not isinstance(values, list) or not values:
        raise BadRequest(422, f"inputs: empty batch for '{name}' (expected a non-empty list of samples)")
    if len(values) > max_rows:
        raise BadRequest(413, f"inputs: batch of {len(values)} samples exceeds max_request_rows={max_rows}")
    try:
        arr = np.asarray(values)
    except ValueError:
        want = ", ".join("?" if d is None else str(d) for d in sample)
        raise BadRequest(422, f"inputs: ragged samples for '{name}' (expected [N, {want}])") from None
    if arr.dtype.kind not in "iuf":
        raise BadRequest(422, f"inputs: values of '{name}' must be numbers")
    if arr.ndim != 1 + len(sample) or any(e is not None and e != a for e, a in zip(sample, arr.shape[1:])):
        want = ", ".join("?" if d is None else str(d) for d in sample)
        raise BadRequest(422, f"inputs: shape {list(arr.shape)} of '{name}' does not match the model's [N, {want}]")
    if spec["dtype"].startswith("int") and arr.dtype.kind == "f":
        raise BadRequest(422, f"inputs: '{name}' takes integers")
    return arr.astype(spec["dtype"])


class ServedModel:
    """An ORT session with its signature and tokenizer; ``feed`` turns a request into graph inputs."""

    def __init__(
        self,
        onnx_bytes: bytes,
        folder: Path | None,
        threads: int,
        providers: list[str] | None = None,
        runtime: str = "onnxruntime",
    ):
        from tasks.runtime.onnx import ort_session

        if runtime not in SERVING_RUNTIMES:
            raise ValueError(f"runtime '{runtime}' is not one of {SERVING_RUNTIMES}")
        if runtime == "openvino":  # the version was selected on OpenVINO (tag slimray.runtime)
            from tasks.runtime.openvino import ServingSession

            self.session = ServingSession(onnx_bytes, threads)
        else:
            self.session = ort_session(onnx_bytes, threads, providers=providers)
        self.runtime = runtime
        self.note = ""  # why its files were not verified, when they could not be (pipelines.scale.serve_app)
        self.sig = load_signature(folder, self.session)
        self.tokenizer = None
        if self.sig.text:
            from transformers import AutoTokenizer

            if folder is None or not (folder / "tokenizer_config.json").is_file():
                raise ValueError(f"text model without its tokenizer files beside {SERVING_FILE}")
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def check_route(self, route: str) -> None:
        if route != self.sig.route:
            kind = "an embedding model" if self.sig.task == "embedding" else "a classifier"
            raise BadRequest(404, f"this model is {kind}: use POST {self.sig.route}")

    def feed(self, doc: dict, limits: Limits) -> dict[str, np.ndarray]:
        """The graph's inputs by name, from ``{"texts": [...]}`` or ``{"inputs": ...}``."""
        if self.tokenizer is not None and "texts" in doc:
            texts = texts_of(doc, limits)
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.sig.max_length or None)
            return {i["name"]: np.asarray(enc[i["name"]], dtype=i["dtype"]) for i in self.sig.inputs}
        if "inputs" not in doc:
            want = '{"texts": ["...", ...]}' if self.tokenizer is not None else '{"inputs": [[...], ...]}'
            raise BadRequest(422, f"body must be a JSON object {want}")
        inputs = doc["inputs"]
        if len(self.sig.inputs) == 1 and not isinstance(inputs, dict):
            return {self.sig.inputs[0]["name"]: _array(inputs, self.sig.inputs[0], limits.max_rows)}
        names = [i["name"] for i in self.sig.inputs]
        if not isinstance(inputs, dict) or set(inputs) != set(names):
            raise BadRequest(422, f"inputs: an object with exactly the model's inputs {names}")
        feed = {s["name"]: _array(inputs[s["name"]], s, limits.max_rows) for s in self.sig.inputs}
        if len({len(v) for v in feed.values()}) != 1:
            raise BadRequest(422, f"inputs: {names} must have the same number of samples")
        return feed

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]

    def answer(self, out: np.ndarray) -> dict:
        if self.sig.task == "embedding":
            return {"embeddings": out.tolist(), "dim": int(out.shape[1])}
        answer = {"classes": out.argmax(1).tolist(), "logits": out.tolist()}
        if self.sig.labels and out.shape[1] == len(self.sig.labels):
            z = np.exp(out - out.max(1, keepdims=True))
            answer["labels"] = [self.sig.labels[i] for i in answer["classes"]]
            answer["probabilities"] = (z / z.sum(1, keepdims=True)).round(6).tolist()
        return answer


def concat(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch from several requests' feeds; token inputs of other lengths are zero-padded on dim 1."""
    out = {}
    for name in feeds[0]:
        parts = [f[name] for f in feeds]
        if parts[0].ndim == 2 and len({p.shape[1] for p in parts}) > 1:
            width = max(p.shape[1] for p in parts)
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts]
        out[name] = np.concatenate(parts)
    return out


def rows(feed: dict[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))
