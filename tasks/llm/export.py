"""A Hugging Face causal LM as ONE ONNX graph with an explicit KV cache, so ONNX Runtime and OpenVINO
run prefill and decode from the same file.

Graph inputs: ``input_ids`` [B,S], ``attention_mask`` [B,P+S], ``position_ids`` [B,S] and, per layer i,
``past_key_values.{i}.key`` / ``.value`` [B, kv_heads, P, head_dim]; outputs ``logits`` [B,S,V] and
``present.{i}.key`` / ``.value`` [B, kv_heads, P+S, head_dim]. B, S and P are dynamic: prefill feeds
P = 0 (empty past tensors), each decode step feeds S = 1 and the presents of the previous call. This is
the layout of Hugging Face's own ONNX LLM exports (optimum's ``decoder_model_merged`` without the
``use_cache_branch`` switch: an empty past does the same job).

transformers 5 passes the cache as a ``Cache`` object (``cache=``, ``DynamicCache``), not as tuples:
``FlatCacheLM`` builds a ``DynamicCache`` from the flat past tensors (``ddp_cache_data``: one
``(key, value)`` pair per layer, each ``DynamicLayer.update`` concatenates along the sequence axis)
and returns the cache's layers flat again. Grouped-query attention (kv_heads < heads) needs nothing
special: the cache holds the kv heads, the model repeats them inside attention.

Exporter choice (measured, torch 2.13 CPU, the 4-layer test Llama): both exporters give logits within
3e-7 of torch for prefill (P=0) and decode (S=1) shapes not seen while tracing. The TorchScript
exporter (``dynamo=False``) takes 0.7 s; the ``torch.export`` one (``dynamo=True``) 14 s and a larger
file (the rotary tables as constants). The TorchScript exporter is used, so the tests re-export in
seconds (SmolLM2-135M: 70 s, 539 MB, on 2 shared CPUs). Its one risk, a Python branch on
a shape frozen at trace time (transformers' mask code branches on ``q_length == 1``), is why the
example traced has S = 2 and P = 1 (neither 0 nor 1) and why the parity test checks S = 1, P = 0.

135M parameters in FP32 are ~540 MB, under protobuf's 2 GB, so the graph is one file with its
weights inside (no external data).

Tied embeddings (SmolLM2, most small LMs): the exporter's constant folding stores the LM head's weight
as a second, transposed copy of the embedding table (113 MB more for SmolLM2's 49152 x 576).
``tie_lm_head`` puts the sharing back: the head ``MatMul`` reads ``Transpose(embedding)``, one table
on disk; OpenVINO folds the transpose into its ``MatMul`` (``transpose_b``) on the same constant.
``untie_lm_head`` undoes it for ONNX Runtime's ``MatMulNBits`` quantizer, which only takes a
``MatMul`` whose weight is an initializer (``tasks.llm.weights.ort_int4``).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn
from transformers import DynamicCache

OPSET = 17
ONNX_FILE = "model.onnx"


def _kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config (``head_dim`` explicit or hidden / heads)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def decoder_io(config: Any) -> dict:
    """The graph's input / output names and KV geometry (JSON-able), read by the runtimes' sessions."""
    return io_names(*_kv_shape(config), config.vocab_size)


def io_names(layers: int, kv_heads: int, head_dim: int, vocab_size: int = 0) -> dict:
    """``decoder_io`` from the geometry itself (a runtime rebuilds it from the graph's inputs)."""
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return {
        "inputs": ["input_ids", "attention_mask", "position_ids", *past],
        "outputs": ["logits", *present],
        "past": past,
        "present": present,
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab_size,
    }


def empty_past(io_names: dict, batch: int) -> dict[str, Any]:
    """Zero-length past tensors [batch, kv_heads, 0, head_dim] (float32 numpy) for a prefill call."""
    shape = (batch, io_names["kv_heads"], 0, io_names["head_dim"])
    return {name: np.zeros(shape, np.float32) for name in io_names["past"]}


class FlatCacheLM(nn.Module):
    """``model`` with a flat-tensor KV interface: (ids, mask, positions, *past) -> (logits, *present)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.layers = _kv_shape(model.config)[0]

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True
        )
        flat: list[Tensor] = []
        for layer in out.cache.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def _example(config: Any) -> tuple[Tensor, ...]:
    """Trace inputs: B=2, S=2, P=1, so no traced shape is 0 or 1 (no branch frozen on them)."""
    layers, kv_heads, head_dim = _kv_shape(config)
    batch, seq, past = 2, 2, 1
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv = [torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)]
    return (ids, mask, pos, *kv)


def export_decoder(model: nn.Module) -> dict[str, bytes]:
    """``{"model.onnx": bytes}``: the causal LM with explicit past/present key-values (module doc)."""
    if not hasattr(model, "config") or not hasattr(model.config, "num_hidden_layers"):
        raise ValueError(f"export_decoder: {type(model).__name__} is not a Hugging Face causal LM (no config)")
    names = decoder_io(model.config)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    axes.update({n: {0: "batch", 2: "past"} for n in names["past"]})
    axes.update({n: {0: "batch", 2: "total"} for n in names["present"]})
    wrapper = FlatCacheLM(model).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on every shape branch, the exporter's deprecation
        torch.onnx.export(
            wrapper,
            _example(model.config),
            buf,  # type: ignore[arg-type]  # a file-like object is accepted (the TorchScript exporter)
            dynamo=False,
            opset_version=OPSET,
            input_names=names["inputs"],
            output_names=names["outputs"],
            dynamic_axes=axes,
        )
    return {ONNX_FILE: tie_lm_head(buf.getvalue())}


def _tied_pair(model: onnx.ModelProto) -> tuple[str, str] | None:
    """(embedding, head) initializer names when a MatMul weight is exactly a Gather table transposed."""
    inits = {i.name: i for i in model.graph.initializer}
    tables = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits}
    heads = {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    for table in tables:
        dims = list(inits[table].dims)
        for head in heads:
            if len(dims) == 2 and list(inits[head].dims) == dims[::-1]:
                if np.array_equal(numpy_helper.to_array(inits[head]), numpy_helper.to_array(inits[table]).T):
                    return table, head
    return None


def tie_lm_head(onnx_bytes: bytes) -> bytes:
    """The graph with its LM head reading ``Transpose(embedding)`` instead of a transposed copy."""
    model = onnx.load_from_string(onnx_bytes)
    pair = _tied_pair(model)
    if pair is None:
        return onnx_bytes
    table, head = pair
    kept = [i for i in model.graph.initializer if i.name != head]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.node.insert(0, helper.make_node("Transpose", [table], [head], name="lm_head_tied", perm=[1, 0]))
    return model.SerializeToString()


def untie_lm_head(onnx_bytes: bytes) -> bytes:
    """The inverse of ``tie_lm_head``: the head's weight as its own (transposed) initializer."""
    model = onnx.load_from_string(onnx_bytes)
    node = next((n for n in model.graph.node if n.name == "lm_head_tied"), None)
    if node is None:
        return onnx_bytes
    table = next(i for i in model.graph.initializer if i.name == node.input[0])
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(table).T.copy(), node.output[0]))
    model.graph.node.remove(node)
    return model.SerializeToString()
