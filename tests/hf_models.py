"""Tiny random Hugging Face model folders (as ``save_pretrained`` writes them) with offline tokenizers.

Each architecture gets its own tokenizer class built from a vocabulary of a few words (WordPiece,
byte-level BPE or Unigram, as the real checkpoints use), so ``model_input_names`` is the class's
own (no ``token_type_ids`` for DistilBERT / RoBERTa / MPNet; DeBERTa-v2 lists it last) and the
models stay tiny: hidden 32, 2 layers, 2 heads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "small models are fast",
    "hello world of tiny tokenizers",
]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
ARCHS = ("bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "mpnet")
_WORDS = sorted({w for s in SENTENCES for w in s.split()})
_LETTERS = sorted(set("".join(_WORDS)))


def _wordpiece(specials: list[str]) -> dict[str, int]:
    tokens = specials + _WORDS + _LETTERS + [f"##{c}" for c in _LETTERS]
    return {t: i for i, t in enumerate(tokens)}


def _unigram(specials: list[str], last: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    pieces = [(f"\u2581{w}", -2.0) for w in _WORDS] + [("\u2581", -3.0)] + [(c, -5.0) for c in _LETTERS]
    return [(s, 0.0) for s in specials] + pieces + [(s, 0.0) for s in last]


def tokenizer(arch: str):
    """The architecture's own tokenizer class over a tiny vocabulary (no download)."""
    import transformers as hf

    if arch in ("bert", "distilbert"):
        cls = hf.BertTokenizer if arch == "bert" else hf.DistilBertTokenizer
        return cls(vocab=_wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    if arch == "mpnet":
        return hf.MPNetTokenizer(vocab=_wordpiece(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]))
    if arch == "roberta":
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + list(bytes_to_unicode().values())
        return hf.RobertaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    if arch == "xlm-roberta":
        return hf.XLMRobertaTokenizer(vocab=_unigram(["<s>", "<pad>", "</s>", "<unk>"], ("<mask>",)))
    if arch == "deberta-v2":
        return hf.DebertaV2Tokenizer(vocab=_unigram(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    raise ValueError(f"no tiny tokenizer for {arch}")


def config(arch: str, vocab_size: int, num_labels: int = 3):
    """A tiny config (hidden 32, 2 layers, 2 heads) of ``arch``, with ``LABELS`` when classifying."""
    import transformers as hf

    labels: dict[str, Any] = {}
    if num_labels == 3:
        labels = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    small: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **labels,
    )
    if arch == "bert":
        return hf.BertConfig(max_position_embeddings=64, **small)
    if arch == "distilbert":
        return hf.DistilBertConfig(
            vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, **labels
        )
    if arch in ("roberta", "xlm-roberta"):
        cls = hf.RobertaConfig if arch == "roberta" else hf.XLMRobertaConfig
        return cls(max_position_embeddings=66, pad_token_id=1, type_vocab_size=1, **small)
    if arch == "deberta-v2":  # DeBERTa-v3's layout: relative attention only, no token types
        buckets: dict[str, Any] = {"position_buckets": 16}  # log-bucketed relative positions (v3 uses 256)
        return hf.DebertaV2Config(
            max_position_embeddings=64,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            type_vocab_size=0,
            pad_token_id=0,
            **small,
            **buckets,
        )
    if arch == "mpnet":
        return hf.MPNetConfig(max_position_embeddings=66, pad_token_id=1, **small)
    raise ValueError(f"no tiny config for {arch}")


def write_folder(
    root: Path,
    arch: str,
    task: str = "classification",
    pooling: str | dict | None = None,
    normalize: bool = False,
    weights: str = "safetensors",
    seed: int = 0,
) -> Path:
    """``root/<arch>-<task>``: a random tiny model and its tokenizer, as ``save_pretrained`` writes them.

    ``pooling`` adds sentence-transformers files: a mode (``cls``...) writes the legacy
    ``pooling_mode_*`` flags in ``1_Pooling/config.json`` (as on the Hub), a dict is written as it is;
    ``normalize`` adds a Normalize module. ``weights``: ``safetensors``, ``sharded`` (several
    safetensors files + index) or ``pickle`` (only ``pytorch_model.bin``, a plain state dict).
    """
    import transformers as hf

    folder = root / f"{arch}-{task}"
    tok = tokenizer(arch)
    torch.manual_seed(seed)
    cfg = config(arch, len(tok), num_labels=3 if task == "classification" else 2)
    auto = hf.AutoModelForSequenceClassification if task == "classification" else hf.AutoModel
    model = auto.from_config(cfg).eval()
    if weights == "pickle":
        folder.mkdir(parents=True)
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="20KB" if weights == "sharded" else "50GB")
    tok.save_pretrained(folder)
    if pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
            (folder / "2_Normalize").mkdir()
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        flags = {
            f"pooling_mode_{m}": pooling == k
            for k, m in (("cls", "cls_token"), ("mean", "mean_tokens"), ("max", "max_tokens"))
        }
        body = pooling if isinstance(pooling, dict) else {"word_embedding_dimension": 32, **flags}
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(body))
    return folder


def encode(tok, input_names: list[str], sentences: list[str] = SENTENCES, length: int = 16) -> torch.Tensor:
    """``[N, len(input_names), length]``: the tokenizer's rows stacked in the folder's input order."""
    enc = tok(sentences, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return torch.stack([enc[n] for n in input_names], dim=1)


def tiny_run(experiment: str, folder, data_path, workdir, *extra: str) -> list[str]:
    """The overrides of an ``hf_*`` experiment at test size: the folder and file given, 16 tokens a
    row, one distillation epoch, a benchmark of single timing rounds, a private MLflow store."""
    fast = "pipeline.steps.benchmark.params"
    return [
        f"experiment={experiment}",
        f"teacher.path={folder}",
        f"data.path={data_path}",
        "data.seq_len=16",
        "data.n_calib=8",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        "pipeline.steps.student.params.optim.epochs=1",
        *(["pipeline.steps.pruned.params.finetune.epochs=1"] if experiment == "hf_textcls" else []),
        *(f"{fast}.{k}" for k in ("warmup=1", "iters_b1=3", "iters_b256=2", "rounds=1", "speed_threads=[2]")),
        f"{fast}.throughput_batch=8",
        *extra,
    ]
