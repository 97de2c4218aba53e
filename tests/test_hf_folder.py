"""A user's Hugging Face model folder as a teacher: tiny random models of six architectures, written with
``save_pretrained`` beside their own tokenizer, are inspected offline, loaded, wrapped for stacked inputs
and exported to ONNX with their own input names; ONNX Runtime agrees with torch. Pickle-only folders
load only through ``torch.load(weights_only=True)``; bad folders fail in one line."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")

import onnx  # noqa: E402

from tasks.models.hf_export import TESTED_EXPORTS, ExportUnsupported, export_onnx  # noqa: E402
from tasks.models.hf_folder import ModelFolderError, inspect_folder  # noqa: E402
from tasks.models.hf_load import Classifier, Embedder, load_classifier, load_encoder  # noqa: E402
from tasks.runtime.onnx import ort_feed, ort_session  # noqa: E402
from tests.hf_models import ARCHS, LABELS, SENTENCES, encode, tokenizer, write_folder  # noqa: E402

# each tokenizer class's own model_input_names, in the stacking order (input_ids, attention_mask, token_type_ids)
INPUTS = {
    "bert": ["input_ids", "attention_mask", "token_type_ids"],
    "distilbert": ["input_ids", "attention_mask"],
    "roberta": ["input_ids", "attention_mask"],
    "xlm-roberta": ["input_ids", "attention_mask"],
    "deberta-v2": ["input_ids", "attention_mask", "token_type_ids"],
    "mpnet": ["input_ids", "attention_mask"],
}


def _ort(data: bytes, rows: torch.Tensor) -> np.ndarray:
    session = ort_session(data, threads=1)
    return session.run(None, ort_feed(session, rows))[0]


def _graph_inputs(data: bytes) -> list[str]:
    return [i.name for i in onnx.load_from_string(data).graph.input]


def test_every_tested_architecture_is_covered_here():
    assert set(TESTED_EXPORTS) == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_classification_folder_exports_with_its_own_inputs(tmp_path, arch):
    folder = write_folder(tmp_path, arch)
    info = inspect_folder(folder)
    assert (info.model_type, info.task, info.id2label, info.num_labels) == (arch, "classification", LABELS, 3)
    assert info.input_names == INPUTS[arch]
    assert info.weights == ["model.safetensors"] and info.max_length == 64

    model, tok = load_classifier(folder)
    assert not model.training and model.config.id2label == LABELS
    wrapper = Classifier(model, info.input_names)
    rows = encode(tok, info.input_names)  # real sentences, padded, stacked in the folder's order
    with torch.no_grad():
        enc = tok(SENTENCES, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
        direct = model(**enc).logits
        logits = wrapper(rows)
    torch.testing.assert_close(logits, direct)  # the stacked channels reach the inputs they are named for

    data = export_onnx(wrapper, info.input_names, seq_len=16, dynamo=False)
    assert _graph_inputs(data) == info.input_names  # DeBERTa-v3 keeps token_type_ids though it reads none
    np.testing.assert_allclose(_ort(data, rows), logits.numpy(), atol=1e-4)
    longer = encode(tok, info.input_names, length=40)  # another batch and length: both axes dynamic
    with torch.no_grad():
        np.testing.assert_allclose(_ort(data, longer[:3]), wrapper(longer[:3]).numpy(), atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_embedding_folder_pools_as_its_sentence_transformers_config_says(tmp_path, arch):
    folder = write_folder(tmp_path, arch, task="embedding", pooling="cls", normalize=True)
    info = inspect_folder(folder)
    assert (info.task, info.id2label, info.num_labels) == ("embedding", None, 0)
    assert (info.pooling, info.normalize, info.pooling_note) == ("cls", True, "sentence-transformers config cls")

    model, tok, pooling = load_encoder(folder)
    assert pooling == "cls" and not model.training
    wrapper = Embedder(model, pooling, info.normalize, info.input_names)
    rows = encode(tok, info.input_names)
    with torch.no_grad():
        hidden = model(**dict(zip(info.input_names, rows.unbind(1)))).last_hidden_state
        emb = wrapper(rows)
    torch.testing.assert_close(emb, F.normalize(hidden[:, 0], dim=-1))
    assert not torch.allclose(emb, F.normalize(hidden.mean(1), dim=-1), atol=1e-3)  # not some other pooling

    data = export_onnx(wrapper, info.input_names, seq_len=16, dynamo=False)
    assert _graph_inputs(data) == info.input_names
    assert onnx.load_from_string(data).graph.output[0].name == "sentence_embedding"
    np.testing.assert_allclose(_ort(data, rows), emb.numpy(), atol=1e-4)


def _masked_mean(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


@pytest.mark.parametrize(
    "pooling, mode",
    [
        ("mean", "mean"),
        ("max", "max"),
        ({"embedding_dimension": 32, "pooling_mode": "max"}, "max"),  # the format sentence-transformers >= 5 writes
        ({"word_embedding_dimension": 32}, "mean"),  # no flag set: sentence-transformers pools by mean
        (None, "mean"),  # a plain folder
    ],
)
def test_pooling_modes(tmp_path, pooling, mode):
    folder = write_folder(tmp_path, "bert", task="embedding", pooling=pooling)
    info = inspect_folder(folder)
    assert info.pooling == mode and info.normalize is False
    assert info.pooling_source == ("default" if pooling is None else "sentence-transformers 1_Pooling/config.json")
    model, tok, pool = load_encoder(folder)
    wrapper = Embedder(model, pool, False, info.input_names)
    rows = encode(tok, info.input_names)
    mask = rows[:, info.input_names.index("attention_mask")]
    with torch.no_grad():
        hidden = model(**dict(zip(info.input_names, rows.unbind(1)))).last_hidden_state
        emb = wrapper(rows)
    if mode == "mean":
        expected = _masked_mean(hidden, mask)
    else:
        expected = torch.stack([h[m.bool()].max(0).values for h, m in zip(hidden, mask)])
    torch.testing.assert_close(emb, expected)
    data = export_onnx(wrapper, info.input_names, seq_len=16, dynamo=False)
    np.testing.assert_allclose(_ort(data, rows), emb.numpy(), atol=1e-4)


@pytest.mark.parametrize("pooling, normalize", [("cls", True), ("mean", False)])
def test_embeddings_match_sentence_transformers(tmp_path, pooling, normalize):
    st = pytest.importorskip("sentence_transformers")
    folder = write_folder(tmp_path, "bert", task="embedding", pooling=pooling, normalize=normalize)
    model, tok, pool = load_encoder(folder)
    names = inspect_folder(folder).input_names
    wrapper = Embedder(model, pool, normalize, names)
    reference = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    expected = reference.encode(SENTENCES, convert_to_tensor=True)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = wrapper(*(enc[n] for n in names))  # separate tensors, in the folder's input order
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)


def test_sharded_safetensors_load_like_one_file(tmp_path):
    one = write_folder(tmp_path / "one", "bert")
    sharded = write_folder(tmp_path / "sharded", "bert", weights="sharded")
    info = inspect_folder(sharded)
    assert len(info.weights) > 1 and all(w.endswith(".safetensors") for w in info.weights)
    assert info.task == "classification"
    rows = encode(tokenizer("bert"), info.input_names)
    with torch.no_grad():
        a = Classifier(load_classifier(one)[0], info.input_names)(rows)
        b = Classifier(load_classifier(sharded)[0], info.input_names)(rows)
    torch.testing.assert_close(a, b)


def test_pickle_only_folder_loads_through_weights_only(tmp_path):
    reference = write_folder(tmp_path / "safe", "bert")
    folder = write_folder(tmp_path / "pickle", "bert", weights="pickle")
    info = inspect_folder(folder)
    assert info.weights == ["pytorch_model.bin"] and info.task == "classification"
    rows = encode(tokenizer("bert"), info.input_names)
    with torch.no_grad():
        a = Classifier(load_classifier(folder)[0], info.input_names)(rows)
        b = Classifier(load_classifier(reference)[0], info.input_names)(rows)
    torch.testing.assert_close(a, b)


class _Planted:
    """An object whose unpickling would call ``os.mkdir`` (what a hostile checkpoint does)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _plant(bin_path, marker):
    state = torch.load(bin_path, weights_only=True)
    torch.save({**state, "planted": _Planted(str(marker))}, bin_path)


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    folder = write_folder(tmp_path, "bert", weights="pickle")
    marker = tmp_path / "ran"
    _plant(folder / "pytorch_model.bin", marker)
    inspect_folder(folder)  # inspecting reads no weights
    with pytest.raises(ModelFolderError) as err:
        load_classifier(folder)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(folder))
    assert "pytorch_model.bin" in msg and "weights_only=True" in msg and "safetensors" in msg
    assert "posix.mkdir" in msg and "weights_only=False" not in msg  # names the global, never advises unsafe loading
    assert not marker.exists()


