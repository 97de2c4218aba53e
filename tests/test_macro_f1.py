"""Macro-F1 beside accuracy for classification benchmarks: the figure and its per-class parts equal
scikit-learn's, its bootstrap interval behaves like an interval, a real benchmark of tiny zoo models
fills the row fields and ``benchmark.json``, the report shows them, and ``quality_metric: macro_f1``
puts the selection budget on macro-F1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support

from tasks.core.checks import BadValue
from tasks.core.context import StepContext
from tasks.core.types import BenchmarkReport, BenchmarkRow, Dataset, ModelArtifact
from tasks.evaluation import evidence, selection, stats
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.reporting.classes import class_names, per_class_markdown
from tasks.steps import benchmark, report
from tasks.training.loop import predict

# 10 rows, 3 classes, imbalanced (6/2/2); class 2 is never predicted
LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
PREDICTED = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0])


def test_macro_f1_and_per_class_equal_sklearns_on_an_imbalanced_example():
    fields = evidence.macro_f1_fields("test", LABELS, PREDICTED)
    # by hand: class 0 F1 = 2*5 / (6 + 8), class 1 = 2*1 / (2 + 2), class 2 (never predicted) = 0
    assert fields["test_macro_f1"] == pytest.approx((10 / 14 + 0.5 + 0.0) / 3)
    assert fields["test_macro_f1"] == pytest.approx(f1_score(LABELS, PREDICTED, average="macro", zero_division=0))
    prec, rec, f1, support = precision_recall_fscore_support(LABELS, PREDICTED, zero_division=0)
    assert list(fields["per_class"]) == ["0", "1", "2"]  # JSON keys: the same before and after benchmark.json
    for c, figures in fields["per_class"].items():
        i = int(c)
        assert figures == pytest.approx({"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": support[i]})
    assert fields["per_class"]["2"]["f1"] == 0.0 and isinstance(fields["per_class"]["0"]["support"], int)
    # macro over the classes the labels hold: a predicted class no row has is not averaged in
    y, p = np.array([0, 0, 1, 1]), np.array([0, 3, 1, 1])
    got = evidence.macro_f1_fields("val", y, p)
    assert got["val_macro_f1"] == pytest.approx(f1_score(y, p, labels=[0, 1], average="macro"))
    assert got["val_macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2) and "per_class" not in got
    empty = evidence.macro_f1_fields("val", np.zeros(0, int), np.zeros(0, int))
    assert np.isnan(empty["val_macro_f1"]) and all(np.isnan(empty["val_macro_f1_ci95"]))


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` imbalanced labels (70/20/10%) and predictions right 80% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.7, 0.2, 0.1])
    wrong = rng.random(n) < 0.2
    return y, np.where(wrong, (y + rng.integers(1, 3, size=n)) % 3, y)


def test_the_bootstrap_interval_holds_the_point_and_narrows_with_more_rows():
    widths = []
    for n in (100, 2000):
        y, p = _noisy(n, seed=n)
        point = f1_score(y, p, average="macro")
        low, high = stats.bootstrap_macro_f1(y, p)
        assert 0.0 <= low < point < high <= 1.0
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(20) as wide on 20x the rows
    y, p = _noisy(300, seed=1)
    assert stats.bootstrap_macro_f1(y, p) == stats.bootstrap_macro_f1(y, p)  # seeded
    assert stats.bootstrap_macro_f1(y, y) == [1.0, 1.0]  # every resample right on every class
    assert stats.bootstrap_macro_f1(LABELS[:9], PREDICTED[:9]) == [0.0, 1.0]  # < MIN_BOOTSTRAP_ROWS: no claim
    with pytest.raises(ValueError, match="differ"):
        stats.bootstrap_macro_f1(y, p[:-1])


def test_evidence_keeps_class_ids_beside_correctness_and_pairs_only_the_splits():
    logits = {"test": np.eye(3)[PREDICTED], "val": np.eye(3)[PREDICTED[::-1]]}
    labels = {"test": LABELS, "val": LABELS}
    rows = evidence.class_splits(logits, labels)
    assert set(rows) == {"test", "val", "test_pred", "val_pred"}
    assert rows["test_pred"].tolist() == PREDICTED.tolist() and rows["test"].dtype == bool
    assert rows["test"].tolist() == (PREDICTED == LABELS).tolist()
    fields = evidence.classification_fields(rows, labels)
    assert fields["test_acc"] == 0.6 and fields["test_macro_f1"] == pytest.approx(0.4047619)
    assert "test_macro_f1" not in evidence.classification_fields(rows)  # without labels: accuracy only
    a, b = _row("t", "teacher", 0.6, 0.4, 1.0), _row("s", "pruned", 0.6, 0.4, 1.0)
    evidence.pair_with_teacher([a, b], {"t": rows, "s": rows}, "classification")
    assert set(b.paired_vs_teacher) == {"test", "val"}


def _imbalanced_data(n: int = 300) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 40, generator=g)
    y = torch.multinomial(torch.tensor([0.7, 0.2, 0.1]), n, replacement=True, generator=g)
    return Dataset("imbalanced", x[:150], y[:150], x[150:225], y[150:225], x[225:], y[225:], 3)


def _model(data: Dataset, name: str, kind: str, channels: list[int]) -> ModelArtifact:
    torch.manual_seed(len(channels) + channels[0])
    arch = complete_arch({"_target_": "tasks.models.zoo.CNN1D", "channels": channels}, data.input_shape, 3)
    return make_artifact(build_model(arch), arch, name=name, kind=kind, parent="teacher" if kind != "teacher" else None)


@pytest.fixture(scope="module")
def bench_run():
    data = _imbalanced_data()
    models = [_model(data, "teacher", "teacher", [16, 16]), _model(data, "student", "student_kd", [4])]
    cfg = benchmark.BenchmarkConfig(
        warmup=1, iters_b1=5, iters_b256=2, throughput_batch=32, torch_reference=True, choose=True, max_acc_drop=1.0
    )
    ctx = StepContext(step="benchmark")
    return data, models, benchmark.run(models, data, cfg=cfg, ctx=ctx), ctx


def test_a_benchmark_fills_macro_f1_its_interval_and_per_class(bench_run):
    data, models, rep, ctx = bench_run
    rows = {r.name: r for r in rep.candidates}
    assert set(rows) == {"torch_fp32", "teacher", "student"}
    y_test = data.y_test.numpy()
    for r in rows.values():
        for split in ("test", "val"):
            point, (low, high) = getattr(r, f"{split}_macro_f1"), getattr(r, f"{split}_macro_f1_ci95")
            assert 0.0 <= low <= point <= high <= 1.0, (r.name, split)
        assert sum(c["support"] for c in r.per_class.values()) == r.n_test == len(y_test)
        assert {int(c): f["support"] for c, f in r.per_class.items()} == dict(enumerate(np.bincount(y_test)))
        assert r.test_macro_f1 == pytest.approx(np.mean([f["f1"] for f in r.per_class.values()]))
        assert set(r.paired_vs_teacher) <= {"test", "val"}
        assert ctx.summary[f"{r.name}/test_macro_f1"] == r.test_macro_f1
        assert ctx.summary[f"{r.name}/val_macro_f1_ci95_low"] == r.val_macro_f1_ci95[0]
    # the torch reference row is the teacher's torch predictions, scored by sklearn
    pred = predict(load_model(models[0]), data.x_test).argmax(1).numpy()
    assert rows["torch_fp32"].test_macro_f1 == pytest.approx(f1_score(y_test, pred, average="macro", zero_division=0))
    blob = json.loads(ctx.files["benchmark.json"])
    assert BenchmarkReport.from_dict(blob) == rep
    assert blob["candidates"][1]["per_class"] == rows[blob["candidates"][1]["name"]].per_class
    assert "test_macro_f1" in ctx.files["benchmark.md"].decode().splitlines()[2]


def test_the_report_shows_macro_f1_beside_accuracy_and_a_per_class_table(bench_run):
    data, models, rep, _ = bench_run
    md = report.run(rep, cfg=report.ReportConfig(), ctx=StepContext()).files["report.md"].decode()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert "| test acc | test macro-F1 | val acc | val macro-F1 |" in header
    sel, teacher = rep.selected, rep.teacher
    assert sel is not None and teacher is not None and sel.name != teacher.name
    low, high = sel.test_macro_f1_ci95
    assert f"{sel.test_macro_f1:.4f} [{low:.4f}, {high:.4f}]" in md  # with its interval, as accuracy
    section = md[md.index("## Per class (test split)") :]
    table = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0].startswith(f"| class | support | {sel.name} precision") and f"{teacher.name} F1" in table[0]
    assert [line.split("|")[1].strip() for line in table[1:]] == ["0", "1", "2"]  # ids: the zoo models name none
    # a model whose config names its classes (a Hugging Face classifier's id2label) names the rows
    named = ModelArtifact("hf", "teacher", {"config": {"id2label": {"0": "neg", "1": "mid", "2": "pos"}}}, {})
    default = ModelArtifact("d", "teacher", {"config": {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}}, {})
    assert class_names([None, default, models[0]]) == {} and class_names([default, named])["2"] == "pos"
    assert "| pos (2) | " in per_class_markdown(rep, class_names([named]))


def _row(name: str, kind: str, acc: float, f1: float, thr: float) -> BenchmarkRow:
    return BenchmarkRow(
        name=name, kind=kind, parent=None, test_acc=acc, val_acc=acc, params=1, nonzero_params=1, flops=1,
        size_bytes=1000, latency_ms_p50_b1=1.0, latency_ms_p95_b1=1.0, throughput_b256=thr,
        test_macro_f1=f1, val_macro_f1=f1,
    )  # fmt: skip


def test_quality_metric_macro_f1_puts_the_budget_on_macro_f1():
    teacher = _row("teacher", "teacher", 0.90, 0.80, 100.0)
    majority = _row("majority", "pruned", 0.90, 0.60, 900.0)  # as accurate, the rare classes given up
    balanced = _row("balanced", "pruned", 0.895, 0.795, 500.0)  # half a point less accurate, slower
    rows = [teacher, majority, balanced]
    rule = benchmark.BenchmarkConfig(choose=True, max_acc_drop=0.01)
    assert selection.choose(rows, rule, "classification") == (majority, "")  # accuracy: the fastest in budget
    by_f1 = benchmark.BenchmarkConfig(choose=True, max_acc_drop=0.01, quality_metric="macro_f1")
    assert selection.choose(rows, by_f1, "classification") == (balanced, "")  # 0.6 is 20 points below 0.8
    _, ok, rule_line = selection.eligible(rows, by_f1, "classification")
    assert ok == [balanced] and rule_line == "val_macro_f1 >= 0.7900"
    strict = benchmark.BenchmarkConfig(choose=True, max_acc_drop=0.001, quality_metric="macro_f1", confidence=0.95)
    picked, note = selection.choose(rows, strict, "classification")  # none in budget: the nearest on macro-F1
    assert picked is balanced and "val_macro_f1 >= 0.7990 (point rule: macro-F1 has no paired interval)" in note
    assert "'balanced' (val_macro_f1 0.7950: 0.0040 short)" in note
    with pytest.raises(BadValue, match="quality_metric: 'f1' is not one of"):
        benchmark.BenchmarkConfig(quality_metric="f1")
