"""One decoding API over torch, ONNX Runtime and OpenVINO, so the benchmark and the evaluation treat
the runtimes alike.

A ``Decoder`` has ``logits(ids [1,T]) -> [T,V]`` (one full forward, no cache: perplexity),
``generate(ids [B,T], max_new_tokens, eos_id) -> [B, max_new_tokens]`` (greedy with the KV cache) and
the two halves of generation for timing: ``prefill(ids) -> State`` (the prompt in one call; the state
holds the cache and the first new token: time to first token) and ``step(State) -> State`` (one
token per row through the cache: decode speed).

Greedy decoding is ``argmax`` of the last position's logits, as Hugging Face's ``generate`` with
``do_sample=False``. A batch is B prompts of equal length (no padding, all-ones mask). Generation
stops early only once every row has produced ``eos_id``; a row that is done is padded with ``eos_id``
(``generate``'s ``pad_token_id``), so the result is always [B, max_new_tokens].

``TorchDecoder`` (the reference) generates with Hugging Face ``generate`` and its ``DynamicCache``;
``OrtDecoder`` and ``OpenVinoDecoder`` run the ONNX of ``tasks.llm.export.export_decoder`` (or its
weight-compressed variants from ``tasks.llm.weights``) with the cache as numpy arrays fed back each
step. OpenVINO keeps the cache outside the graph too (no stateful model): one code path for all.
Its outputs are copied out of the infer request each call; a zero-copy variant (two requests in turn,
``share_inputs`` / ``share_outputs``) was measured on SmolLM2-135M FP32 and INT8 (2 threads, prompt
128) and gained nothing beyond the noise of a shared 2-CPU host, so the simple path stays.

For batching sequences of different lengths (``tasks.llm.engine``) every decoder also has
``forward(ids [B,S], attention_mask [B,P+S], position_ids [B,S], past) -> (logits [B,V], past)``: the
last position's logits, the cache as a flat list ``[key0, value0, key1, ...]`` of float32 numpy
arrays [B, kv_heads, P, head_dim] (``past=None``: empty). Rows are left-padded (mask 0 on padding,
position ids the true positions); ``pad_past`` / ``select_past`` / ``trim_past`` reshape the batch.
The exported ONNX honours a mask with zeros (tests/test_llm_engine.py checks it against torch).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import DynamicCache, GenerationConfig

from tasks.llm.export import ONNX_FILE, empty_past, io_names


@dataclasses.dataclass
class State:
    """Generation state after a call: ``token`` [B,1] is the next input, ``length`` the cached tokens."""

    cache: Any
    token: np.ndarray
    length: int


Past = list[np.ndarray]


class Decoder(Protocol):
    def forward(
        self, ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Past | None
    ) -> tuple[np.ndarray, Past]: ...
    def logits(self, ids: np.ndarray) -> np.ndarray: ...
    def generate(self, ids: np.ndarray, max_new_tokens: int, eos_id: int | None = None) -> np.ndarray: ...
    def prefill(self, ids: np.ndarray) -> State: ...
    def step(self, state: State) -> State: ...


def _check_ids(ids: np.ndarray, rows: int | None = None) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.dtype.kind not in "iu" or (rows and ids.shape[0] != rows):
        raise ValueError(f"ids: expected int64 [{rows or 'B'},T>0] token ids, got {ids.dtype} {list(ids.shape)}")
    return ids.astype(np.int64)


def pad_past(past: Past, length: int) -> Past:
    """``past`` left-padded with zero columns to ``length`` cached positions."""
    extra = length - past[0].shape[2]
    if extra <= 0:
        return past
    return [np.concatenate([np.zeros((*x.shape[:2], extra, x.shape[3]), x.dtype), x], axis=2) for x in past]


def select_past(past: Past, rows: np.ndarray | list[int], drop: int = 0) -> Past:
    """The cache of ``rows`` only, without its first ``drop`` (padding) columns, contiguous."""
    return [np.ascontiguousarray(x[rows, :, drop:]) for x in past]


def concat_past(parts: list[Past]) -> Past:
    """Caches of several row groups as one batch, each left-padded to the longest."""
    length = max(p[0].shape[2] for p in parts)
    padded = [pad_past(p, length) for p in parts]
    return [np.concatenate(layer, axis=0) for layer in zip(*padded)]


def greedy(decoder: Decoder, ids: np.ndarray, max_new_tokens: int, eos_id: int | None) -> np.ndarray:
    """Greedy tokens [B, max_new_tokens] through ``prefill`` / ``step`` (the module doc's stopping rule)."""
    ids = _check_ids(ids)
    out = np.full((ids.shape[0], max_new_tokens), -1 if eos_id is None else eos_id, np.int64)
    if max_new_tokens <= 0:
        return out
    done = np.zeros(ids.shape[0], bool)
    state = decoder.prefill(ids)
    for t in range(max_new_tokens):
        token = state.token[:, 0]
        out[:, t] = np.where(done, out[:, t], token)
        if eos_id is not None:
            done |= token == eos_id
            if done.all():
                break
        if t + 1 < max_new_tokens:
            state = decoder.step(state)
    return out


class TorchDecoder:
    """The PyTorch model itself (FP32, ``torch.no_grad``): the reference tokens and timings."""

    def __init__(self, model: torch.nn.Module):
        net: Any = model.eval()
        self.model = net
        self.vocab_size = int(net.config.vocab_size)

    def _forward(self, ids: np.ndarray, cache: DynamicCache | None, past: int) -> tuple[torch.Tensor, Any]:
        x = torch.from_numpy(ids)
        mask = torch.ones(x.shape[0], past + x.shape[1], dtype=torch.long)
        with torch.no_grad():
            out = self.model(input_ids=x, attention_mask=mask, cache=cache, use_cache=cache is not None)
        return out.logits, out.cache

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self._forward(_check_ids(ids, 1), None, 0)[0][0].numpy()

    def forward(
        self, ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Past | None
    ) -> tuple[np.ndarray, Past]:
        """Last-position logits [B,V] and the extended cache (module doc); numpy shared, not copied."""
        pairs = (
            [] if past is None else [(torch.from_numpy(k), torch.from_numpy(v)) for k, v in zip(past[::2], past[1::2])]
        )
        cache = DynamicCache(ddp_cache_data=pairs) if pairs else DynamicCache()
        with torch.no_grad():
            out = self.model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(attention_mask),
                position_ids=torch.from_numpy(position_ids),
                cache=cache,
                use_cache=True,
            )
        flat: Past = []
        for layer in out.cache.layers:
            flat += [layer.keys.numpy(), layer.values.numpy()]
        return out.logits[:, -1].numpy(), flat

    def prefill(self, ids: np.ndarray) -> State:
        ids = _check_ids(ids)
        logits, cache = self._forward(ids, DynamicCache(), 0)
        return State(cache, logits[:, -1:].argmax(-1).numpy(), ids.shape[1])

    def step(self, state: State) -> State:
        logits, cache = self._forward(state.token, state.cache, state.length)
        return State(cache, logits[:, -1:].argmax(-1).numpy(), state.length + 1)

    def generate(self, ids: np.ndarray, max_new_tokens: int, eos_id: int | None = None) -> np.ndarray:
        """Hugging Face ``generate`` (greedy, its own KV cache); rows padded with ``eos_id`` to full length."""
        ids = _check_ids(ids)
        x = torch.from_numpy(ids)
        pad = -1 if eos_id is None else eos_id
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id
        )
        with torch.no_grad():
            seq = self.model.generate(x, attention_mask=torch.ones_like(x), generation_config=config)
        new = seq[:, ids.shape[1] :].numpy()
        out = np.full((ids.shape[0], max_new_tokens), pad, np.int64)
        out[:, : new.shape[1]] = new
        return out


