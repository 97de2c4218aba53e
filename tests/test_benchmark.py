"""Behaviour of the ``benchmark`` task with 2-3 tiny models (teacher, student, INT8, fake k-bit)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tasks.core.context import StepContext
from tasks.core.types import BenchmarkReport, BenchmarkRow, Comparison, Dataset, ModelArtifact
from tasks.models.build import build_model, complete_arch, make_artifact
from tasks.steps import benchmark, quantize

FAST = benchmark.BenchmarkConfig(warmup=1, iters_b1=10, iters_b256=3)
ROW_KEYS = {
    "name",
    "kind",
    "parent",
    "test_acc",
    "val_acc",
    "params",
    "nonzero_params",
    "flops",
    "size_bytes",
    "latency_ms_p50_b1",
    "latency_ms_p95_b1",
    "throughput_b256",
    "no_speedup",
    "selected",
}


def make_data(n: int = 600, classes: int = 10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 40, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return Dataset("tiny", x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:], classes)


def make_model(data: Dataset, name: str, kind: str, channels: list[int], parent: str | None = None) -> ModelArtifact:
    torch.manual_seed(0)
    arch = complete_arch(
        {"_target_": "tasks.models.zoo.CNN1D", "channels": channels}, data.input_shape, data.num_classes
    )
    return make_artifact(build_model(arch), arch, name=name, kind=kind, parent=parent)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_data()


@pytest.fixture(scope="module")
def models(data) -> list[ModelArtifact]:
    teacher = make_model(data, "teacher", "teacher", [32, 32])
    student = make_model(data, "student", "student_kd", [8, 8], parent="teacher")
    int8 = quantize.run(teacher, data, cfg=quantize.QuantizeConfig(calib_batches=2), ctx=StepContext(step="int8"))
    return [teacher, student, int8]


def test_rows_targets_and_files(data, models):
    teacher, student, int8 = models
    ctx = StepContext(step="benchmark")
    rep = benchmark.run(models, data, selected=student, cfg=FAST, ctx=ctx)
    assert isinstance(rep, BenchmarkReport) and all(isinstance(r, BenchmarkRow) for r in rep.candidates)
    rows = {r.name: r for r in rep.candidates}
    assert list(rows) == ["teacher", "student", "int8"] and rep.threads == 1
    # static measures come from the torch architecture; an INT8 model counts its FP32 parent's
    assert rows["teacher"].params == sum(p.numel() for p in build_model(teacher.arch).parameters())
    assert rows["int8"].params == rows["teacher"].params
    assert rows["int8"].flops == rows["teacher"].flops > rows["student"].flops > 0
    assert rows["int8"].size_bytes == len(int8.onnx) < rows["teacher"].size_bytes
    assert rows["int8"].val_acc == pytest.approx(int8.metrics["val_acc"])
    for r in rows.values():
        assert 0 <= r.test_acc <= 1 and r.latency_ms_p50_b1 <= r.latency_ms_p95_b1
        assert r.throughput_b256 > 0
    assert [r.selected for r in rows.values()] == [False, True, False]
    assert rows["teacher"].no_speedup is False and isinstance(rows["student"].no_speedup, bool)
    t = rep.targets
    assert (t.teacher, t.selected) == ("teacher", "student") and (rep.teacher, rep.selected) == (
        rows["teacher"],
        rows["student"],
    )
    sel = t.selected_vs_teacher
    paired = {"test_acc_delta_ci95": sel.test_acc_delta_ci95, "test_acc_delta_p": sel.test_acc_delta_p}
    assert sel == dataclasses.replace(Comparison.between(rows["student"], rows["teacher"]), **paired)
    assert sel.flops_reduction == pytest.approx(rows["teacher"].flops / rows["student"].flops)
    assert sel.params_reduction == pytest.approx(rows["teacher"].params / rows["student"].params)
    assert sel.test_acc_delta == pytest.approx(rows["student"].test_acc - rows["teacher"].test_acc)
    assert [c.candidate for c in t.int8_vs_fp32] == ["int8"]
    assert isinstance(t.int8_vs_fp32[0].meets_target, bool)
    # benchmark.json on the step's own run: the report's fields, a superset of the former keys
    blob = json.loads(ctx.files["benchmark.json"])
    assert blob == rep.to_dict() and BenchmarkReport.from_dict(blob) == rep
    assert all(ROW_KEYS <= set(r) for r in blob["candidates"])
    assert {"teacher", "selected", "selected_vs_teacher", "int8_vs_fp32", "int8_target"} <= set(blob["targets"])
    assert {
        "throughput_speedup",
        "latency_speedup_b1",
        "size_reduction",
        "params_reduction",
        "flops_reduction",
        "test_acc_delta",
    } <= set(blob["targets"]["selected_vs_teacher"])
    assert ctx.summary["student/test_acc"] == rows["student"].test_acc
    # every accuracy with its 95% interval over the rows it was measured on, and the paired test of the delta
    for r in rows.values():
        assert r.n_test == len(data.x_test) and r.test_acc_ci95[0] <= r.test_acc <= r.test_acc_ci95[1]
        assert r.val_acc_ci95[0] <= r.val_acc <= r.val_acc_ci95[1]
        assert ctx.summary[f"{r.name}/test_acc_ci95_low"] == r.test_acc_ci95[0]
        assert r.timing["throughput_b256"]["iqr"][0] <= r.throughput_b256 <= r.timing["throughput_b256"]["iqr"][1]
    counts = rows["student"].paired_vs_teacher["test"]
    assert sel.test_acc_delta == pytest.approx((counts["cand_only"] - counts["ref_only"]) / counts["n"])
    assert (
        sel.test_acc_delta_ci95[0] < sel.test_acc_delta < sel.test_acc_delta_ci95[1] and 0 <= sel.test_acc_delta_p <= 1
    )


def test_no_speedup_flag_follows_its_definition(data, models):
    rep = benchmark.run(models[:2], data, cfg=FAST, ctx=StepContext())
    teacher, student = rep.candidates
    flops_ratio = teacher.flops / student.flops
    speedup = student.throughput_b256 / teacher.throughput_b256
    assert flops_ratio >= 2
    assert student.no_speedup == (speedup < 1.2)


def test_without_teacher_ratios_are_null_and_fake_kbit_is_exported(data, models):
    student = models[1]
    q4 = quantize.run(
        student, data, cfg=quantize.QuantizeConfig(method="fake_kbit", bits=4), ctx=StepContext(step="q4")
    )
    rep = benchmark.run([student], data, selected=q4, cfg=FAST, ctx=StepContext())  # selected joins the list
    rows = rep.candidates
    assert [r.name for r in rows] == ["student", "q4"] and rows[1].selected
    assert rows[1].size_bytes > 0 and rows[1].no_speedup is None
    assert rep.targets.selected_vs_teacher is None and rep.targets.int8_vs_fp32 == []


def test_metric_keys_are_valid_mlflow_names():
    assert benchmark.metric_key("prune[amount=0.5]", "test_acc") == "prune_amount_0.5_/test_acc"


def test_rejects_duplicate_names(data, models):
    with pytest.raises(ValueError, match="unique names"):
        benchmark.run([models[0], models[0]], data, cfg=FAST, ctx=StepContext())


def test_choose_at_95_confidence_on_100_rows_does_not_take_the_budget_on_faith(data, models):
    """100 validation rows: a paired 95% interval is several points wide, so a 1-point budget cannot be
    shown to hold and the benchmark says so (the point rule would read the noise as a pass or a miss)."""
    cfg = dataclasses.replace(FAST, choose=True, confidence=0.95)
    rep = benchmark.run(models[:2], data, cfg=cfg, ctx=StepContext())
    teacher, student = rep.candidates
    counts = student.paired_vs_teacher["val"]
    assert counts["n"] == 100 and student.val_acc_ci95[1] - student.val_acc_ci95[0] > 0.1
    assert any("at 95% confidence: selected the closest" in n for n in rep.notes)
    with pytest.raises(ValueError, match="benchmark.confidence"):
        benchmark.BenchmarkConfig(confidence=0.9)
