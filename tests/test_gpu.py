"""GPU paths (CUDA placement, bf16 autocast, ONNX Runtime CUDA provider). They run where a CUDA
device exists and are skipped elsewhere; the CPU paths are covered by the other tests."""

from __future__ import annotations

import pytest
import torch

from tasks.core.context import StepContext
from tasks.models.zoo import CNN1D
from tasks.training.loop import OptimConfig, accuracy, fit
from tasks.training.losses import ce_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fit_on_cuda_with_bf16_autocast_learns():
    torch.manual_seed(0)
    x = torch.randn(512, 40)
    y = (x[:, :20].sum(1) > 0).long()
    model = CNN1D([40], 2, [16, 16])
    best = fit(
        model,
        x,
        (y,),
        loss_fn=ce_loss,
        cfg=OptimConfig(epochs=5, batch_size=64),
        ctx=StepContext(device="cuda"),
        val=(x[:128], y[:128]),
    )
    assert best["val_acc"] > 0.8
    assert next(model.parameters()).device.type == "cpu"  # handed back on the CPU
    assert accuracy(model.cuda(), x, y, device="cuda") > 0.8


def test_ort_cuda_provider_when_installed():
    import onnxruntime as ort

    from tasks.runtime.onnx import ort_predict, ort_session, providers_for, to_onnx

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider (install onnxruntime-gpu)")
    model = CNN1D([40], 10, [8, 8]).eval()
    x = torch.randn(64, 40)
    sess = ort_session(to_onnx(model, x[:2]), threads=1, providers=providers_for("cuda"))
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    assert torch.allclose(torch.from_numpy(ort_predict(sess, x, 32)), model(x), atol=1e-3)