def test_safetensors_win_over_a_planted_pickle(tmp_path):
    folder = write_folder(tmp_path, "bert")
    shutil.copy(write_folder(tmp_path / "p", "bert", weights="pickle") / "pytorch_model.bin", folder)
    marker = tmp_path / "ran"
    _plant(folder / "pytorch_model.bin", marker)
    assert inspect_folder(folder).weights == ["model.safetensors"]
    load_classifier(folder)
    load_encoder(folder)
    assert not marker.exists()


def test_pickle_refused_when_weights_only_cannot_be_promised(tmp_path, monkeypatch):
    import tasks.models.hf_folder as hf_folder

    folder = write_folder(tmp_path, "bert", weights="pickle")
    monkeypatch.setattr(hf_folder, "_pickle_loads_weights_only", lambda: False)  # an older transformers
    with pytest.raises(ModelFolderError, match="convert the folder to safetensors") as err:
        inspect_folder(folder)
    assert "\n" not in str(err.value)


def _edit_json(path, **changes):
    body = json.loads(path.read_text())
    body.update(changes)
    path.write_text(json.dumps(body))


def _drop(folder, *names):
    for name in names:
        (folder / name).unlink()


def _modules(folder, extra):
    body = json.loads((folder / "modules.json").read_text()) + [extra]
    (folder / "modules.json").write_text(json.dumps(body))


