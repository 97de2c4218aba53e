"""Quantization of a small random-initialised transformer (multi-input ONNX) and the parity gate."""

import re

import onnx
import pytest
import torch

from tasks.core.context import StepContext
from tasks.evaluation.quality import GateConfig
from tasks.steps import quantize
from tests.text_models import TRUSTED, encoder_artifact, text_dataset, tiny_encoder

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")


@pytest.fixture(scope="module")
def data():
    return text_dataset()


@pytest.fixture(scope="module")
def fp32(data):
    return encoder_artifact(data)


def _ctx():
    return StepContext(trusted_targets=TRUSTED)


def test_dynamic_int8_per_channel_feeds_all_inputs_and_passes_the_gate(data, fp32):
    cfg = quantize.QuantizeConfig(method="dynamic_int8", gate=GateConfig(min_cos_mean=0.95, min_cos_min=0.8))
    ctx = _ctx()
    art = quantize.run(fp32, data, cfg=cfg, ctx=ctx)
    graph = onnx.load_from_string(art.onnx).graph
    assert [i.name for i in graph.input] == data.input_names
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node)
    m = art.metrics
    assert 0.95 <= m["cos_mean"] <= 1.0 and m["cos_min"] <= m["cos_mean"] and 0.0 <= m["top1_agree"] <= 1.0
    assert m["rejected"] == 0.0 and m["parity_cos_mean"] == pytest.approx(m["cos_mean"])
    assert "val_acc" not in m and "fp32_val_acc" not in m  # no labels: no accuracy invented


def test_4bit_embedding_tables_shrink_the_model_and_keep_its_vectors(data, fp32):
    """embedding_bits=4: the word/position tables become GatherBlockQuantized (4-bit blocks), the
    rest dynamic INT8; the model is smaller than plain INT8 by at least 8 -> 4 bits per table value."""
    gate = GateConfig(min_cos_mean=0.95, min_cos_min=0.8)
    int8 = quantize.run(fp32, data, cfg=quantize.QuantizeConfig(method="dynamic_int8", gate=gate), ctx=_ctx())
    cfg = quantize.QuantizeConfig(method="dynamic_int8", embedding_bits=4, gate=gate)
    art = quantize.run(fp32, data, cfg=cfg, ctx=_ctx())
    ops = {n.op_type for n in onnx.load_from_string(art.onnx).graph.node}
    assert "GatherBlockQuantized" in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    model, _ = tiny_encoder()
    emb = model.encoder.embeddings
    tables = emb.word_embeddings.weight.numel() + emb.position_embeddings.weight.numel()
    saved = int8.metrics["size_bytes"] - art.metrics["size_bytes"]
    assert saved > 0.3 * tables  # >= 4 bits per value, less the block scales (2 bits per value at block 16)
    assert art.metrics["rejected"] == 0.0 and 0.95 <= art.metrics["cos_mean"] <= int8.metrics["cos_mean"] + 1e-3


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"embedding_bits": 2}, "quantize.embedding_bits: 2 (4 or 8)"),
        ({"method": "fake_kbit", "embedding_bits": 4}, "embedding_bits: 4 is for dynamic_int8, static_int8"),
        ({"embedding_bits": 4, "embedding_block_size": 24}, "embedding_block_size: 24 is not a power of 2"),
        ({"embedding_bits": 4, "embedding_block_size": 64}, "embedding_block_size: 64 does not divide"),  # width 32
    ],
)
def test_embedding_bits_errors_name_the_key(data, fp32, cfg, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        quantize.run(fp32, data, cfg=quantize.QuantizeConfig(**{"method": "dynamic_int8", **cfg}), ctx=_ctx())


def test_static_int8_calibrates_on_the_calibration_rows(data, fp32):
    ctx = _ctx()
    art = quantize.run(fp32, data, cfg=quantize.QuantizeConfig(method="static_int8", calib_batches=2), ctx=ctx)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(art.onnx).graph.node)
    assert 0.0 < art.metrics["cos_mean"] <= 1.0 and art.metrics["size_bytes"] > 0


def test_gate_rejects_a_model_outside_the_tolerance_with_its_figure(data, fp32, caplog):
    ctx = _ctx()
    # a floor above any cosine rejects on every CPU (dynamic INT8 reaches 0.99997 here: a floor of
    # 0.99999 would be one CPU's rounding away from passing)
    strict = GateConfig(min_cos_mean=1.01)
    art = quantize.run(fp32, data, cfg=quantize.QuantizeConfig(method="dynamic_int8", gate=strict), ctx=ctx)
    assert art.metrics["rejected"] == 1.0 and art.metrics["parity_cos_mean"] <= 1.0 + 1e-6
    assert "parity gate: rejected (cos_mean" in caplog.text
    off = GateConfig(enabled=False, min_cos_mean=1.01)
    art = quantize.run(fp32, data, cfg=quantize.QuantizeConfig(method="dynamic_int8", gate=off), ctx=_ctx())
    assert art.metrics["rejected"] == 0.0


def test_fake_kbit_on_embeddings_scores_against_fp32(data, fp32):
    q4 = quantize.run(fp32, data, cfg=quantize.QuantizeConfig(method="fake_kbit", bits=4), ctx=_ctx())
    q8 = quantize.run(fp32, data, cfg=quantize.QuantizeConfig(method="fake_kbit", bits=8), ctx=_ctx())
    assert q4.metrics["cos_mean"] < q8.metrics["cos_mean"] <= 1.0


def test_qat_refuses_unlabeled_data(data, fp32):
    with pytest.raises(ValueError, match="qat needs labels"):
        quantize.run(fp32, data, cfg=quantize.QuantizeConfig(method="qat"), ctx=_ctx())


def test_gate_on_classification_uses_top1_agreement():
    from tasks.evaluation.quality import gate_failures, parity

    ref = torch.eye(4)
    out = torch.eye(4)[[0, 1, 2, 0]]
    stats = parity("classification", out, ref)
    assert stats["agreement"] == 0.75
    assert gate_failures("classification", stats, GateConfig(min_agreement=0.97)) == ["agreement 0.7500 < 0.97"]


def test_gate_on_accuracy_ignores_flips_between_wrong_classes():
    """max_acc_drop gates on the held-out labels: top-1 flips that cost no accuracy pass, a drop
    beyond the bound fails (hand-computed on 4 rows)."""
    from tasks.evaluation.quality import gate_failures, parity

    labels = torch.tensor([0, 1, 2, 3])
    ref = torch.eye(4)[[0, 1, 0, 0]]  # right on rows 0, 1: accuracy 0.50
    flipped = torch.eye(4)[[0, 1, 1, 2]]  # rows 2, 3 flip between wrong classes: still 0.50
    worse = torch.eye(4)[[0, 2, 0, 0]]  # row 1 now wrong: 0.25
    gate = GateConfig(max_acc_drop=0.01)
    stats = parity("classification", flipped, ref, labels)
    assert stats["agreement"] == 0.5 and stats["acc_drop"] == 0.0
    assert gate_failures("classification", stats, GateConfig()) == ["agreement 0.5000 < 0.97"]
    assert gate_failures("classification", stats, gate) == []
    assert gate_failures("classification", parity("classification", worse, ref, labels), gate) == [
        "acc_drop 0.2500 > 0.01"
    ]
    with pytest.raises(ValueError, match="needs the held-out labels"):
        gate_failures("classification", parity("classification", flipped, ref), gate)
    with pytest.raises(ValueError, match=r"max_acc_drop: 1.5 is not in \[0, 1\)"):
        GateConfig(max_acc_drop=1.5)
