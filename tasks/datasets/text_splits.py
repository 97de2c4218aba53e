"""The train / validation / test splits of the user's text, and how they are made.

- **Carving**: a file without its own validation / test file is split seeded and stratified by
  label (each class spread over the splits in proportion; unlabeled text: a plain seeded split);
  the same seed gives the same splits, and split rows keep their file order.
- **Duplicates**: texts (or text pairs) found in two splits are counted; dropping removes the
  validation / test rows whose text also occurs in train, so evaluation is not contaminated.

``DataFileError`` lives here, below the other text modules, because every one of them raises it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")
_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))


class DataFileError(ValueError):
    """A data file that cannot be used as it is: one line naming the file and what is wrong."""


@dataclass
class TextSplit:
    texts: list[str]
    pairs: list[str] | None = None  # the second text of each pair (text_pair_column), else None
    labels: list[int] | None = None  # label ids (index into TextSplits.label_names), None if unlabeled

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: list[int]) -> TextSplit:
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return TextSplit([self.texts[i] for i in idx], pick(self.pairs), pick(self.labels))

    def keys(self) -> list[Any]:
        """What makes two rows duplicates: the text, or the (text, pair) pair."""
        return list(self.texts) if self.pairs is None else list(zip(self.texts, self.pairs))


@dataclass
class TextSplits:
    train: TextSplit
    val: TextSplit
    test: TextSplit
    label_names: list[str] = field(default_factory=list)  # id -> name; [] when unlabeled
    sources: dict[str, str] = field(default_factory=dict)  # split -> the file (or folder[split]) it came from
    duplicates: dict[str, int] = field(default_factory=dict)  # train_val / train_test / val_test: shared texts
    removed_duplicates: int = 0  # validation + test rows dropped by drop_duplicates

    def split(self, name: str) -> TextSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def digest(self) -> str:
        """SHA-256 of the label names and every split's texts, pairs and labels (in order): the same
        content always gives the same digest, any change to a text or label a different one."""
        h = hashlib.sha256(json.dumps(self.label_names, ensure_ascii=False).encode())
        for name in SPLITS:
            s = self.split(name)
            pairs: list[str | None] = list(s.pairs) if s.pairs is not None else [None] * len(s)
            labels: list[int | None] = list(s.labels) if s.labels is not None else [None] * len(s)
            for row in zip(s.texts, pairs, labels):
                h.update(json.dumps([name, *row], ensure_ascii=False).encode() + b"\n")
        return h.hexdigest()


def carve(data: TextSplit, fractions: dict[str, float], seed: int, source: str) -> dict[str, TextSplit]:
    """``fractions`` of ``data``'s rows as new splits, the rest as train: seeded and stratified.

    Each label's rows are shuffled and given positions spread evenly over [0, 1) (a random offset
    per label); taking rows in position order, every prefix (and every window) holds the labels in
    proportion, so each split gets its share of every label that has enough rows."""
    n = len(data)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(data.labels if data.labels is not None else [0] * n):
        groups[y].append(i)
    rng = random.Random(seed)
    keyed: list[tuple[float, int, int]] = []
    for label in sorted(groups):
        idx = groups[label]
        rng.shuffle(idx)
        offset = rng.random()
        keyed += [((rank + offset) / len(idx), label, i) for rank, i in enumerate(idx)]
    order = [i for _, _, i in sorted(keyed)]
    out: dict[str, TextSplit] = {}
    start = 0
    for name, frac in fractions.items():
        take = round(n * frac)
        if take == 0:
            raise DataFileError(
                f"{source}: the {name} split is empty: {n} row(s) x {name}_fraction {frac:g} rounds to 0; "
                f"give more rows, a larger fraction or a {name}_path"
            )
        out[name] = data.take(sorted(order[start : start + take]))
        start += take
    if start >= n:
        raise DataFileError(f"{source}: no training rows left after carving {', '.join(fractions)} from {n} row(s)")
    out["train"] = data.take(sorted(order[start:]))
    return out


def count_duplicates(data: dict[str, TextSplit]) -> dict[str, int]:
    """How many texts (or text pairs) each two splits share: ``train_val``, ``train_test``, ``val_test``."""
    keys = {name: set(data[name].keys()) for name in SPLITS}
    return {f"{a}_{b}": len(keys[a] & keys[b]) for a, b in _PAIRS}


def drop_train_duplicates(data: dict[str, TextSplit], sources: dict[str, str]) -> tuple[dict[str, TextSplit], int]:
    """``data`` without the validation / test rows whose text also occurs in train, and how many
    rows were dropped; a split left empty is refused (nothing would be left to evaluate)."""
    train = set(data["train"].keys())
    out, removed = dict(data), 0
    for name in ("val", "test"):
        keep = [i for i, k in enumerate(data[name].keys()) if k not in train]
        removed += len(data[name]) - len(keep)
        if not keep:
            raise DataFileError(
                f"{sources[name]}: every {name} row also occurs in train; nothing is left to evaluate "
                f"with drop_duplicates"
            )
        out[name] = data[name].take(keep)
    return out, removed
