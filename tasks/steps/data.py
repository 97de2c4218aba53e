"""The ``data`` task: load a classification data set, split it and standardize it.

Sources (``cfg.source``):

- ``mnist1d``: generated offline with ``mnist1d.data.make_dataset`` (the paper's default
  4000 train / 1000 test, length 40). The unlabeled transfer pool for distillation is more
  inputs from the same generator under another seed (labels discarded).
- ``digits``: scikit-learn's 8x8 digits as ``[N, 1, 8, 8]`` images; a seeded train/test split.
- ``cifar10``: a local directory in the CIFAR-10 python batch format (``data_batch_1..5``,
  ``test_batch``), read with a restricted unpickler that only admits numpy array
  reconstruction; images as ``[N, 3, 32, 32]``.
- ``npz``: the user's ``x_train, y_train, x_test, y_test`` (+ optional ``x_val, y_val``,
  ``x_unlabeled``), loaded with ``allow_pickle=False``.

For ``digits`` and ``cifar10`` the transfer pool (``n_transfer > 0``) is made of augmented
train inputs (random shifts of up to ``shift`` pixels plus Gaussian noise of 0.1 std).
Validation comes from the train split (seeded) unless the source provides it; inputs are
standardized with train statistics only, so val/test/transfer never leak into them.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from tasks.core.checks import at_least, fraction
from tasks.core.context import StepContext
from tasks.core.options import DataSource, Normalize
from tasks.core.types import Dataset
from tasks.datasets.checks import check_cast, check_normalized, check_sizes
from tasks.datasets.files import cifar10_arrays, npz_arrays


@dataclass
class DataConfig:
    source: DataSource = DataSource.mnist1d
    path: str = ""  # cifar10: batch directory; npz: the .npz file
    val_fraction: float = 0.1  # of train, when the source has no validation split
    test_fraction: float = 0.2  # digits only (the other sources have a fixed test split)
    n_transfer: int = 25000  # unlabeled transfer pool size (npz: cap on x_unlabeled); 0 = none
    seed: int = 0  # split and transfer-pool seed
    max_train: int = 0  # keep at most this many train rows (smoke runs); 0 = all
    num_classes: int = 0  # npz: 0 = infer from the labels; other sources fix it
    normalize: Normalize = Normalize.channel  # channel (per channel; scalar for [N, L]) | feature | none
    mnist1d_seed: int = 42  # generator seed of the standard MNIST-1D split
    shift: int = 1  # digits/cifar10 transfer pool: max random shift in pixels

    def __post_init__(self) -> None:
        fraction("val_fraction", self.val_fraction, open_low=True, open_high=True)
        fraction("test_fraction", self.test_fraction, open_low=True, open_high=True)
        for key in ("n_transfer", "max_train", "num_classes", "shift"):
            at_least(key, getattr(self, key), 0)


@contextmanager
def _isolated_rng(seed: int):
    """Run code that reseeds ``np.random``/``random`` globally without leaking the change."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        np.random.seed(seed)
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _mnist1d(cfg: DataConfig) -> tuple[dict, int]:
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    args = get_dataset_args()
    args.seed = cfg.mnist1d_seed
    with _isolated_rng(cfg.mnist1d_seed):
        d = make_dataset(args)
    raw = {"x_train": d["x"], "y_train": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}
    if cfg.n_transfer > 0:
        pool = get_dataset_args()
        per_class = -(-cfg.n_transfer // 10)  # make_dataset draws num_samples // 10 per class
        pool.num_samples, pool.train_split = per_class * 10, 1.0
        pool.seed = cfg.mnist1d_seed + 1 + cfg.seed
        with _isolated_rng(pool.seed):
            raw["x_transfer"] = make_dataset(pool)["x"][: cfg.n_transfer]
    return raw, 10


def _digits(cfg: DataConfig) -> tuple[dict, int]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 1, 8, 8)
    perm = np.random.default_rng(cfg.seed).permutation(len(y))
    n_test = int(round(len(y) * cfg.test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}, 10


LOADERS = {"mnist1d": _mnist1d, "digits": _digits, "cifar10": cifar10_arrays, "npz": npz_arrays}


def _validate(raw: dict, num_classes: int, origin: str, names: dict | None = None) -> None:
    """Same lengths, finite inputs, integer labels in [0, num_classes), one input shape of at
    least one dimension per row. ``names`` maps keys to the names the user's file uses."""
    names = names or {}
    if raw["x_train"].ndim < 2:
        raise ValueError(
            f"{origin}: x_train has shape {list(raw['x_train'].shape)}, expected [N, features...] (one row per sample)"
        )
    shape = raw["x_train"].shape[1:]
    for split in ("train", "val", "test", "transfer"):
        x, y = raw.get(f"x_{split}"), raw.get(f"y_{split}")
        if x is None:
            continue
        xn = names.get(f"x_{split}", f"x_{split}")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"{origin}: {xn} has non-numeric dtype {x.dtype}")
        if x.shape[1:] != shape:
            raise ValueError(f"{origin}: {xn} rows have shape {list(x.shape[1:])}, x_train {list(shape)}")
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.size else np.zeros(0, bool)
        if bad.any():
            raise ValueError(
                f"{origin}: {xn} contains NaN or inf ({int(bad.sum())} row(s), first row {int(bad.argmax())})"
            )
        if y is None:
            continue
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{origin}: y_{split} has shape {list(y.shape)}, expected [{len(x)}] like x_{split}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{origin}: y_{split} must hold integer labels, got dtype {y.dtype}")
        if num_classes and y.size and (y.min() < 0 or y.max() >= num_classes):  # 0: not inferable
            raise ValueError(f"{origin}: y_{split} has labels outside [0, {num_classes}): min {y.min()}, max {y.max()}")
    if len(raw["x_train"]) == 0 or len(raw["x_test"]) == 0:
        raise ValueError(f"{origin}: x_train and x_test must not be empty")