class _GraphDecoder:
    """Prefill / step / logits over a ``run(feed) -> [logits, *presents]`` graph (ORT or OpenVINO)."""

    io: dict

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def _call(self, ids: np.ndarray, past: dict[str, np.ndarray], length: int) -> tuple[np.ndarray, dict]:
        batch, seq = ids.shape
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((batch, length + seq), np.int64),
            "position_ids": np.broadcast_to(np.arange(length, length + seq, dtype=np.int64), (batch, seq)).copy(),
            **past,
        }
        logits, *presents = self.run(feed)
        return logits, dict(zip(self.io["past"], presents))

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return self._call(_check_ids(ids, 1), empty_past(self.io, 1), 0)[0][0]

    def forward(
        self, ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: Past | None
    ) -> tuple[np.ndarray, Past]:
        """Last-position logits [B,V] and the presents as the next past (module doc)."""
        feeds = empty_past(self.io, ids.shape[0]) if past is None else dict(zip(self.io["past"], past))
        logits, *presents = self.run(
            {"input_ids": ids, "attention_mask": attention_mask, "position_ids": position_ids, **feeds}
        )
        return logits[:, -1], presents

    def prefill(self, ids: np.ndarray) -> State:
        ids = _check_ids(ids)
        logits, past = self._call(ids, empty_past(self.io, ids.shape[0]), 0)
        return State(past, logits[:, -1:].argmax(-1), ids.shape[1])

    def step(self, state: State) -> State:
        logits, past = self._call(state.token, state.cache, state.length)
        return State(past, logits[:, -1:].argmax(-1), state.length + 1)

    def generate(self, ids: np.ndarray, max_new_tokens: int, eos_id: int | None = None) -> np.ndarray:
        return greedy(self, ids, max_new_tokens, eos_id)


