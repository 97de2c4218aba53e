"""Checks on what the model will see, not only on the raw arrays: after the train/val split, after
the cast to the training dtype and after normalization. Each refusal is one line naming the file
(``origin``), the array as the user's file names it, and the size or value at fault, raised
before any training.

- sizes: every input row has at least one value; train keeps at least one row per class (and
  two classes) after the validation split and ``max_train``; validation, test and a given
  unlabeled pool are not empty;
- the cast: float64 values beyond float32's range become inf;
- normalization: train statistics that overflow in float32 turn every value into NaN or inf;
  a constant x_train (zero variance everywhere) leaves nothing to learn.
"""

from __future__ import annotations

import numpy as np
import torch

SPLITS = ("x_train", "x_val", "x_test", "x_transfer")


def _name(names: dict | None, key: str) -> str:
    return (names or {}).get(key, key)


def check_sizes(raw: dict, num_classes: int, origin: str, names: dict | None = None) -> None:
    """After the validation split and ``max_train``: splits big enough to train, validate, test."""
    width = int(np.prod(raw["x_train"].shape[1:]))
    if width == 0:
        raise ValueError(f"{origin}: x_train rows have shape {list(raw['x_train'].shape[1:])}: no values to learn from")
    n_train, n_val = len(raw["x_train"]), len(raw["x_val"])
    need = max(2, num_classes)
    if n_train < need:
        raise ValueError(
            f"{origin}: x_train: {n_train} row(s) left for training after the validation split and "
            f"max_train; need at least {need} (two, and one per class)"
        )
    classes = len(np.unique(raw["y_train"]))
    if classes < 2:
        raise ValueError(f"{origin}: y_train: {classes} class among {n_train} training rows; a classifier needs 2")
    if n_val == 0:
        raise ValueError(f"{origin}: {_name(names, 'x_val')}: 0 rows; validation needs at least 1")
    if "x_transfer" in raw and len(raw["x_transfer"]) == 0:
        raise ValueError(f"{origin}: {_name(names, 'x_transfer')}: 0 rows; omit it or give at least 1")


def _first_bad_row(x: torch.Tensor) -> tuple[int, int]:
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    return int(bad.sum()), int(bad.nonzero()[0, 0]) if bad.any() else -1


def check_cast(raw: dict, origin: str, dtype=np.float32, names: dict | None = None) -> None:
    """Every input is still finite in the training dtype (float64 beyond float32's range is inf).
    On the arrays as the file holds them, so the row is the file's row."""
    for key in SPLITS:
        x = raw.get(key)
        if x is None or not x.size or not np.issubdtype(x.dtype, np.floating):
            continue
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(x.astype(dtype).reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{origin}: {_name(names, key)}: {int(bad.sum())} row(s) hold values beyond {np.dtype(dtype).name}'s "
                f"range (|x| > {np.finfo(dtype).max:.3g}), inf once cast for training (first row {int(bad.argmax())})"
            )


def check_normalized(t: dict, origin: str, names: dict | None = None) -> None:
    """Every input is finite after normalization, and x_train is not constant."""
    for key in SPLITS:
        x = t.get(key)
        if x is None or not x.numel():
            continue
        rows, first = _first_bad_row(x)
        if rows:
            raise ValueError(
                f"{origin}: {_name(names, key)}: {rows} row(s) are NaN or inf after normalization with the "
                f"train mean/std (the statistics overflow float32; rescale the data) (first row {first})"
            )
    x = t["x_train"]
    if bool((x == x.reshape(-1)[0]).all()):
        raise ValueError(
            f"{origin}: x_train is constant (every value {float(x.reshape(-1)[0]):g} after normalization): "
            f"nothing to learn"
        )