def _split_val(raw: dict, cfg: DataConfig) -> None:
    """Carve a seeded validation split out of train (in place) when the source has none."""
    if "x_val" in raw:
        return
    n = len(raw["y_train"])
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_val = max(1, int(round(n * cfg.val_fraction)))
    val, train = perm[:n_val], perm[n_val:]
    raw["x_val"], raw["y_val"] = raw["x_train"][val], raw["y_train"][val]
    raw["x_train"], raw["y_train"] = raw["x_train"][train], raw["y_train"][train]


def augmented_pool(x: torch.Tensor, n: int, shift: int, seed: int) -> torch.Tensor:
    """``n`` copies of random rows of images ``x [N, C, H, W]``, each shifted by up to ``shift``
    pixels (zero fill) and with Gaussian noise of 0.1 x the data std: unlabeled transfer inputs."""
    gen = torch.Generator().manual_seed(seed)
    src = x[torch.randint(len(x), (n,), generator=gen)]
    offsets = torch.randint(-shift, shift + 1, (n, 2), generator=gen)
    padded = torch.nn.functional.pad(src, (shift, shift, shift, shift))
    out = torch.empty_like(src)
    h, w = src.shape[-2:]
    for dy, dx in offsets.unique(dim=0).tolist():
        rows = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().squeeze(1)
        out[rows] = padded[rows, :, shift + dy : shift + dy + h, shift + dx : shift + dx + w]
    return out + 0.1 * float(x.std()) * torch.randn(out.shape, generator=gen)


def _standardize(x_train: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean/std from train: per channel for ``[N, C, ...]``, a scalar for ``[N, L]``, or per feature."""
    if mode == "feature":
        dims: tuple[int, ...] = (0,)
    elif x_train.dim() >= 3:
        dims = tuple(d for d in range(x_train.dim()) if d != 1)
    else:
        dims = tuple(range(x_train.dim()))
    mean = x_train.mean(dim=dims, keepdim=True)[0]
    std = x_train.std(dim=dims, keepdim=True)[0].clamp_min(1e-6)
    return mean, std


def _check_config(cfg: DataConfig) -> None:
    if cfg.source not in LOADERS:
        raise ValueError(f"data.source: unknown value '{cfg.source}' ({' | '.join(LOADERS)})")
    if cfg.normalize not in ("channel", "feature", "none"):
        raise ValueError(f"data.normalize: unknown value '{cfg.normalize}' (channel | feature | none)")


def run(*, cfg: DataConfig, ctx: StepContext) -> Dataset:
    """Load ``cfg.source``, validate, split train/val, build the transfer pool and standardize."""
    _check_config(cfg)
    raw, num_classes = LOADERS[cfg.source](cfg)
    origin, names = cfg.path or cfg.source, {"x_transfer": "x_unlabeled"} if cfg.source == "npz" else None
    _validate(raw, num_classes, origin, names)
    check_cast(raw, origin, np.float32, names)  # the checks on what the model sees: tasks.datasets.checks
    _split_val(raw, cfg)
    if cfg.max_train:
        raw["x_train"], raw["y_train"] = raw["x_train"][: cfg.max_train], raw["y_train"][: cfg.max_train]
    check_sizes(raw, num_classes, origin, names)
    t = {k: torch.as_tensor(v, dtype=torch.long if k.startswith("y") else torch.float32) for k, v in raw.items()}
    if cfg.source in ("digits", "cifar10") and cfg.n_transfer > 0:
        t["x_transfer"] = augmented_pool(t["x_train"], cfg.n_transfer, cfg.shift, cfg.seed)
    if cfg.normalize != "none":
        mean, std = _standardize(t["x_train"], cfg.normalize)
        t.update({k: (v - mean) / std for k, v in t.items() if k.startswith("x")})
    check_normalized(t, origin, names)
    x_transfer = t.get("x_transfer")
    ctx.log_metrics(
        {
            "n_train": len(t["x_train"]),
            "n_val": len(t["x_val"]),
            "n_test": len(t["x_test"]),
            "n_transfer": 0 if x_transfer is None else len(x_transfer),
        }
    )
    return Dataset(
        name=str(cfg.source),
        x_train=t["x_train"],
        y_train=t["y_train"],
        x_val=t["x_val"],
        y_val=t["y_val"],
        x_test=t["x_test"],
        y_test=t["y_test"],
        num_classes=num_classes,
        x_transfer=x_transfer,
    )
