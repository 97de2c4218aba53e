"""``experiment=hf_embed``: a user's own embedding folder (sentence-transformers pooling and
normalization) and unlabeled sentences through the compression pipeline: the teacher keeps the
folder's pooling, a half-depth student is trained on its vectors, each is exported and quantized,
the benchmark judges them by cosine to the teacher's vectors, and the served version answers /embed."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")

from tasks.core.context import StepContext  # noqa: E402
from tasks.models.build import load_model  # noqa: E402
from tasks.models.hf_load import Embedder, load_encoder  # noqa: E402
from tasks.models.hf_model import EMBEDDER_TARGET  # noqa: E402
from tasks.steps import hf_teacher, hf_text_data  # noqa: E402
from tests.engine_helpers import selected_benchmark  # noqa: E402
from tests.hf_models import SENTENCES, tiny_run, write_folder  # noqa: E402


def _csv(path, rows=80):
    texts = [f"{SENTENCES[i % 4]} {'cat ' * (i % 5)}line {i}".strip() for i in range(rows)]
    pd.DataFrame({"sentence": texts}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("models"), "bert", task="embedding", pooling="cls", normalize=True)


def test_an_embedding_folder_is_a_teacher_with_its_own_pooling(folder, tmp_path):
    cfg = hf_text_data.HfTextDataConfig(
        model=str(folder), path=str(_csv(tmp_path / "s.csv")), text_column="sentence", label_column="", seq_len=16
    )
    data = hf_text_data.run(cfg=cfg, ctx=StepContext())
    assert data.task == "embedding"
    art = hf_teacher.run(data, cfg=hf_teacher.HfTeacherConfig(path=str(folder)), ctx=StepContext())
    assert art.arch["_target_"] == EMBEDDER_TARGET and art.arch["pooling"] == "cls" and art.arch["normalize"]
    model, _, pooling = load_encoder(folder)
    with torch.no_grad():
        want = Embedder(model, pooling, True, data.input_names)(data.x_val)
        got = load_model(art, (EMBEDDER_TARGET,))(data.x_val)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got.norm(dim=1), torch.ones(len(got)))


@pytest.mark.slow
def test_hf_embed_end_to_end_on_a_users_encoder_and_sentences(folder, workdir, ray_local):
    path = _csv(workdir / "sentences.csv")
    overrides = tiny_run("hf_embed", folder, path, workdir, "data.text_column=sentence")
    out, bench = selected_benchmark(workdir, overrides)
    assert bench.task == "embedding"
    rows = {r.name: r for r in bench.candidates}
    assert set(rows) == {"teacher", "int8_dynamic", "student", "student_int8"}
    assert rows["teacher"].cos_mean == pytest.approx(1.0, abs=1e-4)  # the reference is the teacher itself
    assert rows["student"].params < rows["teacher"].params
    assert all(-1.0 - 1e-6 <= r.cos_mean <= 1.0 + 1e-6 for r in rows.values())  # float32 rounding of a cosine
