"""Causal-LM loading, text and quality (tasks.llm.model / text / quality) on the tiny random Llama."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from lm_models import tiny_llama
from safetensors.torch import load_file, save_file

from tasks.llm.model import (
    build_causal_lm,
    config_dict,
    lm_state,
    load_causal_lm,
    load_lm_state,
    tokenizer_files,
    tokenizer_from_files,
)
from tasks.llm.quality import (
    doc_nll,
    doc_scores,
    greedy_agreement,
    next_token_agreement,
    perplexity,
    relative_increase,
    top_agreement,
    torch_logits,
)
from tasks.llm.text import CHAT_PROMPTS, lm_texts, pack, render_chat, tokenize_docs

PACKAGES = ["json", "http", "logging", "urllib", "wsgiref"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_causal_lm(str(tiny_llama(tmp_path_factory.mktemp("tiny"))))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def _one_line(excinfo, *words):
    text = str(excinfo.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_load_tiny_folder(tiny):
    model, tokenizer = tiny
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tokenizer.pad_token_id is not None and model.config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer("the cat sat on the mat")["input_ids"]
    assert _logits(model, ids).shape == (len(ids), len(tokenizer))


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(ValueError) as e:
        load_causal_lm(str(tmp_path / "nowhere"))
    _one_line(e, "nowhere", "no such folder")
    with pytest.raises(ValueError) as e:
        load_causal_lm(str(tmp_path / "model.gguf"))
    _one_line(e, "model.gguf", "no such GGUF file")
    with pytest.raises(ValueError) as e:
        load_causal_lm(str(tmp_path))
    _one_line(e, "no config.json")
    folder = tiny_llama(tmp_path / "m")
    with pytest.raises(ValueError) as e:
        load_causal_lm(str(folder), gguf_file="absent.gguf")
    _one_line(e, "absent.gguf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ValueError) as e:
        load_causal_lm(str(folder))
    _one_line(e, "LlamaForSequenceClassification", "ForCausalLM")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError) as e:
        load_causal_lm(str(folder))
    _one_line(e, "no tokenizer files")


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickle_weights_only(tmp_path, tiny):
    """A pytorch_model.bin of plain tensors loads (weights_only=True); one with other objects is refused."""
    folder = tiny_llama(tmp_path / "m")
    model = load_causal_lm(str(folder))[0]
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    ids = [3, 50, 70, 90]
    assert torch.equal(_logits(load_causal_lm(str(folder))[0], ids), _logits(model, ids))
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ValueError) as e:
        load_causal_lm(str(folder))
    _one_line(e, "pytorch_model.bin", "weights_only=True")


@pytest.mark.parametrize("tie", [True, False])
def test_state_round_trip(tmp_path, tie):
    model = load_causal_lm(str(tiny_llama(tmp_path, tie=tie)))[0]
    config = json.loads(json.dumps(config_dict(model)))
    state = lm_state(model)
    assert ("lm_head.weight" in state) is not tie
    save_file(state, tmp_path / "state.safetensors")  # no shared tensors
    rebuilt = load_lm_state(build_causal_lm(config), load_file(tmp_path / "state.safetensors"))
    ids = list(range(5, 40))
    assert torch.equal(_logits(rebuilt, ids), _logits(model, ids))
    assert (rebuilt.lm_head.weight is rebuilt.model.embed_tokens.weight) is tie
    with pytest.raises(ValueError) as e:
        load_lm_state(build_causal_lm(config), {k: v for k, v in state.items() if "layers.1.mlp.up" not in k})
    _one_line(e, "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ValueError) as e:
        load_lm_state(build_causal_lm(config), {**state, "extra.weight": torch.zeros(1)})
    _one_line(e, "extra.weight")
    with pytest.raises(ValueError) as e:
        build_causal_lm({**config, "architectures": ["LlamaModel"]})
    _one_line(e, "LlamaModel")


def test_tokenizer_files_round_trip(tiny):
    tokenizer = tiny[1]
    files = tokenizer_files(tokenizer)
    assert all(isinstance(v, bytes) for v in files.values()) and "tokenizer.json" in files
    again = tokenizer_from_files(files)
    text = "Explain why the sky is blue."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert render_chat(again, text) == render_chat(tokenizer, text)
    assert again.pad_token_id == tokenizer.pad_token_id
    config = json.loads(files["tokenizer_config.json"])
    config.pop("pad_token")
    no_pad = tokenizer_from_files({**files, "tokenizer_config.json": json.dumps(config).encode()})
    assert no_pad.pad_token == no_pad.eos_token == "<|endoftext|>"  # pad = eos when missing
    with pytest.raises(ValueError) as e:
        tokenizer_from_files({"../tokenizer.json": b"{}"})
    _one_line(e, "../tokenizer.json")


def test_render_chat(tiny):
    tokenizer = tiny[1]
    ids = render_chat(tokenizer, CHAT_PROMPTS[0])
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert len(CHAT_PROMPTS) == 24 and len(set(CHAT_PROMPTS)) == 24
    plain = tokenizer_from_files({k: v for k, v in tokenizer_files(tokenizer).items() if "chat_template" not in k})
    assert render_chat(plain, "hello there") == tokenizer("hello there")["input_ids"]


def test_text_splits_disjoint_and_seeded():
    a = lm_texts(PACKAGES, seed=0, eval_files=6, calib_files=3, distill_files=5)
    assert [len(a[k]) for k in ("eval", "calib", "distill")] == [6, 3, 5]
    docs = a["eval"] + a["calib"] + a["distill"]
    assert len(set(docs)) == len(docs) and all(len(d.split()) >= 30 for d in docs)
    paragraphs = [p for d in docs for p in d.split("\n\n")]
    assert len(set(paragraphs)) == len(paragraphs)  # no text in two documents
    assert lm_texts(PACKAGES, seed=0, eval_files=6, calib_files=3, distill_files=5) == a
    assert lm_texts(PACKAGES, seed=1, eval_files=6, calib_files=3, distill_files=5)["eval"] != a["eval"]
    with pytest.raises(ValueError) as e:
        lm_texts(PACKAGES, seed=0, eval_files=1000, calib_files=0, distill_files=0)
    _one_line(e, "1000 requested")


def test_tokenize_and_pack(tiny):
    tokenizer = tiny[1]
    docs = tokenize_docs(tokenizer, ["a cat sat on the warm mat " * 20, "x", "the dog ran"], max_tokens=16)
    assert len(docs) == 2 and len(docs[0]) == 16 and 2 <= len(docs[1]) <= 16
    assert docs[0] == tokenizer("a cat sat on the warm mat " * 20)["input_ids"][:16]
    rows = pack(docs * 4, seq_len=10, rows=5, eos_id=tokenizer.eos_token_id)
    assert rows.shape == (5, 10) and rows.dtype == torch.long
    assert rows.view(-1)[16].item() == tokenizer.eos_token_id
    with pytest.raises(ValueError) as e:
        pack(docs, seq_len=100, rows=5)
    _one_line(e, "500 needed")


def test_perplexity_of_uniform_model_is_vocab_size():
    docs = [list(range(1, n)) for n in (5, 9, 30, 3)]
    sums, counts = doc_nll(lambda ids: np.zeros((ids.shape[1], 37), np.float32), docs, window=8)
    assert counts.tolist() == [3, 7, 28, 1]  # every token after the first, across windows
    out = perplexity(sums, counts)
    assert out["ppl"] == pytest.approx(37) and out["ci95"] == pytest.approx([37, 37])
    assert out["tokens"] == 39 and out["docs"] == 4


def test_nll_matches_torch_and_interval_contains_point(tiny):
    model, tokenizer = tiny
    fn = torch_logits(model)
    texts = [f"the {w} sat on a warm mat near the river" for w in "cat dog bird fox".split()]
    docs = tokenize_docs(tokenizer, texts, 64)
    sums, counts = doc_nll(fn, docs, window=64)
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([docs[0]]), labels=torch.tensor([docs[0]])).loss.item()
    assert sums[0] / counts[0] == pytest.approx(loss, rel=1e-5)
    out = perplexity(sums, counts)
    assert out["ci95"][0] <= out["ppl"] <= out["ci95"][1]
    # cutting into windows of 4 scores the same tokens, with less context
    assert doc_nll(fn, docs, window=4)[1].tolist() == counts.tolist()


def test_relative_increase_and_agreement(tmp_path, tiny):
    model, tokenizer = tiny
    other = load_causal_lm(str(tiny_llama(tmp_path, layers=2)))[0]
    texts = [f"{w} loves the quiet town in winter and the lake" for w in "a b c d e".split()]
    docs = tokenize_docs(tokenizer, texts, 32)
    ref, cand = torch_logits(model), torch_logits(other)
    s0, c0 = doc_nll(ref, docs, 16)
    same = relative_increase(s0, c0, s0, c0)
    assert same["rel"] == 0 and same["ci95"] == [0, 0]
    s1, c1 = doc_nll(cand, docs, 16)
    diff = relative_increase(s0, c0, s1, c1)
    assert diff["rel"] != 0 and diff["ci95"][0] <= diff["rel"] <= diff["ci95"][1]
    agree = next_token_agreement(ref, ref, docs, 16)
    assert agree["agree"] == 1 and agree["ci95"] == [1, 1] and agree["positions"] == int(c0.sum())
    assert 0 <= next_token_agreement(ref, cand, docs, 16)["agree"] < 1
    assert greedy_agreement([[1, 2, 3]], [[1, 2, 3]]) == 1
    assert greedy_agreement([[1, 2, 3, 4], [5]], [[1, 9, 3], [5]], n=4) == pytest.approx((2 / 4 + 1) / 2)
    with pytest.raises(ValueError):
        greedy_agreement([[1]], [])


def test_one_pass_scores_give_the_same_nll_and_agreement(tmp_path, tiny):
    model, tokenizer = tiny
    other = load_causal_lm(str(tiny_llama(tmp_path, layers=2)))[0]
    docs = tokenize_docs(tokenizer, [f"{w} walks along the river at dawn with a dog" for w in "a b c".split()], 32)
    ref, cand = torch_logits(model), torch_logits(other)
    s0, c0, t0 = doc_scores(ref, docs, 12)  # windows of 12: several per document
    np.testing.assert_allclose(s0, doc_nll(ref, docs, 12)[0])
    assert [len(t) for t in t0] == c0.tolist()
    t1 = doc_scores(cand, docs, 12)[2]
    assert top_agreement(t0, t1)["agree"] == next_token_agreement(ref, cand, docs, 12)["agree"]
    assert top_agreement(t0, t0)["agree"] == 1
    with pytest.raises(ValueError, match="same documents"):
        top_agreement(t0, t1[:-1])


@pytest.mark.slow
def test_packaged_smollm2_loads_and_chats():
    model, tokenizer = load_causal_lm("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and not getattr(model, "is_quantized", False)
    assert model.lm_head.weight is model.model.embed_tokens.weight and "lm_head.weight" not in lm_state(model)
    ids = render_chat(tokenizer, "What is the capital of France?")
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, len(ids) :])
