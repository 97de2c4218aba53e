"""Weight-only INT4 (ORT MatMulNBits) of a small random-initialised transformer, and its parity gate."""

import onnx
import pytest

from tasks.compression.int4 import int4_weights, linear_weights
from tasks.core.context import StepContext
from tasks.evaluation.quality import GateConfig
from tasks.steps import quantize
from tests.text_models import TRUSTED, encoder_artifact, text_dataset

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")


@pytest.fixture(scope="module")
def data():
    return text_dataset()


@pytest.fixture(scope="module")
def fp32(data):
    return encoder_artifact(data)


def _ops(onnx_bytes: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node]


def test_every_linear_weight_becomes_matmulnbits_and_the_model_shrinks(fp32):
    n_linear = linear_weights(onnx.load_from_string(fp32.onnx))
    assert n_linear == 2 * 6  # 2 layers x (q, k, v, attention out, FFN in, FFN out)
    out = int4_weights(fp32.onnx, block_size=16, accuracy_level=4)
    ops = _ops(out)
    assert ops.count("MatMulNBits") == n_linear and "MatMulInteger" not in ops
    graph = onnx.load_from_string(out).graph
    node = next(n for n in graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 16 and attrs["accuracy_level"] == 4
    assert len(out) < len(fp32.onnx)


def test_int4_step_deploys_passes_the_gate_and_a_strict_gate_rejects_it(data, fp32):
    loose = GateConfig(min_cos_mean=0.95, min_cos_min=0.8)
    cfg = quantize.QuantizeConfig(method="int4_weight", int4_block_size=16, gate=loose)
    art = quantize.run(fp32, data, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
    assert art.kind == "quantized" and "MatMulNBits" in _ops(art.onnx)
    assert art.metrics["rejected"] == 0.0 and 0.95 <= art.metrics["cos_mean"] <= 1.0
    assert art.metrics["size_bytes"] == len(art.onnx) < art.metrics["fp32_size_bytes"]
    # the rejected branch on every CPU: a floor above any cosine (INT4 here reaches 0.9999986 on
    # an AVX2 EPYC; a floor of 0.999999 would be one CPU's rounding away from passing)
    strict = GateConfig(min_cos_mean=1.01, min_cos_min=1.01)
    cfg = quantize.QuantizeConfig(method="int4_weight", int4_block_size=16, gate=strict)
    art = quantize.run(fp32, data, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
    assert art.metrics["rejected"] == 1.0 and art.metrics["parity_cos_mean"] <= 1.0 + 1e-6


def test_int4_with_4bit_embeddings_quantizes_the_tables_too(data, fp32):
    """The tables follow the embedding settings, as for the other ONNX methods (FP16 scales here)."""
    cfg = quantize.QuantizeConfig(method="int4_weight", embedding_bits=4, embedding_scale_dtype="float16")
    art = quantize.run(fp32, data, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
    model = onnx.load_from_string(art.onnx)
    ops = _ops(art.onnx)
    assert "GatherBlockQuantized" in ops and "MatMulNBits" in ops
    scales = {i.name: i.data_type for i in model.graph.initializer}
    gbq = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert all(scales[n.input[2]] == onnx.TensorProto.FLOAT16 for n in gbq)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("int4_block_size", 24, "quantize.int4_block_size: 24"),
        ("int4_accuracy_level", 7, "quantize.int4_accuracy_level: 7"),
    ],
)
def test_bad_int4_settings_are_one_line_errors(data, fp32, key, value, message):
    with pytest.raises(ValueError, match=message):  # when the settings are built, before any work
        cfg = quantize.QuantizeConfig(method="int4_weight", **{key: value})
        quantize.run(fp32, data, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