BAD = {
    "no config.json": (lambda f: _drop(f, "config.json"), "not a Hugging Face model folder (no config.json)"),
    "config.json not JSON": (lambda f: (f / "config.json").write_text("{"), "config.json is not readable JSON"),
    "unknown model_type": (lambda f: _edit_json(f / "config.json", model_type="mystery"), "model_type 'mystery'"),
    "no tokenizer": (
        lambda f: _drop(f, "tokenizer.json", "tokenizer_config.json"),
        "no tokenizer (tokenizer.json, vocab.txt",
    ),
    "vocab.json without merges": (
        lambda f: (_drop(f, "tokenizer.json"), (f / "vocab.json").write_text("{}")),
        "vocab.json without merges.txt",
    ),
    "no weights": (lambda f: _drop(f, "model.safetensors"), "no weights (model.safetensors"),
    "missing shard": (
        lambda f: (
            (f / "model.safetensors").rename(f / "model-00001-of-00002.safetensors"),
            (f / "model.safetensors.index.json").write_text(
                json.dumps(
                    {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
                )
            ),
        ),
        "names model-00002-of-00002.safetensors, which is not in the folder",
    ),
    "a Dense module": (
        lambda f: _modules(f, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}),
        "modules.json has sentence_transformers.models.Dense",
    ),
    "two pooling modes": (
        lambda f: _edit_json(f / "1_Pooling" / "config.json", pooling_mode_mean_tokens=True),
        "1_Pooling/config.json pools with cls + mean; supported: one of cls, mean, max",
    ),
    "unsupported pooling": (
        lambda f: (f / "1_Pooling" / "config.json").write_text('{"pooling_mode": "weightedmean"}'),
        "pools with weightedmean",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folder_is_refused_in_one_line(tmp_path, case):
    spoil, expected = BAD[case]
    folder = write_folder(tmp_path, "bert", task="embedding", pooling="cls")
    spoil(folder)
    with pytest.raises(ModelFolderError) as err:
        inspect_folder(folder)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{folder}: ") and expected in msg


def test_not_a_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="no such folder"):
        inspect_folder(tmp_path / "missing")


def test_task_from_labels_and_head_without_architectures(tmp_path):
    cls_folder = write_folder(tmp_path, "bert")
    _edit_json(cls_folder / "config.json", architectures=None)  # labels + classifier weights: still a classifier
    assert inspect_folder(cls_folder).task == "classification"
    emb_folder = write_folder(tmp_path, "bert", task="embedding")
    _edit_json(emb_folder / "config.json", id2label={"0": "neg", "1": "pos"})  # labels but no head
    info = inspect_folder(emb_folder)
    assert (info.task, info.id2label) == ("embedding", None)
    with pytest.raises(ModelFolderError, match="no sequence-classification head"):
        load_classifier(emb_folder)


def test_classifier_with_missing_head_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = write_folder(tmp_path, "deberta-v2")
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, folder / "model.safetensors")
    with pytest.raises(ModelFolderError, match=r"lack 2 tensor\(s\) of the classifier, e.g. classifier.bias") as err:
        load_classifier(folder)  # never a classifier with a random head
    assert "\n" not in str(err.value)
    load_encoder(folder)  # the encoder is all there


