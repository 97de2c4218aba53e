"""Your own model: data_args name mapping (checked through the real CLI), channel pruning of
models the zoo never saw (residual + BatchNorm + GELU + depthwise; a Hugging Face BERT's heads and
FFN widths) with strict pickle-free reloads, loading a user's checkpoint, and budget-miss lines."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.cli import main
from pipelines.config.select import choose, parse_select
from pipelines.store import artifacts
from tasks.compression import channels
from tasks.core.context import StepContext
from tasks.core.types import BenchmarkReport, BenchmarkRow, Comparison, Dataset, Targets
from tasks.models.build import build_model, complete_arch, count_params, load_model, make_artifact
from tasks.steps import load_model as teacher
from tasks.steps import prune
from tasks.steps.inference import Predictor
from tasks.steps.report import budget_line

USER = "examples.byo.model.ResNet1D"
BERT = "tests.user_models.TinyBert"
MODEL = "pipeline.steps.teacher.params.model"

DATA_ARGS_CASES = [
    (
        ["+teacher_model.data_args.n_clases=num_classes"],
        f"{MODEL}.data_args.n_clases: {USER} has no argument 'n_clases'",
    ),
    (
        ["teacher_model.data_args.length='input_shap[-1]'"],
        f"{MODEL}.data_args.length: unknown data value 'input_shap[-1]'",
    ),
    (["~teacher_model.data_args.length"], f"{MODEL}.length: missing required argument of {USER}"),
    (["~teacher_model.data_args"], f"{MODEL}: {USER} takes no 'input_shape': map the data to its own argument names"),
    (["+teacher_model.n_classes=3"], f"{MODEL}.data_args.n_classes: 'n_classes' is both given and mapped"),
    (["~teacher_model.in_ch"], f"{MODEL}.in_ch: missing required argument of {USER} (give it, or map it in data_args)"),
]


@pytest.mark.parametrize("overrides,expected", DATA_ARGS_CASES, ids=[c[0][0][:30] for c in DATA_ARGS_CASES])
def test_data_args_errors_name_the_key_at_validation(overrides, expected, workdir, capsys):
    code = main(["experiment=byo", *overrides, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()


def test_data_args_fill_the_users_own_argument_names(workdir, capsys):
    assert main(["experiment=byo", "--dry-run"]) == 0
    arch = complete_arch(
        {"_target_": USER, "in_ch": 1, "data_args": {"n_classes": "num_classes", "length": "input_shape[-1]"}},
        [1, 40],
        7,
    )
    # stored as plain kwargs, plus the sample shape that exporting or serving it needs without data
    assert arch == {"_target_": USER, "in_ch": 1, "n_classes": 7, "length": 40, "_sample_shape_": [1, 40]}
    net = build_model(arch, [USER]).eval()
    assert net(torch.randn(2, 1, 40)).shape == (2, 7)
    # the ONNX Runtime backend of the inference pipeline exports it from that shape
    predict = Predictor(make_artifact(net, arch, name="m", kind="teacher"), backend="onnxruntime", trusted=(USER,))
    x = torch.randn(5, 1, 40)
    with torch.no_grad():
        torch.testing.assert_close(predict(x), net(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(
        ValueError, match=r"model.data_args.length: 'input_shape\[3\]' is out of range for input_shape \[1, 40\]"
    ):
        complete_arch({"_target_": USER, "data_args": {"length": "input_shape[3]"}}, [1, 40], 7)


def _tiny_data(n: int = 96, length: int = 40, classes: int = 4) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, length, generator=g), torch.randint(0, classes, (n,), generator=g)
    return Dataset("tiny", x, y, x[:32], y[:32], x[:32], y[:32], classes)


def _user_model(width: int = 16) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    arch = {"_target_": USER, "in_ch": 1, "length": 40, "n_classes": 4, "width": width}
    return build_model(arch, [USER]), arch


def test_residual_bn_gelu_depthwise_model_prunes_and_reloads_strictly(tmp_path):
    net, arch = _user_model()
    x = torch.randn(8, 40)
    pruner = channels.channel_pruner(net, x[:2], prune.PruneConfig(amount=0.5), 0.5)
    channels.channel_step(pruner, net, x[:2])
    new = channels.pruned_arch(net, arch, [USER])
    dw = net.blocks[0].depthwise[0]
    assert dw.groups == dw.in_channels == dw.out_channels == 16  # depthwise stays depthwise: 32 -> 16
    assert new["_pruned_"]["attributes"]["blocks.0.depthwise.0"] == {
        "in_channels": 16,
        "out_channels": 16,
        "groups": 16,
    }
    assert net.stem[0].out_channels == 8 and net.norm.normalized_shape == (8,)  # the residual stream, coupled
    assert net.head.out_features == 4  # the output layer keeps its classes
    art = make_artifact(net, new, name="p", kind="pruned")
    # through the step codec (safetensors + JSON) and through save_model -> the load_model task
    back = artifacts.load(artifacts.save(art, tmp_path / "codec"))
    teacher.save_model(art, tmp_path / "saved")
    assert "_pruned_" in json.loads((tmp_path / "saved" / "arch.json").read_text())
    cfg = teacher.LoadModelConfig(
        arch_path=str(tmp_path / "saved" / "arch.json"), weights_path=str(tmp_path / "saved" / "model.safetensors")
    )
    loaded = teacher.run(cfg=cfg, ctx=StepContext(trusted_targets=(USER,)))
    with torch.no_grad():
        want = net.eval()(x)
        assert torch.equal(load_model(back, [USER])(x), want)
        assert torch.equal(load_model(loaded, [USER])(x), want)
    bad = {**new, "_pruned_": {**new["_pruned_"], "shapes": {**new["_pruned_"]["shapes"], "stem.0.weight": [9, 1, 5]}}}
    with pytest.raises(RuntimeError, match="size mismatch"):  # strict: a wrong stored shape never loads
        load_model(make_artifact(net, bad, name="p", kind="pruned"), [USER])


def test_prune_task_on_a_user_model_fine_tunes_and_measures():
    data = _tiny_data()
    net, arch = _user_model()
    art = make_artifact(net, arch, name="teacher", kind="teacher")
    cfg = prune.PruneConfig(amount=0.5, throughput_iters=2)
    cfg.finetune.epochs = 1
    out = prune.run(art, data, cfg=cfg, ctx=StepContext(step="p", trusted_targets=(USER,)))
    assert out.metrics["params"] == count_params(load_model(out, [USER])) < 0.5 * count_params(net)
    assert out.arch["width"] == 16 and out.arch["_pruned_"]["shapes"]


def test_prune_ignore_names_modules_and_refuses_unknown_ones():
    net, _ = _user_model()
    x = torch.randn(2, 40)
    pruner = channels.channel_pruner(net, x, prune.PruneConfig(amount=0.5, ignore=["stem.0"]), 0.5)
    channels.channel_step(pruner, net, x)
    assert net.stem[0].out_channels == 16 and net.blocks[0].expand[0].out_channels == 16  # 32 -> 16 inside
    with pytest.raises(ValueError, match="prune.ignore: the model has no module 'stem.9'"):
        channels.channel_pruner(net, x, prune.PruneConfig(ignore=["stem.9"]), 0.5)


@pytest.mark.parametrize("ignore,hidden", [([], 16), (["bert.embeddings"], 32)])
def test_bert_heads_and_ffn_prune_and_reload_strictly(ignore, hidden):
    pytest.importorskip("transformers")  # the [nlp] extra
    arch = {"_target_": BERT, "vocab": 50, "n_classes": 3}
    torch.manual_seed(0)
    bert = build_model(arch, [BERT])
    ids = torch.randint(0, 50, (4, 12))
    pruner = channels.channel_pruner(bert, ids[:2], prune.PruneConfig(amount=0.5, ignore=ignore), 0.5)
    channels.channel_step(pruner, bert, ids[:2])
    new = channels.pruned_arch(bert, arch, [BERT])
    for layer in bert.bert.encoder.layer:
        att = layer.attention.self
        assert (att.num_attention_heads, att.attention_head_size, att.all_head_size) == (2, 8, 16)  # 4 heads -> 2
        assert layer.intermediate.dense.out_features == 32  # FFN 64 -> 32
        assert layer.output.dense.out_features == hidden
    assert new["_pruned_"]["attributes"]["bert.encoder.layer.0.attention.self"]["num_attention_heads"] == 2
    back = load_model(make_artifact(bert, new, name="b", kind="pruned"), [BERT])
    with torch.no_grad():
        assert torch.allclose(back(ids), bert.eval()(ids), atol=1e-6)


def _bench(teacher_acc: float, selected_acc: float) -> BenchmarkReport:
    def row(name, kind, acc):
        return BenchmarkRow(name, kind, None, acc, acc, 1, 1, 1, 100, 1.0, 1.0, 1000.0)

    t, s = row("teacher", "teacher", teacher_acc), row("quantize", "quantized", selected_acc)
    return BenchmarkReport("npz", 1, "ort", [t, s], Targets("teacher", "quantize", Comparison.between(s, t)))


def test_a_missed_budget_is_one_line_in_the_report_and_the_select_note():
    line = budget_line(_bench(0.95, 0.72), 0.01)
    want = "BUDGET MISSED: the selected model 'quantize' is 23.0 points below the teacher 'teacher'"
    assert line == f"{want} in test accuracy (budget 1.0)"
    assert budget_line(_bench(0.95, 0.945), 0.01) == "" and budget_line(_bench(0.95, 0.5), None) == ""
    rule = parse_select({"metric": "throughput", "where": "val_acc >= teacher.val_acc - 0.01"}, "select")
    trials = {0: {"val_acc": 0.80, "throughput": 9.0}, 1: {"val_acc": 0.90, "throughput": 5.0}}
    index, note = choose(rule, trials, {"teacher": {"val_acc": 0.95}})
    assert index == 1
    missed = "BUDGET MISSED: no trial meets 'val_acc >= 0.94' (teacher.val_acc - 0.01)"
    assert note == f"{missed}; took the closest, trial 1 (val_acc 0.9: {0.94 - 0.9:.4g} short)"
    assert choose(rule, trials, {"teacher": {"val_acc": 0.80}}) == (0, "")  # both meet it: the fastest


def test_load_model_from_a_model_config_measures_the_teacher(tmp_path):
    from safetensors.torch import save_file

    data = _tiny_data()
    net, _ = _user_model()
    save_file(net.state_dict(), str(tmp_path / "m.safetensors"))
    model = {
        "_target_": USER,
        "in_ch": 1,
        "width": 16,
        "data_args": {"n_classes": "num_classes", "length": "input_shape[-1]"},
    }
    ctx = StepContext(step="teacher", trusted_targets=(USER,))
    art = teacher.run(
        data, cfg=teacher.LoadModelConfig(model=model, weights_path=str(tmp_path / "m.safetensors")), ctx=ctx
    )
    assert art.arch == {"_target_": USER, "in_ch": 1, "width": 16, "n_classes": 4, "length": 40, "_sample_shape_": [40]}
    assert (
        0.0 <= art.metrics["val_acc"] <= 1.0
        and "test_acc" in art.metrics
        and ctx.summary["val_acc"] == art.metrics["val_acc"]
    )
    with pytest.raises(ValueError, match="load_model: give exactly one of arch_path"):
        teacher.run(data, cfg=teacher.LoadModelConfig(weights_path=str(tmp_path / "m.safetensors")), ctx=ctx)
    wrong = {**model, "width": 8}
    with pytest.raises(
        ValueError,
        match="m.safetensors: 'stem.0.weight' has shape \\[16, 1, 5\\], the architecture expects \\[8, 1, 5\\]",
    ):
        teacher.run(
            data, cfg=teacher.LoadModelConfig(model=wrong, weights_path=str(tmp_path / "m.safetensors")), ctx=ctx
        )


@pytest.mark.slow
def test_a_user_transformer_goes_through_every_step():
    """train -> infer -> distill -> prune (heads + MLP) -> export -> quantize -> benchmark on a
    user's own attention model (LayerNorm, fused-qkv attention, SiLU, residuals), own names."""
    from tasks.steps import benchmark, distill, export, infer, quantize, train
    from tasks.training.loop import OptimConfig

    target = "tests.user_models.SeqTransformer"
    part = {"_target_": target, "data_args": {"seq_len": "input_shape[0]", "n_out": "num_classes"}}
    data = _tiny_data(n=128, length=16)

    def ctx(step: str) -> StepContext:
        return StepContext(step=step, trusted_targets=(target,))

    fast = OptimConfig(epochs=1, batch_size=32)
    teacher_art = train.run(data, cfg=train.TrainConfig(model=part, optim=fast), ctx=ctx("teacher"))
    assert teacher_art.arch == {"_target_": target, "seq_len": 16, "n_out": 4, "_sample_shape_": [16]}
    logits = infer.run(teacher_art, data, cfg=infer.InferConfig(), ctx=ctx("logits"))
    student = distill.run(
        data, logits, cfg=distill.DistillConfig(student={**part, "dim": 8}, optim=fast), ctx=ctx("student")
    )
    cfg = prune.PruneConfig(amount=0.5, kd_alpha=0.5, finetune=fast, throughput_iters=2)
    pruned = prune.run(teacher_art, data, logits, cfg=cfg, ctx=ctx("pruned"))
    net = load_model(pruned, [target])
    assert (net.attn.num_heads, net.attn.head_dim, net.mlp[0].out_features) == (2, 4, 16)
    exported = export.run(pruned, data, cfg=export.ExportConfig(), ctx=ctx("export"))
    int8 = quantize.run(exported, data, cfg=quantize.QuantizeConfig(calib_batches=1), ctx=ctx("int8"))
    kbit = quantize.run(pruned, data, cfg=quantize.QuantizeConfig(method="fake_kbit", bits=4), ctx=ctx("kbit"))
    bench_cfg = benchmark.BenchmarkConfig(warmup=1, iters_b1=2, iters_b256=2)
    bench = benchmark.run([teacher_art, student, pruned, int8, kbit], data, int8, cfg=bench_cfg, ctx=ctx("bench"))
    assert {r.kind for r in bench.candidates} >= {"teacher", "student_kd", "pruned", "quantized"}
    assert bench.teacher.name == teacher_art.name
    # the gate's rules, whatever this CPU's INT8 kernels make of the model (they differ by CPU:
    # tasks/compression/ort_int8.py), not one CPU's outcome
    assert_gate_rules(bench, int8, quantize.GateConfig().min_agreement)
    # and the rejected branch on every CPU: a gate nothing passes rejects the INT8 model
    strict = quantize.QuantizeConfig(calib_batches=1, gate=quantize.GateConfig(min_agreement=1.01))
    refused = quantize.run(exported, data, cfg=strict, ctx=ctx("int8"))
    again = benchmark.run([teacher_art, pruned, refused], data, refused, cfg=bench_cfg, ctx=ctx("bench"))
    assert refused.metrics["rejected"] == 1.0
    assert_gate_rules(again, refused, 1.01)


def assert_gate_rules(bench, int8, min_agreement: float) -> None:
    """A model the parity gate rejects is never selected; the selected one passed the gate; an INT8
    ``selected`` input that passed is the one selected; rejected means agreement below the floor."""
    row = next(r for r in bench.candidates if r.name == int8.name)
    assert row.int8_onnx and row.rejected == bool(int8.metrics["rejected"])
    assert row.rejected == (int8.metrics["parity_agreement"] < min_agreement), int8.metrics
    assert not any(r.selected and r.rejected for r in bench.candidates)
    assert bench.selected is None or not bench.selected.rejected
    if not row.rejected:
        assert bench.selected is not None and bench.selected.name == int8.name
