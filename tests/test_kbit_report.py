"""The report's k-bit section: accuracy against bits per quantizer, every row marked simulated."""

from __future__ import annotations

import torch

from tasks.core.context import StepContext
from tasks.models.build import make_artifact
from tasks.models.zoo import MLP
from tasks.reporting.kbit import kbit_points
from tasks.steps import quantize, report
from tests.test_quantize import make_data
from tests.test_report import bench_of, cand

ACC = {("uniform", 2): 0.50, ("uniform", 4): 0.88, ("mean", 2): 0.61, ("mean", 4): 0.89, ("log2", 2): 0.40}


def kbit_models():
    """Real fake_kbit outputs of one FP32 parent, one per (quantizer, bits) in ACC."""
    data = make_data(n=200)
    torch.manual_seed(0)
    arch = {"_target_": "tasks.models.zoo.MLP", "input_shape": [40], "num_classes": 10, "hidden": [16]}
    parent = make_artifact(MLP([40], 10, hidden=[16]), arch, name="pruned_50", kind="pruned")
    out = []
    for (q, bits), _ in ACC.items():
        cfg = quantize.QuantizeConfig(method="fake_kbit", quantizer=q, bits=bits)
        out.append(quantize.run(parent, data, cfg=cfg, ctx=StepContext(step=f"kbit[bits={bits},quantizer={q}]")))
    return out


def test_report_plots_accuracy_against_bits_per_quantizer_and_claims_no_speed():
    arts = kbit_models()
    rows = [cand("teacher", "teacher", 0.94, 40_000, 400_000), cand("pruned_50", "pruned", 0.90, 1e5, 1e5, True)]
    rows += [
        cand(a.name, "quantized", ACC[(a.name.split("=")[2][:-1], int(a.metrics["bits"]))], 1e5, 1e5) for a in arts
    ]
    bench = bench_of(rows)
    out = report.run(bench, kbit=arts, cfg=report.ReportConfig(), ctx=StepContext())
    assert out.files["kbit.png"][:8] == b"\x89PNG\r\n\x1a\n" and "kbit.png" in out.publish.files
    md = out.files["report.md"].decode()
    section = md[md.index("## Accuracy against bits per quantizer") :]
    table = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(ACC) and all(line.rstrip().endswith("| simulated |") for line in table)
    assert "| log2 | 2 | 40.00% |" in section and "| mean | 4 | 89.00% |" in section
    assert "samples/s" not in section and "speed is not claimed" in section
    assert "FP32 parent `pruned_50`: test accuracy 90.00%" in section
    points = out.data["kbit"]
    assert [(p["quantizer"], p["bits"]) for p in points] == sorted(ACC)
    for p, a in zip(points, sorted(arts, key=lambda a: (kbit_points(bench, [a])[0]["quantizer"], a.metrics["bits"]))):
        assert p["bit_size_bytes"] == a.metrics["bit_size_bytes"] < a.metrics["fp32_weight_bytes"]


def test_report_without_kbit_models_has_no_kbit_section():
    bench = bench_of([cand("teacher", "teacher", 0.94, 40_000, 400_000)])
    out = report.run(bench, cfg=report.ReportConfig(), ctx=StepContext())
    assert "kbit.png" not in out.files and "quantizer" not in out.files["report.md"].decode()
    assert "kbit" not in out.data
