"""The ``hf_teacher`` step on tiny BERT / DistilBERT / RoBERTa / DeBERTa-v2 classifier folders, with data
made by ``hf_text_data`` from a CSV: the artifact reloads to identical logits, and the classification
steps take it in-process: ``infer`` (teacher logits), ``export`` (ONNX with the folder's own input
names) and ``quantize`` (dynamic INT8 close to FP32). Refusals are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")

import onnx  # noqa: E402

from tasks.core.checks import BadValue  # noqa: E402
from tasks.core.context import StepContext  # noqa: E402
from tasks.core.types import Dataset  # noqa: E402
from tasks.models.build import UntrustedModelError, load_model  # noqa: E402
from tasks.models.hf_load import Classifier, load_classifier, load_for_fine_tuning  # noqa: E402
from tasks.models.hf_model import TARGET, HFSequenceClassifier, hf_classifier_arch  # noqa: E402
from tasks.runtime.onnx import ort_predict, ort_session  # noqa: E402
from tasks.steps import export, hf_teacher, hf_text_data, infer, quantize  # noqa: E402
from tasks.training.loop import OptimConfig  # noqa: E402
from tests.hf_models import LABELS, SENTENCES, write_folder  # noqa: E402

ARCHS = ["bert", "distilbert", "roberta", "deberta-v2"]
TRUSTED = StepContext(trusted_targets=(TARGET,))  # what a config's trusted_models gives the steps


def _data(folder: Path, tmp_path: Path) -> Dataset:
    """A tiny labeled set from a CSV, tokenized with ``folder`` (16 tokens a row)."""
    texts = [f"{SENTENCES[i % 4]} {'cat ' * (i // 4)}".strip() for i in range(40)]
    labels = [LABELS[i % 3] for i in range(40)]
    path = tmp_path / f"{folder.name}.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    cfg = hf_text_data.HfTextDataConfig(model=str(folder), path=str(path), seq_len=16, n_calib=4)
    return hf_text_data.run(cfg=cfg, ctx=StepContext())


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {a: write_folder(root, a) for a in ("bert", "distilbert", "roberta", "deberta-v2")}


@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_reloads_and_the_classification_steps_take_it(folders, tmp_path, arch):
    folder = folders[arch]
    data = _data(folder, tmp_path)
    ctx = StepContext(step="teacher")
    art = hf_teacher.run(data, cfg=hf_teacher.HfTeacherConfig(path=str(folder)), ctx=ctx)

    # the artifact: JSON arch naming the labels and the folder's inputs, the folder's own logits after reload
    assert art.kind == "teacher" and art.name == "teacher"
    assert json.loads(json.dumps(art.arch)) == art.arch and art.arch["_target_"] == TARGET
    assert art.arch["input_names"] == data.input_names
    assert {int(k): v for k, v in art.arch["config"]["id2label"].items()} == LABELS
    hf, _ = load_classifier(folder)
    with torch.no_grad():
        want = Classifier(hf, data.input_names)(data.x_val)
        got = load_model(art, (TARGET,))(data.x_val)
    assert torch.equal(got, want)
    assert art.metrics["val_acc"] == pytest.approx(float((want.argmax(1) == data.y_val).float().mean()))
    assert art.metrics["params"] == sum(p.numel() for p in hf.parameters()) == ctx.summary["params"]

    # infer: the teacher's logits over the training rows
    logits = infer.run(art, data, cfg=infer.InferConfig(batch_size=8), ctx=TRUSTED)
    with torch.no_grad():
        assert torch.allclose(logits.train, Classifier(hf, data.input_names)(data.x_train), atol=1e-6)

    # export: one ONNX graph input per tokenizer input, named and ordered as the folder's tokenizer says
    exported = export.run(art, data, cfg=export.ExportConfig(), ctx=TRUSTED)
    assert exported.onnx is not None
    graph = onnx.load_from_string(exported.onnx).graph
    assert [i.name for i in graph.input] == data.input_names and [o.name for o in graph.output] == ["logits"]
    onnx_out = ort_predict(ort_session(exported.onnx, 1), data.x_test, 64)
    with torch.no_grad():
        ref = Classifier(hf, data.input_names)(data.x_test).numpy()
    assert np.allclose(onnx_out, ref, atol=1e-4)

    # quantize: ORT dynamic INT8 (conf/task/quantize/dynamic_int8.yaml) stays close to FP32
    q = quantize.run(exported, data, cfg=quantize.QuantizeConfig(method="dynamic_int8"), ctx=TRUSTED)
    assert q.kind == "quantized" and q.parent == "teacher" and q.onnx is not None
    int8 = ort_predict(ort_session(q.onnx, 1), data.x_val, 64)
    fp32 = want.numpy()
    assert q.metrics["size_bytes"] < q.metrics["fp32_size_bytes"]  # INT8 weights, not the FP32 file again
    assert np.abs(int8 - fp32).max() <= 0.1 * np.abs(fp32).max()  # measured ~0.02-0.04 of the logits' scale
    assert q.metrics["fp32_val_acc"] == pytest.approx(art.metrics["val_acc"])


def test_a_plain_context_refuses_the_class_until_the_config_trusts_it(folders, tmp_path):
    data = _data(folders["bert"], tmp_path)
    art = hf_teacher.run(data, cfg=hf_teacher.HfTeacherConfig(path=str(folders["bert"])), ctx=StepContext())
    with pytest.raises(UntrustedModelError, match=f"trusted_models: \\['{TARGET}'\\]"):
        infer.run(art, data, cfg=infer.InferConfig(), ctx=StepContext())


def test_arch_rebuilds_from_json_alone(folders):
    hf, _ = load_classifier(folders["roberta"])
    arch = hf_classifier_arch(hf.config.to_dict(), ["input_ids", "attention_mask"])
    assert "_name_or_path" not in arch["config"] and "transformers_version" not in arch["config"]
    model = HFSequenceClassifier(**json.loads(json.dumps({k: v for k, v in arch.items() if k != "_target_"})))
    assert model.config._attn_implementation == "eager" and model.config.num_labels == 3
    assert set(model.state_dict()) == set(Classifier(hf, arch["input_names"]).state_dict())
    with pytest.raises(ValueError, match="no model_type"):
        hf_classifier_arch({"hidden_size": 32}, ["input_ids"])


def _one_line(exc_type: type, match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ValueError), msg
    return msg


def test_refusals_are_one_line(folders, tmp_path):
    bert = _data(folders["bert"], tmp_path)
    cfg = hf_teacher.HfTeacherConfig
    ctx = StepContext()
    _one_line(BadValue, "^path: a Hugging Face model folder is required", hf_teacher.run, bert, cfg=cfg(), ctx=ctx)

    encoder = write_folder(tmp_path, "bert", task="embedding")
    untrained = cfg(path=str(encoder), fine_tune=OptimConfig(epochs=0))
    msg = _one_line(
        BadValue, "^fine_tune.epochs: 0 leaves", hf_teacher.run, _data(encoder, tmp_path), cfg=untrained, ctx=ctx
    )
    assert str(encoder) in msg

    # data made with another folder: BERT stacks token_type_ids, DistilBERT takes none
    distil = str(folders["distilbert"])
    msg = _one_line(ValueError, "stacks inputs", hf_teacher.run, bert, cfg=cfg(path=distil), ctx=ctx)
    assert distil in msg and "hf_text_data model=" in msg

    fewer = Dataset(**{**bert.__dict__, "num_classes": 2})
    _one_line(ValueError, "has 2 classes", hf_teacher.run, fewer, cfg=cfg(path=str(folders["bert"])), ctx=ctx)
    _one_line(BadValue, "batch_size", cfg, batch_size=0)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_an_encoder_folder_is_fine_tuned_with_a_new_head_for_the_files_labels(tmp_path, caplog, arch):
    encoder = write_folder(tmp_path, arch, task="embedding")
    # the label follows the sentence: learnable by a tiny encoder in a few epochs
    texts = [f"{SENTENCES[i % 4]} {'cat ' * (i % 3)}".strip() for i in range(60)]
    names = ["animal", "animal", "tech", "tech"]
    path = tmp_path / "topics.jsonl"
    pd.DataFrame({"text": texts, "label": [names[i % 4] for i in range(60)]}).to_json(
        path, orient="records", lines=True
    )
    data = hf_text_data.run(
        cfg=hf_text_data.HfTextDataConfig(model=str(encoder), path=str(path), seq_len=16, n_calib=0), ctx=StepContext()
    )
    assert data.class_names == ["animal", "tech"]
    tune = OptimConfig(epochs=8, batch_size=8, lr=2e-3, weight_decay=0.0, eval_batch_size=64)
    ctx = StepContext(step="teacher", seed=0)
    art = hf_teacher.run(data, cfg=hf_teacher.HfTeacherConfig(path=str(encoder), fine_tune=tune), ctx=ctx)

    assert art.kind == "teacher" and art.arch["_target_"] == TARGET
    assert {int(k): v for k, v in art.arch["config"]["id2label"].items()} == {0: "animal", 1: "tech"}
    assert "no classification head: fine-tuning it with a new head for 2 labels" in caplog.text
    model = load_model(art, (TARGET,))
    with torch.no_grad():
        predicted = model(data.x_val).argmax(1)
    assert art.metrics["val_acc"] == pytest.approx(float((predicted == data.y_val).float().mean()))
    assert art.metrics["val_acc"] >= 0.9  # learned: chance is 0.5
    # the encoder started from the folder's weights and was trained (not a random re-initialization)
    start = load_for_fine_tuning(encoder, {0: "animal", 1: "tech"}).state_dict()
    tuned = model.model.state_dict()
    emb = next(k for k in start if k.endswith("word_embeddings.weight"))
    drift = (tuned[emb] - start[emb]).abs().max()
    assert 0 < drift < 0.5 * start[emb].abs().max()
