"""The corpus and tokenization behind the ``text_data`` step (``tasks/steps/text_data.py``): an
offline English text set for embedding models, tokenized, as a ``Dataset``.

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
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tasks.models.transformer import TEXT_INPUTS

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE = re.compile(r">>>|\.\.\.|::|[{}\[\]=<>_\\|`*#@$]|\w\(")
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


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


def stdlib_sentences(cfg: Any) -> list[str]:
    """The sentence corpus of this Python's standard library (see the module docstring)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sentences(_docstrings(root, cfg.max_files), cfg.min_words, cfg.max_words)


def tokenize(tok, texts: list[str], seq_len: int) -> Tensor:
    """``[N, 3, seq_len]`` int64: input_ids, attention_mask, token_type_ids stacked on dim 1."""
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    if len(texts) == 0:
        return torch.zeros(0, len(TEXT_INPUTS), seq_len, dtype=torch.long)
    return torch.stack([enc[name].long() for name in TEXT_INPUTS], dim=1)
