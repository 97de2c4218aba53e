"""Behaviour of the ``report`` task: Pareto frontier, PNG, Markdown table, ONNX registration."""
from __future__ import annotations

import io

import pytest
import torch

from tasks import report
from tasks.context import StepContext
from tasks.models import MLP, make_artifact
from tasks.types import Report


def cand(name, kind, acc, thr, size, selected=False, **kw):
    return {"name": name, "kind": kind, "parent": None if kind == "teacher" else "teacher", "test_acc": acc,
            "val_acc": acc, "params": size // 4, "nonzero_params": size // 4, "flops": 1e6, "size_bytes": size,
            "latency_ms_p50_b1": 1e3 / thr, "latency_ms_p95_b1": 2e3 / thr, "throughput_b256": thr,
            "no_speedup": False, "selected": selected, **kw}


BENCH = {"dataset": "mnist1d", "threads": 1, "candidates": [
    cand("teacher", "teacher", 0.94, 40_000, 400_000),
    cand("kd_small", "student_kd", 0.90, 150_000, 40_000),
    cand("scratch_small", "student_scratch", 0.85, 150_000, 40_000),  # dominated by kd_small
    cand("pruned_50", "pruned", 0.92, 120_000, 100_000, selected=True),
    cand("sparse_80", "pruned", 0.93, 39_000, 400_000, no_speedup=True),  # dominated by teacher (both axes)
    cand("int8", "quantized", 0.89, 300_000, 12_000, params=None, nonzero_params=None),
]}


def selected_artifact():
    torch.manual_seed(0)
    model = MLP([40], 10, hidden=[16]).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 40),), buf, dynamo=False)
    arch = {"_target_": "tasks.models.MLP", "input_shape": [40], "num_classes": 10, "hidden": [16]}
    return make_artifact(model, arch, name="pruned_50", kind="pruned", onnx=buf.getvalue())


def test_pareto_front_on_hand_example():
    pts = [{"name": "a", "acc": 0.9, "speed": 1.0}, {"name": "b", "acc": 0.8, "speed": 2.0},
           {"name": "c", "acc": 0.7, "speed": 1.5},  # dominated by b
           {"name": "d", "acc": 0.9, "speed": 0.5},  # dominated by a (tie on acc)
           {"name": "e", "acc": 0.95, "speed": None},  # missing value: left out
           {"name": "f", "acc": 0.6, "speed": 3.0}]
    assert report.pareto_front(pts, {"acc": "max", "speed": "max"}) == ["a", "b", "f"]
    sizes = [{"name": "x", "acc": 0.9, "size": 10}, {"name": "y", "acc": 0.9, "size": 5},
             {"name": "z", "acc": 0.5, "size": 1}]
    assert report.pareto_front(sizes, {"acc": "max", "size": "min"}) == ["y", "z"]
    twins = [{"name": "p", "acc": 1, "size": 1}, {"name": "q", "acc": 1, "size": 1}]
    assert report.pareto_front(twins, {"acc": "max", "size": "min"}) == ["p", "q"]  # equal: neither dominates


def test_report_writes_png_table_and_registers_selected_onnx():
    ctx = StepContext(step="report")
    sel = selected_artifact()
    out = report.run(Report(data=BENCH), sel, cfg=report.ReportConfig(), ctx=ctx)
    png = ctx.files["pareto.png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert out.files["pareto.png"] == png and out.files["report.md"] == ctx.files["report.md"]
    md = out.data["table_md"]
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(BENCH["candidates"])
    assert rows[0].split("|")[1].strip().endswith("teacher")  # teacher first
    assert sum("★" in r for r in rows) == 1 and "★ ◆ pruned_50" in md
    assert "no speedup" in md and "10.00× smaller" not in md and "4.00× smaller" in md  # 400 kB / 100 kB
    assert out.data["pareto_front"] == ["teacher", "kd_small", "pruned_50", "int8"]
    assert out.data["pareto_front_size"] == ["teacher", "kd_small", "pruned_50", "int8"]
    assert out.data["console"] == md
    assert ctx.registered == {"compress-mnist1d@candidate": sel.onnx}


def test_registry_name_override_and_no_selected_model():
    ctx = StepContext()
    report.run(Report(data=BENCH), selected_artifact(), cfg=report.ReportConfig(registry_name="m1", alias="c"),
               ctx=ctx)
    assert list(ctx.registered) == ["m1@c"]
    ctx = StepContext()
    out = report.run(Report(data=BENCH), cfg=report.ReportConfig(), ctx=ctx)
    assert ctx.registered == {} and out.data["registered"] is None


def test_report_without_teacher_or_selection_still_renders():
    bench = {"dataset": "d", "candidates": [cand("a", "pruned", 0.5, 10.0, 100)]}
    out = report.run(Report(data=bench), cfg=report.ReportConfig(), ctx=StepContext())
    assert "no ratios" in out.data["table_md"] and out.data["pareto_front"] == ["a"]


@pytest.mark.parametrize("data", [{}, {"candidates": []}, {"candidates": [{"name": "x"}]}])
def test_bad_benchmark_raises_value_error(data):
    with pytest.raises(ValueError, match="candidate"):
        report.run(Report(data=data), cfg=report.ReportConfig(), ctx=StepContext())


def test_config_file_composes_against_the_schema():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(group="task/report", name="schema", node=report.ReportConfig)
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        c = OmegaConf.to_object(compose(config_name="task/report/default").task.report)
    assert c == report.ReportConfig()


def test_selected_without_onnx_is_exported_then_registered():
    import onnx

    sel = selected_artifact()
    sel.onnx = None
    ctx = StepContext()
    report.run(Report(data=BENCH), sel, cfg=report.ReportConfig(), ctx=ctx)
    model = onnx.load_from_string(ctx.registered["compress-mnist1d@candidate"])
    assert len(model.graph.node) > 0
