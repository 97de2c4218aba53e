"""The uniform, mean/std and log2 quantizers against hand-computed values, and ``fake_kbit`` with each."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.compression import quantizers
from tasks.core.context import StepContext
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.steps import quantize
from tests.test_quantize import make_data


def test_uniform_asymmetric_hand_example():
    # [-0.3, 0.6], 2 bits: s = 0.9 / 3 = 0.3, z = round(0.3 / 0.3) = 1; w/s + z = [0, 1, 2, 3]
    w = torch.tensor([[-0.3, 0.0, 0.3, 0.6], [-0.3, 0.1, 0.6, 0.5]])
    # row 1: 0.1/0.3 = 0.33 -> 0; 0.5/0.3 = 1.67 -> 2 -> 0.6
    expected = torch.tensor([[-0.3, 0.0, 0.3, 0.6], [-0.3, 0.0, 0.6, 0.6]])
    torch.testing.assert_close(quantizers.uniform(w, 2, symmetric=False), expected, rtol=0, atol=1e-6)


def test_mean_std_hand_example():
    # mu = 1, sigma = 1 (population): 1 -+ 1.4 and 1 -+ 0.2, since 1.4^2 + 0.2^2 = 2
    w = torch.tensor([[-0.4, 2.4, 0.8, 1.2]])
    # k = 1, 2 bits: lo = 0, s = 2/3, grid {0, 2/3, 4/3, 2}; -0.4 and 2.4 are clipped
    torch.testing.assert_close(
        quantizers.mean_std(w, 2, k=1.0), torch.tensor([[0.0, 2.0, 2 / 3, 4 / 3]]), rtol=0, atol=1e-6
    )
    # k = 3, 3 bits: lo = -2, s = 6/7; (w + 2)/s = [1.87, 5.13, 3.27, 3.73] -> [2, 5, 3, 4]
    expected = torch.tensor([[-2 / 7, 16 / 7, 4 / 7, 10 / 7]])
    torch.testing.assert_close(quantizers.mean_std(w, 3, k=3.0), expected, rtol=0, atol=1e-6)


def test_mean_std_constant_channel_is_kept():
    w = torch.tensor([[0.5, 0.5, 0.5], [1.0, -1.0, 0.0]])
    q = quantizers.mean_std(w, 2, k=2.0)
    torch.testing.assert_close(q[0], w[0])
    assert torch.isfinite(q).all()


def test_log2_hand_example():
    # 3 bits: n = 3 exponents; row 0: max 0.9 -> e_max = round(-0.15) = 0, exponents {-2, -1, 0}
    # 0.9 -> 2^0; -0.3 -> 2^round(-1.74) = 2^-2; 0.1 -> e = -3 < -2 -> 0; -0.7 -> 2^round(-0.51) = 2^-1
    w = torch.tensor([[0.9, -0.3, 0.1, 0.05, 0.0, -0.7]])
    expected = torch.tensor([[1.0, -0.25, 0.0, 0.0, 0.0, -0.5]])
    torch.testing.assert_close(quantizers.log2(w, 3), expected, rtol=0, atol=0)
    # 2 bits: one exponent (ternary): max 3 -> e_max = round(1.58) = 2; everything else is 0
    torch.testing.assert_close(
        quantizers.log2(torch.tensor([[3.0, 1.5, -0.75, 0.2]]), 2), torch.tensor([[4.0, 0, 0, 0]])
    )
    # 8 bits: 127 exponents, every value is its nearest power of two in the log domain
    torch.testing.assert_close(
        quantizers.log2(torch.tensor([[-6.0, 0.3, 1e-3]]), 8), torch.tensor([[-8.0, 0.25, 2**-10]])
    )


@pytest.mark.parametrize("kind", ["uniform", "mean", "log2"])
@pytest.mark.parametrize("bits", [2, 4])
def test_levels_per_channel_fit_the_code(kind, bits):
    w = torch.randn(8, 4, 9, generator=torch.Generator().manual_seed(1))
    q = quantizers.quantize_tensor(w, kind, bits, symmetric=False)
    limit = 2**bits - 1 if kind == "log2" else 2**bits
    for ch in q.reshape(8, -1):
        assert len(torch.unique(ch)) <= limit
    if kind == "log2":
        nz = q[q != 0].abs()
        assert torch.equal(torch.exp2(torch.log2(nz).round()), nz)  # powers of two only


def test_unknown_quantizer_names_the_key():
    with pytest.raises(ValueError, match="quantize.quantizer: unknown value 'lloyd'"):
        quantizers.quantize_tensor(torch.ones(2, 2), "lloyd", 4)


@pytest.fixture(scope="module")
def net_and_data():
    data = make_data(n=400)
    arch = complete_arch({"_target_": "tasks.models.zoo.CNN1D", "channels": [8, 8]}, data.input_shape, data.num_classes)
    torch.manual_seed(0)
    return make_artifact(build_model(arch), arch, name="m", kind="student_kd"), data


@pytest.mark.parametrize("kind", ["mean", "log2"])
def test_fake_kbit_with_each_quantizer(net_and_data, kind):
    art, data = net_and_data
    cfg = quantize.QuantizeConfig(method="fake_kbit", bits=4, quantizer=kind, clip_std=2.5)
    out = quantize.run(art, data, cfg=cfg, ctx=StepContext(step="k"))
    net, ref = load_model(out), load_model(art)
    conv = net.features[0].weight
    torch.testing.assert_close(conv, quantizers.quantize_tensor(ref.features[0].weight, kind, 4, k=2.5))
    m = out.metrics
    assert m["simulated"] == 1.0 and m["quantizer_code"] == quantizers.QUANTIZER_CODES[kind]
    weights = sum(mod.weight.numel() for mod in quantizers.quant_layers(ref))
    channels = sum(mod.weight.shape[0] for mod in quantizers.quant_layers(ref))
    others = sum(t.numel() for t in ref.state_dict().values() if t.is_floating_point()) - weights
    per_channel = quantizers.CHANNEL_PARAMS[(kind, True)]
    assert m["bit_size_bytes"] == math.ceil(weights * 4 / 8) + 4 * per_channel * channels + 4 * others
    assert m["bit_size_bytes"] < m["fp32_weight_bytes"] / 4


def test_non_uniform_quantizer_is_refused_for_deployed_methods(net_and_data):
    art, data = net_and_data
    with pytest.raises(ValueError, match="quantize.quantizer: 'log2' is for fake_kbit only"):
        quantize.run(art, data, cfg=quantize.QuantizeConfig(method="qat", quantizer="log2"), ctx=StepContext())
