"""Behaviour of the ``prune`` task on tiny data: sparsity, real shrinkage, pickle-free reload, AGP, KD."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tasks.compression import channels, sparsity
from tasks.core.context import StepContext
from tasks.core.types import Dataset, Logits, ModelArtifact
from tasks.models.build import build_model, complete_arch, count_params, flops_one_sample, load_model, make_artifact
from tasks.steps import prune
from tasks.training.loop import OptimConfig

FAST = OptimConfig(epochs=1, batch_size=64, lr=1e-3)


def make_data(shape: list[int], n: int = 192, classes: int = 4, transfer: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    xt = torch.randn(transfer, *shape, generator=g) if transfer else None
    return Dataset("tiny", x, y, x[:48], y[:48], x[:48], y[:48], classes, x_transfer=xt)


def make_model(target: str, data: Dataset, **kw) -> ModelArtifact:
    torch.manual_seed(0)
    arch = complete_arch({"_target_": target, **kw}, data.input_shape, data.num_classes)
    return make_artifact(build_model(arch), arch, name="teacher", kind="teacher")


def cfg(**kw) -> prune.PruneConfig:
    return prune.PruneConfig(**{"finetune": FAST, "throughput_iters": 3, **kw})


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_reaches_sparsity_and_keeps_zeros_through_finetune(scope):
    data = make_data([40])
    art = make_model("tasks.models.zoo.CNN1D", data)
    out = prune.run(art, data, cfg=cfg(method="magnitude", scope=scope, amount=0.6), ctx=StepContext(step="p"))
    net = load_model(out)
    assert out.kind == "pruned" and out.parent == "teacher" and out.name == "p"
    assert out.metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert sparsity.weight_sparsity(net) == pytest.approx(0.6, abs=0.01)  # zeros survived fine-tuning
    assert out.metrics["nonzero_params"] < 0.5 * out.metrics["params"]
    layer_sparsity = [float((m.weight == 0).float().mean()) for m, _ in sparsity.prunable(net)]
    if scope == "layer":
        assert layer_sparsity == pytest.approx([0.6] * len(layer_sparsity), abs=0.01)
    else:
        assert max(layer_sparsity) - min(layer_sparsity) > 0.02  # one global threshold, uneven layers


def test_channel_pruning_shrinks_params_and_reports_metrics():
    data = make_data([40])
    art = make_model("tasks.models.zoo.CNN1D", data, channels=[32, 32, 32])
    threads = torch.get_num_threads()
    ctx = StepContext(step="p")
    out = prune.run(art, data, cfg=cfg(method="channel", amount=0.5, importance="l1"), ctx=ctx)
    assert torch.get_num_threads() == threads
    assert out.arch["channels"] == [32, 32, 32]  # the constructor config stays; the structure is beside it
    convs = [m for m in load_model(out).features if isinstance(m, torch.nn.Conv1d)]
    assert [c.out_channels for c in convs] == [16, 16, 16]
    # conv weights shrink ~4x (in and out halved), the head's input 2x, the first conv 2x
    assert 0.2 < out.metrics["param_ratio"] < 0.35
    assert out.metrics["params"] == count_params(load_model(out))
    for key in ("val_acc", "params", "nonzero_params", "sparsity", "flops", "size_bytes", "throughput"):
        assert key in out.metrics and key in ctx.summary
    assert "macs" not in out.metrics  # one FLOP counter in the project: the benchmark's
    assert out.metrics["flops"] == flops_one_sample(load_model(out), data.x_val)
    assert out.metrics["flops"] < 0.4 * ctx.summary["base_flops"]
    assert out.metrics["size_bytes"] < 0.5 * ctx.summary["base_size_bytes"]


@pytest.mark.parametrize(
    "target, shape, kw, width_key",
    [
        ("tasks.models.zoo.CNN1D", [40], {"channels": [24, 16, 8]}, "channels"),
        ("tasks.models.zoo.MLP", [5, 8], {"hidden": [32, 16]}, "hidden"),
        ("tasks.models.zoo.ResCNN2D", [1, 8, 8], {"stem": 16, "mids": [12, 8]}, "mids"),
    ],
)
def test_channel_pruned_model_reloads_from_arch_and_safetensors_identically(target, shape, kw, width_key):
    data = make_data(shape)
    art = make_model(target, data, **kw)
    conf = cfg(method="channel", amount=0.5, finetune=OptimConfig(epochs=1, batch_size=64))
    out = prune.run(art, data, cfg=conf, ctx=StepContext(step="p"))
    assert out.arch[width_key] == kw[width_key] and out.arch["_pruned_"]["shapes"]
    assert count_params(load_model(out)) < count_params(build_model(art.arch))
    restored = build_model(out.arch)
    restored.load_state_dict(st_load(st_save(out.state_dict)), strict=True)
    x = torch.randn(16, *shape)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), load_model(out)(x))


def test_pruned_arch_stores_the_new_widths_as_json_beside_the_constructor_config():
    data = make_data([40])
    art = make_model("tasks.models.zoo.MLP", data, hidden=[32, 16])
    net = load_model(art)
    pruner = channels.channel_pruner(net, data.x_train[:2], cfg(importance="l2"), amount=0.25)
    pruner.step()
    arch = channels.pruned_arch(net, art.arch)
    assert arch["hidden"] == [32, 16]
    assert arch["_pruned_"]["attributes"]["net.1"]["out_features"] == 24
    assert arch["_pruned_"]["attributes"]["net.3"] == {"in_features": 24, "out_features": 12}
    assert arch["_pruned_"]["shapes"]["net.3.weight"] == [12, 24]


def test_agp_cubic_schedule_values():
    assert sparsity.agp_schedule(0.8, 4) == pytest.approx([0.0, 0.4625, 0.7, 0.7875, 0.8])
    assert sparsity.agp_sparsity(0, 5, 0.9, 0.1) == pytest.approx(0.1)
    assert sparsity.agp_sparsity(5, 5, 0.9, 0.1) == pytest.approx(0.9)


def test_gradual_magnitude_follows_agp_rounds():
    data = make_data([40])
    art = make_model("tasks.models.zoo.CNN1D", data)
    ctx = StepContext(step="g")
    conf = cfg(method="gradual", gradual_base="magnitude", amount=0.8, steps=4, scope="layer")
    out = prune.run(art, data, cfg=conf, ctx=ctx)
    rounds = [m["round_sparsity"] for _, m in ctx.history if "round_sparsity" in m]
    assert rounds == pytest.approx(sparsity.agp_schedule(0.8, 4)[1:], abs=0.01)
    assert out.metrics["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert any("round1_val_acc" in m for _, m in ctx.history)  # fine-tuned between rounds


def test_gradual_channel_shrinks_in_rounds():
    data = make_data([40])
    art = make_model("tasks.models.zoo.CNN1D", data, channels=[64, 64])
    ctx = StepContext(step="g")
    out = prune.run(art, data, cfg=cfg(method="gradual", gradual_base="channel", amount=0.75, steps=3), ctx=ctx)
    params = [m["round_params"] for _, m in ctx.history if "round_params" in m]
    assert len(params) == 3 and params[0] > params[1] > params[2]
    widths = [m.out_channels for m in load_model(out).features if isinstance(m, torch.nn.Conv1d)]
    assert widths == [16, 16]  # keeps floor(64 * (1 - s_t)): 30, 17, 16


def test_kd_finetune_with_transfer_pool_runs():
    data = make_data([40], transfer=64)
    art = make_model("tasks.models.zoo.CNN1D", data)
    teacher = load_model(art)
    with torch.no_grad():
        logits = Logits(train=teacher(data.x_train), transfer=teacher(data.x_transfer))
    ctx = StepContext(step="kd")
    out = prune.run(art, data, logits, cfg=cfg(method="channel", kd_alpha=0.7, use_transfer=True), ctx=ctx)
    assert "ft_train_loss" in ctx.summary and out.metrics["val_acc"] >= 0.0
    with pytest.raises(ValueError, match="logits.train"):
        prune.run(art, data, Logits(train=logits.train[:10]), cfg=cfg(kd_alpha=0.5), ctx=ctx)


def test_kd_finetune_without_transfer_pool_falls_back_to_labeled_rows(caplog):
    """An npz without x_unlabeled: use_transfer=true must not fail the step (the default pipeline's case)."""
    data = make_data([40])
    assert data.x_transfer is None
    art = make_model("tasks.models.zoo.CNN1D", data)
    with torch.no_grad():
        logits = Logits(train=load_model(art)(data.x_train), transfer=None)
    ctx = StepContext(step="kd")
    with caplog.at_level("WARNING", logger="slimray"):
        out = prune.run(art, data, logits, cfg=cfg(method="channel", kd_alpha=0.5, use_transfer=True), ctx=ctx)
    assert out.kind == "pruned" and ctx.summary["transfer_rows"] == 0 and "ft_train_loss" in ctx.summary
    assert sum("no transfer pool" in r.getMessage() for r in caplog.records) == 1
    pool = make_data([40], transfer=64)  # a pool whose logits are missing is still an inconsistency
    with pytest.raises(ValueError, match="logits.transfer has None rows, data.x_transfer 64"):
        prune.run(art, pool, logits, cfg=cfg(kd_alpha=0.5, use_transfer=True), ctx=StepContext())


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"method": "svd"}, "prune.method"),
        ({"amount": 1.5}, r"amount: 1.5 is not in \[0, 1\)"),
        ({"importance": "taylorx"}, "prune.importance"),
        ({"scope": "all"}, "prune.scope"),
        ({"initial_amount": 0.9}, r"initial_amount: 0.9 is not in \[0, 0.5\]"),
    ],
)
def test_bad_config_raises_value_error(bad, match):
    data = make_data([40])
    with pytest.raises(ValueError, match=match):
        prune.run(make_model("tasks.models.zoo.MLP", data), data, cfg=cfg(**bad), ctx=StepContext())


@pytest.mark.parametrize("name", ["default", "magnitude", "agp"])
def test_config_files_compose_against_the_schema(name):
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(group="task/prune", name="schema", node=prune.PruneConfig)
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        c = OmegaConf.to_object(compose(config_name=f"task/prune/{name}").task.prune)
    assert isinstance(c, prune.PruneConfig) and isinstance(c.finetune, OptimConfig)
    assert c.method in prune.METHODS and c.scope in prune.SCOPES