def _io_of(inputs: dict[str, list]) -> dict:
    """``decoder_io`` rebuilt from a graph's inputs (name -> shape): layers counted, KV geometry read."""
    layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
    if layers == 0 or "input_ids" not in inputs:
        raise ValueError(f"decoder graph: inputs {list(inputs)[:4]}... are not export_decoder's (no past_key_values)")
    shape = inputs["past_key_values.0.key"]
    return io_names(layers, int(shape[1]), int(shape[3]))


class OrtDecoder(_GraphDecoder):
    """ONNX Runtime ``InferenceSession`` on ``files["model.onnx"]`` (``intra_op_num_threads=threads``)."""

    def __init__(self, files: dict[str, bytes], threads: int = 1):
        import onnxruntime as ort

        if ONNX_FILE not in files:
            raise ValueError(f"OrtDecoder: files {sorted(files)} have no {ONNX_FILE}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(files[ONNX_FILE], opts, providers=["CPUExecutionProvider"])
        self.io = _io_of({i.name: i.shape for i in self.session.get_inputs()})
        self.vocab_size = _static(self.session.get_outputs()[0].shape[-1])

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.io["outputs"], feed)


def read_openvino(files: dict[str, bytes]) -> Any:
    """An ``openvino.Model`` from ``{"model.onnx"}`` (ONNX front end) or ``{"model.xml", "model.bin"}`` (IR)."""
    import openvino as ov

    core = ov.Core()
    if "model.xml" in files and "model.bin" in files:
        return core.read_model(files["model.xml"].decode(), ov.Tensor(np.frombuffer(files["model.bin"], np.uint8)))
    if ONNX_FILE not in files:
        raise ValueError(f"OpenVinoDecoder: files {sorted(files)} hold neither model.onnx nor model.xml + model.bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_FILE
        path.write_bytes(files[ONNX_FILE])
        return core.read_model(str(path))


def _static(dim: Any) -> int:
    """A graph dimension as an int, 0 when it is dynamic (a name or -1): the vocabulary, when known."""
    return dim if isinstance(dim, int) and dim > 0 else 0


def _dims(shape: Any) -> list:
    """An OpenVINO partial shape as a list (-1 for a dynamic axis)."""
    return [d.get_length() if d.is_static else -1 for d in shape]


class OpenVinoDecoder(_GraphDecoder):
    """OpenVINO on the CPU (``INFERENCE_NUM_THREADS=threads``, FP32 activations, latency hint)."""

    def __init__(self, files: dict[str, bytes], threads: int = 1):
        import openvino as ov

        model = read_openvino(files)
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        # an input port may carry several tensor names (OpenVINO fuses): index it under each of them
        self.io = _io_of({n: _dims(i.get_partial_shape()) for i in self.compiled.inputs for n in i.get_names()})
        self.outputs = [next(o for o in self.compiled.outputs if n in o.get_names()) for n in self.io["outputs"]]
        self.vocab_size = _static(_dims(self.outputs[0].get_partial_shape())[-1])

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feed)
        return [np.array(result[o]) for o in self.outputs]
