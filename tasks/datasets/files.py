"""The ``data`` task's file sources: the user's ``.npz`` and a CIFAR-10 python batch directory.

Nothing here unpickles freely: ``.npz`` files are read with ``allow_pickle=False`` and CIFAR
batches with an unpickler that admits numpy array reconstruction only. Every refusal is one
line naming the file and the array.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch needs (numpy array reconstruction); refuses any other global."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{mod}", fn)
        for core in ("core", "_core")
        for mod, fn in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"data.path: CIFAR-10 batch file '{path}' does not exist")
    try:
        with path.open("rb") as f:
            d = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (need a dict with b'data' and b'labels')")
    x, y = d[b"data"], np.asarray(d[b"labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be a uint8 array [N, 3072]")
    return x.reshape(-1, 3, 32, 32), y


def cifar10_arrays(cfg: Any) -> tuple[dict, int]:
    root = Path(cfg.path)
    if not cfg.path or not root.is_dir():
        raise ValueError(f"data.path: CIFAR-10 directory '{cfg.path}' does not exist")
    parts = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _cifar_batch(root / "test_batch")
    return {
        "x_train": np.concatenate([p[0] for p in parts]),
        "y_train": np.concatenate([p[1] for p in parts]),
        "x_test": x_test,
        "y_test": y_test,
    }, 10


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, never unpickling: an object array is refused by name, a
    truncated or corrupt archive (``BadZipFile``, CRC or EOF errors) is named by file."""
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ValueError(
            f"{path}: not a readable .npz archive, truncated or corrupt ({type(e).__name__}: {e})".replace("\n", " ")
        ) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array (.npy), expected an .npz archive with named arrays")
    arrays = {}
    with z:
        for key in z.files:
            try:
                arrays[key] = z[key]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise ValueError(
                        f"{path}: array '{key}' holds Python objects (dtype=object); "
                        f"store numeric arrays (pickles are never loaded)"
                    ) from None
                raise ValueError(f"{path}: array '{key}' is unreadable ({e})".replace("\n", " ")) from None
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise ValueError(
                    f"{path}: array '{key}' is truncated or corrupt ({type(e).__name__}: {e})".replace("\n", " ")
                ) from None
    return arrays


def npz_arrays(cfg: Any) -> tuple[dict, int]:
    path = Path(cfg.path)
    if not cfg.path or not path.is_file():
        raise ValueError(f"data.path: npz file '{cfg.path}' does not exist")
    arrays = _read_npz(path)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing required array(s) {missing}")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise ValueError(f"{path}: x_val and y_val must be given together")
    raw: dict[str, np.ndarray] = {
        k: arrays[k] for k in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val") if k in arrays
    }
    if "x_unlabeled" in arrays and cfg.n_transfer > 0:
        raw["x_transfer"] = arrays["x_unlabeled"][: cfg.n_transfer]
    return raw, cfg.num_classes or _infer_classes(raw, path)


def _infer_classes(raw: dict, path: Path) -> int:
    """``max label + 1``, only when the labels are exactly ``0..K-1`` (each class present): a
    stray label far outside the range (1000 among 0..9) would otherwise silently make a
    1001-class problem. Missing classes are legitimate only when ``data.num_classes`` says so."""
    keys = [k for k in ("y_train", "y_val", "y_test") if k in raw]
    labels = [raw[k] for k in keys]
    for key, y in zip(keys, labels):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            return 0  # _validate names the array and the problem
        if y.size and y.min() < 0:
            raise ValueError(f"{path}: {key} has negative labels (min {y.min()})")
    values = np.unique(np.concatenate([y for y in labels if y.size])) if any(y.size for y in labels) else np.array([0])
    k = int(values.max()) + 1
    if len(values) != k:
        raise ValueError(
            f"{path}: labels are not 0..{k - 1}: {k - len(values)} of those classes never occur "
            f"(max label {k - 1}); set data.num_classes if that is intended"
        )
    return k
