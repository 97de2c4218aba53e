"""Behaviour of the ``quantize`` task on tiny data: exact k-bit grids, ORT INT8 accuracy, QAT."""

from __future__ import annotations

import onnx
import pytest
import torch

from tasks.compression import qat, quantizers
from tasks.core.context import StepContext
from tasks.core.types import Dataset, ModelArtifact
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.runtime.onnx import ort_accuracy, ort_session
from tasks.steps import quantize
from tasks.training.loop import OptimConfig, accuracy, fit
from tasks.training.losses import ce_loss


def make_data(n: int = 1200, classes: int = 10, length: int = 40) -> Dataset:
    """Learnable synthetic signals: one random template per class, shifted, scaled and noised."""
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(classes, length, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    shifts = torch.randint(-2, 3, (n,), generator=g)
    x = torch.stack([torch.roll(templates[c], int(s)) for c, s in zip(y, shifts)])
    x = x * (0.8 + 0.4 * torch.rand(n, 1, generator=g)) + 0.3 * torch.randn(n, length, generator=g)
    a, b = int(0.7 * n), int(0.85 * n)
    return Dataset("synthetic", x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], classes)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_data()


def trained_cnn(data: Dataset, channels: list[int], name: str = "teacher", epochs: int = 6) -> ModelArtifact:
    """A CNN1D trained on ``data`` (``make_data``'s learnable signals) for a few epochs (~1 s): its
    logits have margins, so a gate test measures quantization, not one CPU's rounding of ties."""
    torch.manual_seed(0)
    part = {"_target_": "tasks.models.zoo.CNN1D", "channels": channels}
    arch = complete_arch(part, data.input_shape, data.num_classes)
    model = build_model(arch)
    fit(
        model,
        data.x_train,
        (data.y_train,),
        loss_fn=ce_loss,
        cfg=OptimConfig(epochs=epochs, batch_size=64),
        ctx=StepContext(),
        val=(data.x_val, data.y_val),
    )
    return make_artifact(model, arch, name=name, kind="teacher")


@pytest.fixture(scope="module")
def trained(data) -> ModelArtifact:
    """A small CNN1D trained for a few epochs (~1 s): accurate enough that INT8 error shows."""
    return trained_cnn(data, [16, 16])


def test_quantize_weight_hand_example():
    # channel 0: s = 1.5 / 3 = 0.5 (3 bits): w/s = [3, -0.2, 0.5, -1.5, 2.5] -> round half to even
    # [3, 0, 0, -2, 2]; -0.2 rounds to 0, not -1. channel 1: s = 0.4 / 3; channel 2 all zero.
    w = torch.tensor([[1.5, -0.1, 0.25, -0.75, 1.25], [0.4, -0.4, 0.1, 0.2, -0.3], [0.0, 0.0, 0.0, 0.0, 0.0]])
    q = qat.quantize_weight(w, bits=3)
    s = 0.4 / 3
    expected = torch.tensor(
        [[1.5, 0.0, 0.0, -1.0, 1.0], [3 * s, -3 * s, 1 * s, 2 * s, -2 * s], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-7)
    assert qat.quantize_weight(torch.tensor([[0.7, -0.02]]), bits=4)[0, 1] == 0.0  # s=0.1: -0.2 -> 0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fake_kbit_levels_per_channel(data, trained, bits):
    out = quantize.run(
        trained, data, cfg=quantize.QuantizeConfig(method="fake_kbit", bits=bits), ctx=StepContext(step=f"q{bits}")
    )
    assert (out.name, out.kind, out.parent, out.onnx) == (f"q{bits}", "quantized", "teacher", None)
    model = load_model(out)
    for layer in quantizers.quant_layers(model):
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        for row in w:
            assert len(torch.unique(row)) <= 2**bits - 1
            scale = row.abs().max() / (2 ** (bits - 1) - 1)
            torch.testing.assert_close(row / scale, torch.round(row / scale), rtol=0, atol=1e-4)
    assert out.metrics["val_acc"] == pytest.approx(accuracy(model, data.x_val, data.y_val))
    assert out.metrics["bits"] == bits


def test_fake_kbit_accuracy_grows_with_bits(data, trained):
    acc = {
        b: quantize.run(
            trained, data, cfg=quantize.QuantizeConfig(method="fake_kbit", bits=b), ctx=StepContext()
        ).metrics["val_acc"]
        for b in (2, 8)
    }
    fp32 = accuracy(load_model(trained), data.x_val, data.y_val)
    assert acc[8] >= fp32 - 0.02
    assert acc[8] >= acc[2]


def test_static_int8_close_to_fp32(data, trained):
    ctx = StepContext(step="int8")
    out = quantize.run(trained, data, cfg=quantize.QuantizeConfig(method="static_int8"), ctx=ctx)
    assert (out.kind, out.parent) == ("quantized", "teacher")
    graph = onnx.load_from_string(out.onnx).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # QDQ format
    fp32 = accuracy(load_model(trained), data.x_test, data.y_test)
    assert fp32 > 0.8
    int8 = ort_accuracy(ort_session(out.onnx, 1), data.x_test, data.y_test)
    assert abs(int8 - fp32) <= 0.03
    assert out.metrics["val_acc"] == pytest.approx(ctx.summary["val_acc"])
    assert out.metrics["size_bytes"] < out.metrics["fp32_size_bytes"]
    torch.testing.assert_close(out.state_dict, trained.state_dict)  # FP32 weights kept for params/FLOPs


def test_dynamic_int8_runs(data, trained):
    out = quantize.run(trained, data, cfg=quantize.QuantizeConfig(method="dynamic_int8"), ctx=StepContext())
    ops = {n.op_type for n in onnx.load_from_string(out.onnx).graph.node}
    assert ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}
    logits = ort_session(out.onnx, 1).run(None, {"input": data.x_test[:5].numpy()})[0]
    assert logits.shape == (5, data.num_classes)
    assert out.metrics["val_acc"] >= out.metrics["fp32_val_acc"] - 0.05


