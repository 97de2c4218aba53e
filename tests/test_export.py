"""Behaviour of ``to_onnx`` / ORT helpers and the ``export`` task's parity gate on tiny models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tasks.core.context import StepContext
from tasks.core.types import Dataset, ModelArtifact
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.runtime.onnx import ort_predict, ort_session, to_onnx
from tasks.runtime.timing import time_ort
from tasks.steps import export, quantize
from tasks.training.loop import predict


def make_data(shape: list[int], n: int = 96, classes: int = 10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return Dataset("tiny", x[:64], y[:64], x[64:80], y[64:80], x[64:], y[64:], classes)


def make_model(data: Dataset, target: str = "tasks.models.zoo.CNN1D", **kw) -> ModelArtifact:
    torch.manual_seed(0)
    arch = complete_arch({"_target_": target, **kw}, data.input_shape, data.num_classes)
    model = build_model(arch)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so BN folding is exercised
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return make_artifact(model, arch, name="student", kind="student_kd", parent="teacher")


@pytest.mark.parametrize(
    "target,shape,kw",
    [
        ("tasks.models.zoo.CNN1D", [40], {"channels": [8, 8]}),
        ("tasks.models.zoo.MLP", [40], {"hidden": [16]}),
        ("tasks.models.zoo.ResCNN2D", [1, 8, 8], {"stem": 8, "mids": [4]}),
    ],
)
def test_to_onnx_matches_torch_with_dynamic_batch(target, shape, kw, caplog):
    data = make_data(shape)
    model = load_model(make_model(data, target, **kw))
    blob = to_onnx(model, data.x_test[:1])  # a batch-1 example still gives a dynamic batch axis
    assert "TorchScript" not in caplog.text  # the torch.export-based exporter handled it
    proto = onnx.load_from_string(blob)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert not proto.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    sess = ort_session(blob, threads=1)
    for n in (1, 7, 32):
        np.testing.assert_allclose(
            ort_predict(sess, data.x_test[:n], batch_size=5), predict(model, data.x_test[:n]).numpy(), atol=1e-5
        )


def test_ort_session_and_timing():
    data = make_data([40])
    blob = to_onnx(load_model(make_model(data, channels=[4])), data.x_test)
    sess = ort_session(blob, threads=1, providers=["CUDAExecutionProvider"])  # absent on CPU: falls back
    assert sess.get_providers()[-1] == "CPUExecutionProvider"
    t = time_ort(sess, data.x_test[:3], batch=8, warmup=1, iters=5)  # 3 rows repeated to a batch of 8
    assert 0 < t["p50_ms"] <= t["p95_ms"]
    assert t["throughput"] == pytest.approx(8 / (t["p50_ms"] / 1e3))
    with pytest.raises(ValueError, match="threads"):
        ort_session(blob, threads=0)


def test_export_sets_onnx_and_logs_parity():
    data = make_data([40])
    art = make_model(data, channels=[8, 8])
    ctx = StepContext(step="export")
    out = export.run(art, data, cfg=export.ExportConfig(), ctx=ctx)
    assert (out.name, out.kind, out.parent) == ("student", "student_kd", "teacher")  # same model, new format
    assert out.onnx is not None and art.onnx is None
    assert ctx.summary["max_abs_diff"] < 1e-4 and ctx.summary["agreement"] == 1.0
    assert out.metrics["size_bytes"] == len(out.onnx)


def test_export_gate_fails_when_parity_is_missed():
    data = make_data([40])
    art = make_model(data, channels=[8, 8])
    with pytest.raises(ValueError, match="max_abs_diff"):
        export.run(art, data, cfg=export.ExportConfig(atol=0.0), ctx=StepContext())
    with pytest.raises(ValueError, match="min_agreement"):
        export.run(art, data, cfg=export.ExportConfig(min_agreement=1.5), ctx=StepContext())


def test_export_passes_int8_through_and_reports_fp32_agreement():
    data = make_data([40], n=400)
    art = make_model(data, channels=[8, 8])
    q = quantize.run(
        art, data, cfg=quantize.QuantizeConfig(method="static_int8", calib_batches=2), ctx=StepContext(step="int8")
    )
    ctx = StepContext()
    out = export.run(q, data, cfg=export.ExportConfig(), ctx=ctx)
    assert out.onnx == q.onnx and out.name == "int8"
    assert 0.0 <= ctx.summary["fp32_agreement"] <= 1.0 and "agreement" not in ctx.summary
