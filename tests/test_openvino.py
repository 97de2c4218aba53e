"""OpenVINO as a second benchmark runtime: zoo CNNs (classification) and a tiny BERT (embedding)."""

from __future__ import annotations

import pytest

from tasks.core.context import StepContext
from tasks.evaluation import stats
from tasks.evaluation.quality import GateConfig
from tasks.models.build import load_model, make_artifact
from tasks.runtime import openvino as ovrt
from tasks.runtime.onnx import data_onnx, ort_predict, ort_session
from tasks.steps import benchmark, quantize, report
from tests.test_benchmark import make_data, make_model
from tests.test_quantize import make_data as learnable_data
from tests.test_quantize import trained_cnn

pytest.importorskip("openvino", reason="the nlp extra installs openvino")

FAST = {"warmup": 1, "iters_b1": 3, "iters_b256": 2, "throughput_batch": 8}


def _both(**kw) -> benchmark.BenchmarkConfig:
    return benchmark.BenchmarkConfig(**FAST, runtimes=["onnxruntime", "openvino"], **kw)


def test_openvino_reads_the_onnx_file_and_matches_onnxruntime():
    data = make_data()
    onnx_bytes = data_onnx(load_model(make_model(data, "t", "teacher", [16, 16])), data)
    ort = ort_predict(ort_session(onnx_bytes, 1), data.x_test, 64)
    ov = ovrt.predict(onnx_bytes, data.x_test, 64).numpy()
    assert ov.shape == ort.shape and abs(ov - ort).max() < 1e-4


def test_zoo_models_get_an_openvino_row_each_and_selection_spans_runtimes():
    """A trained teacher (learnable signals): its INT8 model's accuracy on the two runtimes is
    compared on logits with margins, not on an untrained model's near-ties, which each runtime's
    INT8 kernels (and each CPU's) round their own way."""
    data = learnable_data()
    teacher = trained_cnn(data, [16, 16])
    student = make_model(data, "student", "student_kd", [8, 8], parent="teacher")
    int8 = quantize.run(teacher, data, cfg=quantize.QuantizeConfig(calib_batches=2), ctx=StepContext(step="int8"))
    rep = benchmark.run([teacher, student, int8], data, cfg=_both(choose=True, max_acc_drop=1.0), ctx=StepContext())
    rows = {r.name: r for r in rep.candidates}
    assert list(rows) == ["teacher", "student", "int8", "teacher@openvino", "student@openvino", "int8@openvino"]
    for name in ("teacher", "student", "int8"):  # ORT's static QDQ INT8 graph runs on OpenVINO too
        ort_row, ov_row = rows[name], rows[f"{name}@openvino"]
        assert ovrt.runtime_of(ort_row) == "onnxruntime" and ovrt.runtime_of(ov_row) == "openvino"
        assert ov_row.size_bytes == ort_row.size_bytes  # the same ONNX file, exported once
        assert ov_row.test_acc == pytest.approx(ort_row.test_acc, abs=0.021)
        assert ov_row.latency_ms_p50_b1 > 0 and ov_row.throughput_b256 > 0
        # its interval is Wilson's over OpenVINO's own outcomes, not a copy of the ORT row's
        n = ov_row.n_test
        assert ov_row.test_acc_ci95 == pytest.approx(list(stats.wilson(round(ov_row.test_acc * n), n)))
    assert sum(r.selected for r in rep.candidates) == 1 and rep.selected.kind != "teacher"
    # the paired comparison with the teacher exists whichever runtime's row was selected
    assert rep.targets.selected_vs_teacher.test_acc_delta_ci95 is not None
    assert rep.to_dict()["candidates"][3]["runtime"].startswith("openvino ")


def test_tiny_bert_int8_and_int4_on_both_runtimes_and_the_registered_runtime():
    pytest.importorskip("transformers", reason="the nlp extra")
    from tests.text_models import TRUSTED, text_dataset, tiny_encoder

    data = text_dataset()
    net, arch = tiny_encoder()
    teacher = make_artifact(net, arch, name="teacher", kind="teacher")
    teacher.onnx = data_onnx(net, data)
    gate = GateConfig(min_cos_mean=0.9, min_cos_min=0.5)
    q = {}
    for method in ("dynamic_int8", "int4_weight"):
        cfg = quantize.QuantizeConfig(method=method, int4_block_size=16, gate=gate)
        q[method] = quantize.run(teacher, data, cfg=cfg, ctx=StepContext(step=method, trusted_targets=TRUSTED))
    cfg = _both(choose=True, min_cos_mean=0.9, min_cos_min=0.5)
    rep = benchmark.run([teacher, *q.values()], data, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
    rows = {r.name: r for r in rep.candidates}
    assert rows["teacher@openvino"].cos_min > 0.9999
    for name in q:  # ORT's dynamic INT8 and MatMulNBits graphs run on OpenVINO, with their own quality
        ov_row = rows[f"{name}@openvino"]
        assert ov_row.runtime.startswith("openvino") and abs(ov_row.cos_mean - rows[name].cos_mean) < 0.01
        lo, hi = ov_row.cos_mean_ci95
        assert lo <= ov_row.cos_mean <= hi
    sel = rep.selected
    assert sel is not None
    cands = [teacher, *q.values()]
    out = report.run(rep, candidates=cands, cfg=report.ReportConfig(pipeline="t"), ctx=StepContext())
    (reg,) = out.publish.models
    assert reg.runtime == ovrt.runtime_of(sel) and reg.onnx == q[ovrt.candidate_of(sel.name)].onnx


def test_runtimes_must_start_with_onnxruntime_and_name_known_ones():
    data = make_data()
    teacher = make_model(data, "teacher", "teacher", [8])
    for bad in (["openvino"], ["onnxruntime", "tensorrt"], []):
        cfg = benchmark.BenchmarkConfig(**FAST, runtimes=bad)
        with pytest.raises(ValueError, match=r"benchmark.runtimes: \["):
            benchmark.run([teacher], data, cfg=cfg, ctx=StepContext())