def test_max_length_follows_sentence_transformers_and_positions(tmp_path):
    folder = write_folder(tmp_path, "roberta", task="embedding", pooling="mean")
    assert inspect_folder(folder).max_length == 64  # 66 positions - padding index 1 - 1
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    assert inspect_folder(folder).max_length == 32


def test_export_refusals_name_the_architecture_and_the_tested_list():
    import transformers as hf

    torch.manual_seed(0)
    cfg = hf.FNetConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64
    )
    fnet = Classifier(hf.FNetForSequenceClassification(cfg).eval(), ["input_ids", "token_type_ids"])
    with pytest.raises(ExportUnsupported) as err:  # Fourier mixing: the TorchScript exporter has no FFT
        export_onnx(fnet, ["input_ids", "token_type_ids"], seq_len=16, dynamo=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("fnet: does not export to ONNX; tested: " + ", ".join(TESTED_EXPORTS))
    with pytest.raises(ValueError, match="differ from the wrapper's"):
        export_onnx(fnet, ["input_ids"], seq_len=16)
    with pytest.raises(ValueError, match=r"seq_len 65: must be in \[2, 64\]"):
        export_onnx(fnet, ["input_ids", "token_type_ids"], seq_len=65)


# the three most distinct for torch.export: token_type_ids in the middle and absolute positions (BERT),
# no token_type_ids and positions counted from the padding index (RoBERTa), token_type_ids listed last
# but unread and relative attention only (DeBERTa-v3); every architecture's export is proven above
TORCH_EXPORT_ARCHS = ("bert", "roberta", "deberta-v2")


@pytest.mark.slow
@pytest.mark.parametrize("arch", TORCH_EXPORT_ARCHS)
def test_torch_export_onnx_matches_torch(tmp_path, arch, caplog):
    """The default exporter (``torch.export``, ~10 s a model here) gives the same graph inputs and logits."""
    folder = write_folder(tmp_path, arch)
    info = inspect_folder(folder)
    model, tok = load_classifier(folder)
    wrapper = Classifier(model, info.input_names)
    with caplog.at_level(logging.WARNING, logger="slimray"):
        data = export_onnx(wrapper, info.input_names, seq_len=16)
    assert not [r for r in caplog.records if "TorchScript" in r.getMessage()]  # torch.export itself traced it
    assert _graph_inputs(data) == info.input_names
    rows = encode(tok, info.input_names, length=24)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(data, rows), wrapper(rows).numpy(), atol=1e-4)
