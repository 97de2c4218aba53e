"""OpenVINO decoding with the KV cache kept inside the plugin (a *stateful* graph), as optimum-intel
and openvino-genai run their LLMs.

``tasks.llm.decoder.OpenVinoDecoder`` feeds the cache in and reads it out every token: on SmolLM2-135M
(2 cores) that copy held FP32 decoding to 7 tokens/s where optimum-intel's stateful INT4 made 33.
Here OpenVINO's ``MakeStateful`` transformation turns every ``past_key_values.{i}.*`` input /
``present.{i}.*`` output pair of the exported graph (``tasks.llm.export``) into one internal variable
(``ReadValue`` / ``Assign``): a call feeds only ``input_ids``, ``attention_mask`` and ``position_ids``
and returns only the logits. ``prefill`` resets the variables to an empty [B, kv_heads, 0, head_dim]
cache for its batch, so the request holds ONE batch of sequences at a time: the benchmark's prefill /
step timing and greedy generation, not the serving engine's merged batches (which re-pad the cache
and keep using ``OpenVinoDecoder``).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from tasks.llm.decoder import State, _check_ids, greedy, read_openvino


def make_stateful(model: Any) -> tuple[Any, int, int]:
    """``model`` with its cache inputs/outputs made internal variables; returns (model, kv_heads, head_dim)."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    names = {n for i in model.inputs for n in i.get_names()}
    layers = sum(1 for n in names if n.startswith("past_key_values.") and n.endswith(".key"))
    if layers == 0:
        raise ValueError(f"decoder graph: inputs {sorted(names)[:4]}... have no past_key_values (not export_decoder's)")
    shape = model.input("past_key_values.0.key").get_partial_shape()
    pairs = {f"past_key_values.{i}.{kv}": f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")}
    apply_make_stateful_transformation(model, pairs)
    return model, shape[1].get_length(), shape[3].get_length()


class StatefulOpenVinoDecoder:
    """The ``tasks.llm.decoder.Decoder`` API on a stateful OpenVINO graph (CPU, ``threads`` threads, FP32
    activations, latency hint). ``State.cache`` is unused: the cache lives in the infer request."""

    def __init__(self, files: dict[str, bytes], threads: int = 1):
        import openvino as ov

        model, self.kv_heads, self.head_dim = make_stateful(read_openvino(files))
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.logits_port = self.compiled.output("logits")
        self._tensor = ov.Tensor

    def _reset(self, batch: int) -> None:
        """Every cache variable set to an empty cache of ``batch`` rows (its default would have none)."""
        self.request.reset_state()
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        for variable in self.request.query_state():
            variable.state = self._tensor(empty)

    def _call(self, ids: np.ndarray, length: int) -> np.ndarray:
        batch, seq = ids.shape
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((batch, length + seq), np.int64),
            "position_ids": np.broadcast_to(np.arange(length, length + seq, dtype=np.int64), (batch, seq)).copy(),
        }
        return self.request.infer(feed)[self.logits_port]

    def logits(self, ids: np.ndarray) -> np.ndarray:
        ids = _check_ids(ids, 1)
        self._reset(1)
        return np.array(self._call(ids, 0)[0])

    def prefill(self, ids: np.ndarray) -> State:
        ids = _check_ids(ids)
        self._reset(ids.shape[0])
        return State(None, self._call(ids, 0)[:, -1:].argmax(-1), ids.shape[1])

    def step(self, state: State) -> State:
        return State(None, self._call(state.token, state.length)[:, -1:].argmax(-1), state.length + 1)

    def generate(self, ids: np.ndarray, max_new_tokens: int, eos_id: int | None = None) -> np.ndarray:
        return greedy(cast(Any, self), ids, max_new_tokens, eos_id)  # no forward(): the engine cannot use it
