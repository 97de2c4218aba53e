"""``experiment=hf_textcls``: a user's own classifier folder and CSV through the compression pipeline.
Layer-dropped students of the user's architecture (BERT's ``encoder.layer``, DistilBERT's
``transformer.layer``) start as copies of the teacher's layers; the experiment runs end to end on a
tiny BERT folder; its required keys fail in one line before anything runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")

from pipelines.config.compose import load_config  # noqa: E402
from pipelines.config.schema import SpecError  # noqa: E402
from pipelines.run import session  # noqa: E402
from tasks.core.context import StepContext  # noqa: E402
from tasks.models.build import build_model  # noqa: E402
from tasks.models.hf_model import TARGET  # noqa: E402
from tasks.models.transformer import layer_student  # noqa: E402
from tasks.steps import distill, hf_teacher, hf_text_data, infer  # noqa: E402
from tests.engine_helpers import selected_benchmark  # noqa: E402
from tests.hf_models import LABELS, SENTENCES, tiny_run, write_folder  # noqa: E402


def _frame(rows: int) -> pd.DataFrame:
    texts = [f"{SENTENCES[i % 4]} {'cat ' * (i % 7)}row {i}".strip() for i in range(rows)]
    return pd.DataFrame({"text": texts, "label": [LABELS[i % 3] for i in range(rows)]})


def _csv(path, rows=60):
    _frame(rows).to_csv(path, index=False)
    return path


# each architecture's end-to-end run reads its text in another of the formats a user may have
FORMAT_OF = {"bert": "csv", "distilbert": "jsonl", "roberta": "parquet", "deberta-v2": "disk"}


def _data_file(folder, fmt: str, rows: int):
    df = _frame(rows)
    if fmt == "csv":
        return _csv(folder / "train.csv", rows)
    if fmt == "jsonl":
        df.to_json(folder / "train.jsonl", orient="records", lines=True)
        return folder / "train.jsonl"
    if fmt == "parquet":
        df.to_parquet(folder / "train.parquet")
        return folder / "train.parquet"
    import datasets

    datasets.Dataset.from_pandas(df).save_to_disk(str(folder / "train"))
    return folder / "train"


ARCHS = ("bert", "distilbert", "roberta", "deberta-v2")  # token_type_ids or not; absolute or relative positions
ENCODER_ONLY = {"distilbert"}  # end to end from an encoder folder (fine-tuned first) rather than a classifier


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: write_folder(root, a) for a in ARCHS}


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_a_layer_student_of_a_user_folder_starts_as_the_teachers_layers(folders, tmp_path, arch):
    cfg = hf_text_data.HfTextDataConfig(model=str(folders[arch]), path=str(_csv(tmp_path / "t.csv")), seq_len=16)
    data = hf_text_data.run(cfg=cfg, ctx=StepContext())
    teacher = hf_teacher.run(data, cfg=hf_teacher.HfTeacherConfig(path=str(folders[arch])), ctx=StepContext())
    arch_, state = layer_student(teacher.arch, teacher.state_dict, [1])
    depth = "n_layers" if arch == "distilbert" else "num_hidden_layers"
    assert arch_["config"][depth] == 1 and teacher.arch["config"][depth] == 2
    stack = "model.distilbert.transformer.layer." if arch == "distilbert" else "model.bert.encoder.layer."
    layer1 = {k[len(stack) + 2 :]: v for k, v in teacher.state_dict.items() if k.startswith(stack + "1.")}
    assert layer1 and all(torch.equal(state[stack + "0." + k], v) for k, v in layer1.items())
    assert not any(k.startswith(stack + "1.") for k in state)
    student = build_model(arch_, (TARGET,))
    student.load_state_dict(state, strict=True)  # the student's own keys, nothing missing or left over
    with torch.no_grad():
        assert student(data.x_val).shape == (len(data.x_val), 3)

    # the distill step builds and trains it from the teacher's logits (layer_fraction: half of 2 layers)
    ctx = StepContext(trusted_targets=(TARGET,))
    logits = infer.run(teacher, data, cfg=infer.InferConfig(batch_size=16), ctx=ctx)
    cfg_d = distill.DistillConfig(layer_fraction=0.5, use_transfer=False, alpha=1.0)
    cfg_d.optim.epochs, cfg_d.optim.batch_size = 1, 8
    art = distill.run(data, logits, teacher=teacher, cfg=cfg_d, ctx=ctx)
    assert art.arch["config"][depth] == 1 and art.metrics["params"] < teacher.metrics["params"]


def test_layer_fraction_spaces_layers_evenly_and_refuses_to_drop_none():
    art = type("Art", (), {"arch": {"config": {"num_hidden_layers": 12}}})()
    pick = distill.student_layers
    assert pick(distill.DistillConfig(layer_fraction=0.5), art) == [0, 2, 4, 7, 9, 11]
    assert pick(distill.DistillConfig(layer_fraction=0.25), art) == [0, 6, 11]
    two = type("Art", (), {"arch": {"config": {"n_layers": 2}}})()  # DistilBERT's name for the depth
    assert pick(distill.DistillConfig(layer_fraction=0.5), two) == [0]
    with pytest.raises(ValueError, match="layer_fraction: 0.99 of the teacher's 12 layers drops none"):
        pick(distill.DistillConfig(layer_fraction=0.99), art)
    with pytest.raises(ValueError, match="layer_fraction"):
        distill.DistillConfig(layer_fraction=0.5, init_layers=[0])


def test_the_served_classifier_answers_texts_with_its_folders_label_names(folders, tmp_path):
    import numpy as np

    from tasks.serving.limits import Limits
    from tasks.serving.model import ServedModel, serving_files
    from tasks.steps import export

    folder = folders["bert"]
    cfg = hf_text_data.HfTextDataConfig(model=str(folder), path=str(_csv(tmp_path / "t.csv")), seq_len=16)
    data = hf_text_data.run(cfg=cfg, ctx=StepContext())
    teacher = hf_teacher.run(data, cfg=hf_teacher.HfTeacherConfig(path=str(folder)), ctx=StepContext())
    onnx = export.run(teacher, data, cfg=export.ExportConfig(), ctx=StepContext(trusted_targets=(TARGET,))).onnx
    beside = tmp_path / "version"
    beside.mkdir()
    for name, blob in serving_files(onnx, "classification", str(folder), 16).items():
        (beside / name).write_bytes(blob)
    served = ServedModel(onnx, beside, 1)
    assert served.sig.labels == [LABELS[i] for i in range(3)]
    out = served.answer(served.run(served.feed({"texts": ["a cat sat", "the dog ran far"]}, Limits())))
    assert out["labels"] == [LABELS[c] for c in out["classes"]]
    probs = np.array(out["probabilities"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs.argmax(1) == np.array(out["classes"])).all()


def test_every_data_key_can_be_set_from_the_command_line():
    import dataclasses

    from omegaconf import OmegaConf

    keys = {f.name for f in dataclasses.fields(hf_text_data.HfTextDataConfig)}
    listed = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "hf_text.yaml")
    assert set(listed) == keys  # a key missing from the option file could not be overridden
    base = ["teacher.path=./m", "data.path=train.csv"]
    extra = ["data.val_path=val.csv", "data.text_pair_column=second", "data.drop_duplicates=true"]
    for experiment in ("hf_textcls", "hf_embed"):
        session.validate(load_config([f"experiment={experiment}", *base, *extra]))
    tune = ["teacher.fine_tune.epochs=1", "teacher.fine_tune.lr=1e-4", "teacher.batch_size=16"]  # an encoder folder
    session.validate(load_config(["experiment=hf_textcls", *base, *tune]))


def test_missing_required_keys_fail_in_one_line_before_anything_runs():
    with pytest.raises(SpecError, match=r"^teacher\.path: missing required value"):
        session.validate(load_config(["experiment=hf_textcls"]))
    with pytest.raises(SpecError, match=r"^data\.path: missing required value"):
        session.validate(load_config(["experiment=hf_textcls", "teacher.path=./m"]))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_hf_textcls_end_to_end_on_a_users_folder_and_csv(folders, workdir, ray_local, arch):
    path = _data_file(workdir, FORMAT_OF[arch], rows=90)
    if arch in ENCODER_ONLY:  # no classification head: the teacher step fine-tunes one for the file's labels
        overrides = tiny_run("hf_textcls", write_folder(workdir, arch, task="embedding"), path, workdir)
        overrides.append("teacher.fine_tune.epochs=1")
    else:
        overrides = tiny_run("hf_textcls", folders[arch], path, workdir)
    out, bench = selected_benchmark(workdir, overrides)
    assert bench.task == "classification"
    rows = {r.name: r for r in bench.candidates}
    names = {"teacher", "int8_dynamic", "int4", "nncf_int8", "student", "student_int8", "student_int4"}
    names |= {"pruned", "pruned_int8"}  # half the heads and FFN channels, healed by KD
    assert set(rows) == names | {f"{n}@openvino" for n in names}
    assert rows["teacher"].test_macro_f1 is not None and rows["teacher"].per_class  # macro-F1 and per-class figures
    assert rows["student"].params < rows["teacher"].params and rows["pruned"].params < rows["teacher"].params
    assert rows["int8_dynamic"].size_bytes < rows["teacher"].size_bytes
    assert all(0.0 <= r.test_acc <= 1.0 for r in rows.values())