def test_qat_deploys_int8_with_weights_on_grid(data, trained):
    cfg = quantize.QuantizeConfig(
        method="qat", bits=4, qat_activations=True, optim=OptimConfig(epochs=2, batch_size=64, lr=5e-4)
    )
    ctx = StepContext(step="qat")
    out = quantize.run(trained, data, cfg=cfg, ctx=ctx)
    assert out.onnx is not None and "qat_val_acc" in ctx.summary
    for layer in quantizers.quant_layers(load_model(out)):  # baked onto the 4-bit grid, no wrappers left
        assert "parametrizations" not in dict(layer.named_parameters()).keys()
        torch.testing.assert_close(layer.weight, qat.quantize_weight(layer.weight, 4), rtol=0, atol=1e-6)
    assert out.metrics["val_acc"] >= out.metrics["fp32_val_acc"] - 0.1


@pytest.mark.parametrize("kw", [{"method": "int3"}, {"method": "fake_kbit", "bits": 1}, {"calibration": "avg"}])
def test_bad_config_names_the_key(data, trained, kw):
    with pytest.raises(ValueError, match="quantize\\."):
        quantize.run(trained, data, cfg=quantize.QuantizeConfig(**kw), ctx=StepContext())


def test_refuses_already_quantized(data, trained):
    q = quantize.run(trained, data, cfg=quantize.QuantizeConfig(method="fake_kbit", bits=4), ctx=StepContext())
    with pytest.raises(ValueError, match="already quantized"):
        quantize.run(q, data, cfg=quantize.QuantizeConfig(), ctx=StepContext())


@pytest.mark.parametrize("method", ["static_int8", "dynamic_int8"])
def test_reduce_range_is_applied_and_stays_within_the_gate(data, trained, method):
    """``reduce_range: on`` (what ``auto`` picks on an x86 CPU without VNNI/AMX, whose u8 x s8
    kernels can saturate) quantizes the weights to 7 bits: the INT8 model differs from the 8-bit one,
    and its parity with FP32 stays within the gate on this CPU. ``auto`` follows the CPU's flags."""
    from tasks.compression.ort_int8 import use_reduce_range
    from tasks.runtime.hardware import cpu, has_vnni

    out = {
        rr: quantize.run(trained, data, cfg=quantize.QuantizeConfig(method=method, reduce_range=rr), ctx=StepContext())
        for rr in ("on", "off")
    }
    assert out["on"].onnx != out["off"].onnx
    assert (out["on"].metrics["reduce_range"], out["off"].metrics["reduce_range"]) == (1.0, 0.0)
    gate = quantize.GateConfig()
    assert out["on"].metrics["rejected"] == 0.0 and out["on"].metrics["parity_agreement"] >= gate.min_agreement
    assert out["on"].metrics["val_acc"] >= out["on"].metrics["fp32_val_acc"] - 0.03
    assert use_reduce_range("auto") == ("avx2" in cpu()[1] and not has_vnni())
