"""Benchmark and report on embedding models: quality vs the reference, torch row, the gate's verdict."""

import dataclasses
import json

import pytest

from tasks.core.context import StepContext
from tasks.core.types import BenchmarkReport
from tasks.evaluation.quality import GateConfig
from tasks.models.build import make_artifact
from tasks.runtime.onnx import data_onnx
from tasks.steps import benchmark, quantize, report
from tests.text_models import TRUSTED, text_dataset, tiny_encoder

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")

FAST = {"warmup": 1, "iters_b1": 3, "iters_b256": 2, "throughput_batch": 8}


@pytest.fixture(scope="module")
def setup():
    data = text_dataset()
    net, arch = tiny_encoder()
    teacher = make_artifact(net, arch, name="teacher", kind="teacher")
    teacher.onnx = data_onnx(net, data)
    ctx = StepContext(step="int8", trusted_targets=TRUSTED)
    good = quantize.run(
        teacher,
        data,
        cfg=quantize.QuantizeConfig(method="dynamic_int8", gate=GateConfig(min_cos_mean=0.9, min_cos_min=0.5)),
        ctx=ctx,
    )
    ctx = StepContext(step="int8_strict", trusted_targets=TRUSTED)
    bad = quantize.run(
        teacher,
        data,
        # a floor above any cosine: rejected on every CPU (the model reaches 0.99997 here)
        cfg=quantize.QuantizeConfig(method="dynamic_int8", gate=GateConfig(min_cos_mean=1.01)),
        ctx=ctx,
    )
    assert bad.metrics["rejected"] == 1.0 and good.metrics["rejected"] == 0.0
    return data, teacher, good, bad


def test_rows_carry_quality_speed_and_the_torch_reference(setup):
    data, teacher, good, bad = setup
    cfg = benchmark.BenchmarkConfig(
        **FAST, speed_threads=[1, 2], torch_reference=True, choose=True, min_cos_mean=0.9, min_cos_min=0.5
    )
    ctx = StepContext(trusted_targets=TRUSTED)
    rep = benchmark.run([teacher, good, bad], data, cfg=cfg, ctx=ctx)
    rows = {r.name: r for r in rep.candidates}
    assert list(rows) == ["torch_fp32", "teacher", "int8", "int8_strict"] and rep.task == "embedding"
    ref = rows["torch_fp32"]
    assert ref.runtime.startswith("torch") and ref.kind == "reference" and ref.cos_mean == pytest.approx(1.0)
    assert rows["teacher"].cos_min > 0.9999  # ORT FP32 == torch FP32
    for r in rows.values():
        assert r.test_acc is None and set(r.speed) == {
            "latency_ms_b1_t1",
            "latency_ms_b1_t2",
            "throughput_b8_t1",
            "throughput_b8_t2",
        }
        assert all(v > 0 for v in r.speed.values())
    assert 0.9 < rows["int8"].cos_mean <= 1.0 and rows["int8"].top1_agree is not None
    assert rows["int8_strict"].rejected and "cos_mean" in rows["int8_strict"].rejected_reason
    assert not rows["int8_strict"].selected and rows["int8"].selected  # the only non-rejected candidate
    assert rep.targets.teacher == "torch_fp32" and rep.targets.selected == "int8"
    again = BenchmarkReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again.row("int8_strict").rejected and again.row("int8").speed == rows["int8"].speed
    md = ctx.files["benchmark.md"].decode()
    assert "rejected: parity gate" in md and "cos_mean" in md


def test_a_rejected_selected_input_is_never_selected(setup):
    data, teacher, good, bad = setup
    ctx = StepContext(trusted_targets=TRUSTED)
    cfg = benchmark.BenchmarkConfig(**FAST, min_cos_mean=0.9, min_cos_min=0.5)
    rep = benchmark.run([teacher, good, bad], data, selected=bad, cfg=cfg, ctx=ctx)
    assert rep.targets.selected == "int8" and not rep.row("int8_strict").selected
    assert any("was rejected" in n for n in rep.notes)
    out = report.run(rep, selected=bad, candidates=[teacher, good, bad], cfg=report.ReportConfig(pipeline="t"), ctx=ctx)
    assert [m.onnx for m in out.publish.models] == [good.onnx]  # the rejected model is not registered
    md = out.publish.console
    assert "REJECTED (parity gate" in md and "cos mean" in md and "was rejected" in md


def test_nothing_selected_when_every_candidate_is_rejected(setup):
    data, teacher, good, bad = setup
    cfg = benchmark.BenchmarkConfig(**FAST, choose=True)
    rep = benchmark.run([teacher, bad], data, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
    assert rep.targets.selected is None and not any(r.selected for r in rep.candidates)
    assert rep.notes == ["no candidate passed the parity gate: nothing selected"]


def test_choose_takes_the_closest_when_no_candidate_meets_the_floors(setup):
    data, teacher, good, bad = setup
    worse = dataclasses.replace(good, name="int8_b", metrics={**good.metrics})
    cfg = benchmark.BenchmarkConfig(**FAST, choose=True, min_cos_mean=1.01)
    rep = benchmark.run([teacher, good, worse], data, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
    assert rep.targets.selected in ("int8", "int8_b") and "selected the closest" in rep.notes[0]
