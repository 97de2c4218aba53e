"""OpenVINO's own INT8 through NNCF (``quantize.method: nncf_int8``): a zoo model and a tiny BERT,
one ONNX file that ONNX Runtime and OpenVINO both run, judged by the parity gate."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from tasks.core.context import StepContext
from tasks.evaluation.quality import GateConfig
from tasks.runtime import openvino as ovrt
from tasks.runtime.onnx import ort_predict, ort_session
from tasks.steps import benchmark, quantize
from tests.test_benchmark import make_data, make_model
from tests.test_quantize import make_data as learnable_data
from tests.test_quantize import trained_cnn

pytest.importorskip("nncf", reason="the nlp extra installs nncf")
pytest.importorskip("openvino", reason="the nlp extra installs openvino")


def _ops(onnx_bytes: bytes) -> dict[str, int]:
    ops: dict[str, int] = {}
    for node in onnx.load_from_string(onnx_bytes).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def test_zoo_model_nncf_int8_runs_on_both_runtimes_and_selection_can_take_it():
    """On a trained model (learnable signals, val acc 1.0 here): its logits have margins, so the gate
    judges NNCF's INT8, not how one CPU's kernels round near-ties. (An untrained model's agreement
    was 0.96 on an AVX2-only EPYC and above 0.97 elsewhere: the gate rejected it on one CPU only.)"""
    data = learnable_data()
    teacher = trained_cnn(data, [32, 32])
    cfg = quantize.QuantizeConfig(method="nncf_int8", calib_batches=1, calib_batch_size=64)
    art = quantize.run(teacher, data, cfg=cfg, ctx=StepContext(step="nncf"))
    ops = _ops(art.onnx)
    assert ops.get("QuantizeLinear", 0) >= 2 and ops.get("DequantizeLinear", 0) >= 4  # activations and weights
    assert art.metrics["size_bytes"] < 0.5 * art.metrics["fp32_size_bytes"]
    # the gate's rule, and its verdict on a model with margin (agreement 1.0 of 180 rows here, 0.97 needed)
    assert art.metrics["rejected"] == float(art.metrics["parity_agreement"] < GateConfig().min_agreement)
    assert art.metrics["rejected"] == 0.0, art.metrics
    assert abs(art.metrics["val_acc_delta"]) <= 0.03
    ort = ort_predict(ort_session(art.onnx, 1), data.x_test, 64)
    ov = ovrt.predict(art.onnx, data.x_test, 64).numpy()
    assert (ort.argmax(1) == ov.argmax(1)).mean() >= 0.97  # the same INT8 model on both runtimes
    fast = {"warmup": 1, "iters_b1": 3, "iters_b256": 2, "throughput_batch": 8}
    bcfg = benchmark.BenchmarkConfig(**fast, runtimes=["onnxruntime", "openvino"], choose=True, max_acc_drop=1.0)
    rep = benchmark.run([teacher, art], data, cfg=bcfg, ctx=StepContext())
    assert [r.name for r in rep.candidates] == ["teacher", "nncf", "teacher@openvino", "nncf@openvino"]
    assert sum(r.selected for r in rep.candidates) == 1
    assert rep.selected.name in ("nncf", "nncf@openvino")  # the teacher's rows are never candidates


@pytest.mark.slow
def test_tiny_bert_nncf_int8_with_4bit_fp16_scaled_tables():
    """The transformer preset leaves softmax/layer norm in FP32; embedding_bits 4 keeps NNCF off the
    tables and stores them as GatherBlockQuantized with FP16 scales; both runtimes agree."""
    pytest.importorskip("transformers", reason="the nlp extra")
    from tests.text_models import TRUSTED, encoder_artifact, text_dataset

    data = text_dataset()
    fp32 = encoder_artifact(data)
    gate = GateConfig(min_cos_mean=0.95, min_cos_min=0.8)
    base = {"method": "nncf_int8", "nncf_model_type": "transformer", "calib_batches": 1, "calib_batch_size": 32}
    ctx = StepContext(trusted_targets=TRUSTED)
    int8 = quantize.run(fp32, data, cfg=quantize.QuantizeConfig(**base, gate=gate), ctx=ctx)
    cfg = quantize.QuantizeConfig(
        **base, gate=gate, embedding_bits=4, embedding_block_size=16, embedding_scale_dtype="float16"
    )
    emb4 = quantize.run(fp32, data, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
    for art in (int8, emb4):
        assert art.metrics["rejected"] == 0.0 and art.metrics["cos_mean"] >= 0.95
        assert _ops(art.onnx).get("QuantizeLinear", 0) >= 6  # the linear layers' inputs
    model = onnx.load_from_string(emb4.onnx)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {20}  # not raised to 21
    inits = {i.name: i for i in model.graph.initializer}
    gbq = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(gbq) >= 2 and all(inits[n.input[2]].data_type == TensorProto.FLOAT16 for n in gbq)
    assert emb4.metrics["size_bytes"] < int8.metrics["size_bytes"]
    ort = ort_predict(ort_session(emb4.onnx, 1), data.x_test, 32)
    ov = ovrt.predict(emb4.onnx, data.x_test, 32).numpy()
    cos = (ort * ov).sum(1) / np.linalg.norm(ort, axis=1) / np.linalg.norm(ov, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"nncf_model_type": "bert"}, "quantize.nncf_model_type: 'bert' ('' or 'transformer')"),
        ({"embedding_bits": 4, "embedding_scale_dtype": "int8"}, "quantize.embedding_scale_dtype: 'int8'"),
    ],
)
def test_bad_nncf_settings_are_one_line_errors(cfg, message):
    data = make_data()
    teacher = make_model(data, "teacher", "teacher", [8])
    with pytest.raises(ValueError, match=re.escape(message)):
        quantize.run(teacher, data, cfg=quantize.QuantizeConfig(method="nncf_int8", **cfg), ctx=StepContext())
