"""Causal-LM runtimes (tasks/llm/export, decoder, weights, timing) on the tiny random Llama: the ONNX
with an explicit KV cache matches torch for prefill and cached decode steps, the three runtimes
produce torch's greedy tokens, and NNCF / MatMulNBits weight-only variants load, shrink and run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.llm.decoder import OpenVinoDecoder, OrtDecoder, TorchDecoder, read_openvino
from tasks.llm.export import FlatCacheLM, decoder_io, export_decoder, untie_lm_head
from tasks.llm.stateful import StatefulOpenVinoDecoder, make_stateful
from tasks.llm.timing import memory_bandwidth_gbs, peak_rss_mb, time_generation
from tasks.llm.weights import describe_compression, files_size, nncf_weights, ort_int4
from tests.lm_models import tiny_llama, varied_llama

VOCAB_IN_USE = 300


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return varied_llama(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def files(model):
    return export_decoder(model)


def ids_of(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB_IN_USE, (batch, length)).astype(np.int64)


def test_onnx_matches_torch_for_prefill_and_three_cached_decode_steps(model, files):
    import onnxruntime as ort

    io = decoder_io(model.config)
    session = ort.InferenceSession(files["model.onnx"])
    assert [i.name for i in session.get_inputs()] == io["inputs"]
    assert [o.name for o in session.get_outputs()] == io["outputs"]
    ids = torch.from_numpy(ids_of(2, 7))
    past = [torch.zeros(2, io["kv_heads"], 0, io["head_dim"]) for _ in io["past"]]
    wrapper = FlatCacheLM(model)
    for _ in range(4):  # prefill (P=0, S=7), then S=1 with P=7, 8, 9
        length = past[0].shape[2]
        mask = torch.ones(2, length + ids.shape[1], dtype=torch.long)
        pos = torch.arange(length, length + ids.shape[1]).expand_as(ids).contiguous()
        with torch.no_grad():
            want = wrapper(ids, mask, pos, *past)
        feed = {n: t.numpy() for n, t in zip(io["inputs"], (ids, mask, pos, *past))}
        got = session.run(None, feed)
        assert got[0].shape == (2, ids.shape[1], model.config.vocab_size)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
        assert got[1].shape[2] == length + ids.shape[1]
        past = [torch.from_numpy(p) for p in got[1:]]
        ids = torch.from_numpy(got[0][:, -1:].argmax(-1))


def test_tied_head_is_stored_once_and_untie_restores_the_copy(model, files):
    graph = onnx.load_from_string(files["model.onnx"]).graph
    table = model.config.vocab_size * model.config.hidden_size
    big = [i for i in graph.initializer if np.prod(i.dims) == table]
    assert len(big) == 1
    untied = onnx.load_from_string(untie_lm_head(files["model.onnx"])).graph
    assert len([i for i in untied.initializer if np.prod(i.dims) == table]) == 2


def test_greedy_tokens_identical_on_torch_ort_openvino(model, files):
    ids = ids_of(3, 9)
    want = TorchDecoder(model).generate(ids, 16)
    assert want.shape == (3, 16) and len(np.unique(want)) > 4  # a sequence that varies, not one repeated token
    stateful = StatefulOpenVinoDecoder(files, 1)
    for decoder in (OrtDecoder(files, 1), OpenVinoDecoder(files, 1), stateful):
        np.testing.assert_array_equal(decoder.generate(ids, 16), want)
        logits = decoder.logits(ids[:1])
        assert logits.shape == (9, model.config.vocab_size)
        np.testing.assert_allclose(logits, TorchDecoder(model).logits(ids[:1]), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(stateful.generate(ids[1:], 16), want[1:])  # a new batch resets the cache


def test_stateful_openvino_takes_only_tokens_and_needs_a_cache_graph(files):
    names = {n for i in StatefulOpenVinoDecoder(files, 1).compiled.inputs for n in i.get_names()}
    assert names == {"input_ids", "attention_mask", "position_ids"}
    with pytest.raises(ValueError, match="no past_key_values"):
        make_stateful(read_openvino({"model.onnx": _plain_matmul()}))


def _plain_matmul() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_generation_stops_when_every_row_hit_eos_and_pads_with_it(model, files):
    ids = ids_of(2, 6, seed=1)
    free = TorchDecoder(model).generate(ids, 12)
    eos = int(free[0, 2])
    for decoder in (TorchDecoder(model), OrtDecoder(files, 1)):
        out = decoder.generate(ids, 12, eos_id=eos)
        assert out.shape == (2, 12)
        first = int(np.argmax(out[0] == eos))
        assert first <= 2 and (out[0, first:] == eos).all()  # row 0 padded with eos after its eos
        row1 = free[1]
        stop = int(np.argmax(row1 == eos)) if (row1 == eos).any() else 12
        np.testing.assert_array_equal(out[1, :stop], row1[:stop])


def test_bad_ids_name_the_problem(files):
    with pytest.raises(ValueError, match="ids: expected int64"):
        OrtDecoder(files, 1).generate(np.zeros((3,), np.int64), 4)
    with pytest.raises(ValueError, match="no model.onnx"):
        OrtDecoder({"model.xml": b""}, 1)


@pytest.mark.slow
def test_nncf_int8_and_int4_shrink_and_keep_torch_tokens_close(model, files):
    ids = ids_of(1, 10)
    want = TorchDecoder(model).logits(ids)
    int8 = nncf_weights(files, "int8")
    int4 = nncf_weights(files, "int4", group_size=16)
    d8, d4 = describe_compression(int8), describe_compression(int4)
    assert set(d8["weights"]) == {"u8"} and d8["embedding"] == "u8" and d8["tied"]
    assert d4["weights"]["u4"] > d4["weights"]["u8"] and d4["lm_head"] == "u8"  # INT8 backup for the head
    assert describe_compression(nncf_weights(files, "int4", group_size=16, all_layers=True))["lm_head"] == "u4"
    assert files_size(int4) < files_size(int8) < files_size(files)
    err8 = np.abs(OpenVinoDecoder(int8, 1).logits(ids) - want).max()
    err4 = np.abs(OpenVinoDecoder(int4, 1).logits(ids) - want).max()
    assert err8 < err4 and err8 < 0.05 * np.abs(want).max()


@pytest.mark.slow
def test_nncf_data_aware_int4_is_as_close_to_torch_as_data_free(tmp_path):
    """AWQ + scale estimation on the calibration rows: no worse than round-to-nearest INT4. (On a
    transpose_b=False MatMul NNCF's scale estimation fit the wrong axis: at hidden 128, group 32 it
    took this model's next-token agreement from 0.97 to 0.0, as on SmolLM2.)"""
    net = AutoModelForCausalLM.from_pretrained(tiny_llama(tmp_path, hidden_size=128, intermediate_size=256)).eval()
    files = export_decoder(net)
    calib = [ids_of(1, 12, seed=s) for s in range(3)]
    out = nncf_weights(files, "int4", group_size=32, awq=True, scale_estimation=True, calib=calib)
    plain = nncf_weights(files, "int4", group_size=32)
    assert describe_compression(out)["weights"]["u4"] == describe_compression(plain)["weights"]["u4"] > 0
    ids = ids_of(1, 32, seed=7)
    want = TorchDecoder(net).logits(ids)
    err = {k: np.abs(OpenVinoDecoder(f, 1).logits(ids) - want).mean() for k, f in (("aware", out), ("free", plain))}
    assert err["aware"] < 1.5 * err["free"], err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="int4", group_size=24), "group_size: 24 does not divide the hidden size 64"),
        (dict(mode="int4", awq=True), "calib: awq / scale_estimation need calibration"),
        (dict(mode="int3"), "mode: 'int3'"),
        (dict(mode="int4", ratio=0.0), "ratio: 0.0"),
    ],
)
def test_nncf_bad_settings_are_one_line_errors(files, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        nncf_weights(files, **kwargs)
    assert "\n" not in str(err.value)


def test_ort_int4_quantizes_the_head_and_keeps_the_embedding(model, files):
    out = ort_int4(files, block_size=16)
    info = describe_compression(out)
    assert info["lm_head"] == "int4" and info["embedding"] == "float32" and not info["tied"]
    assert files_size(out) < files_size(files)
    nodes = [n.op_type for n in onnx.load_from_string(out["model.onnx"]).graph.node]
    assert "MatMulNBits" in nodes and "Gather" in nodes
    ids = ids_of(1, 10)
    got, want = OrtDecoder(out, 1).logits(ids), TorchDecoder(model).logits(ids)
    assert not np.allclose(got, want) and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.8  # 4-bit, not noise


def test_time_generation_reports_medians_within_their_spread(files):
    decoder = OrtDecoder(files, 1)
    one = time_generation(decoder, ids_of(1, 16), new_tokens=6, batch=1, rounds=2)
    two = time_generation(decoder, ids_of(1, 16), new_tokens=6, batch=2, rounds=2)
    for r in (one, two):
        assert r["ttft_ms_spread"][0] <= r["ttft_ms"] <= r["ttft_ms_spread"][1]
        assert r["decode_spread"][0] <= r["decode_tok_s"] <= r["decode_spread"][1]
        assert r["ttft_ms"] > 0 and r["decode_tok_s"] > 0
    with pytest.raises(ValueError, match="prompt: expected token ids"):
        time_generation(decoder, ids_of(2, 4))


def test_memory_figures_are_plausible():
    assert 0.1 < memory_bandwidth_gbs(mb=16, rounds=2) < 10_000
    assert peak_rss_mb() > 50
