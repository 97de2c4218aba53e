"""The data task: every source, splits, standardization, the transfer pool and bad input."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from tasks.core.context import StepContext
from tasks.steps.data import DataConfig, augmented_pool, run


def _run(**kw):
    ctx = StepContext()
    return run(cfg=DataConfig(**kw), ctx=ctx), ctx


def test_mnist1d_offline_split_pool_and_rng_isolation():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    d, ctx = _run(source="mnist1d", n_transfer=105, val_fraction=0.1)
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)  # global RNGs untouched
    assert d.name == "mnist1d" and d.num_classes == 10 and d.input_shape == [40]
    assert (len(d.x_train), len(d.x_val), len(d.x_test), len(d.x_transfer)) == (3600, 400, 1000, 105)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.long
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    assert set(d.y_train.tolist()) == set(range(10))
    assert ctx.summary == {"n_train": 3600, "n_val": 400, "n_test": 1000, "n_transfer": 105}
    # transfer rows are new inputs, not copies of labeled ones
    dist = torch.cdist(d.x_transfer, torch.cat([d.x_train, d.x_val, d.x_test]))
    assert float(dist.min()) > 1e-3
    again, _ = _run(source="mnist1d", n_transfer=105, val_fraction=0.1, max_train=500)
    assert len(again.x_train) == 500
    assert torch.allclose(again.x_transfer, d.x_transfer, atol=0.1)  # same rows, stats of 500 train rows
    assert torch.equal(again.y_train, d.y_train[:500]) and torch.equal(again.y_test, d.y_test)


def test_digits_images_split_and_augmented_pool():
    d, _ = _run(source="digits", n_transfer=300, test_fraction=0.2, val_fraction=0.1)
    assert d.input_shape == [1, 8, 8] and d.num_classes == 10
    assert len(d.x_test) == round(1797 * 0.2) and len(d.x_train) + len(d.x_val) + len(d.x_test) == 1797
    assert d.x_transfer.shape == (300, 1, 8, 8)
    assert abs(float(d.x_train.mean())) < 1e-4
    same, _ = _run(source="digits", n_transfer=300, test_fraction=0.2, val_fraction=0.1)
    assert torch.equal(same.x_train, d.x_train) and torch.equal(same.x_transfer, d.x_transfer)
    other, _ = _run(source="digits", n_transfer=0, seed=1)
    assert other.x_transfer is None and not torch.equal(other.y_test, d.y_test)


def test_augmented_pool_shifts_within_bounds():
    x = torch.zeros(4, 1, 5, 5)
    x[:, :, 2, 2] = 1.0
    pool = augmented_pool(x, 50, shift=1, seed=0)  # noise 0.1 * std keeps the peak on top
    peaks = pool.flatten(1).argmax(1)
    rows, cols = peaks // 5, peaks % 5
    assert rows.sub(2).abs().max() <= 1 and cols.sub(2).abs().max() <= 1
    assert len(set(peaks.tolist())) > 1


def _write_cifar(root, n=6, protocol=2):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img.png"] * n,
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_batches(tmp_path, protocol):
    _write_cifar(tmp_path, protocol=protocol)
    d, _ = _run(source="cifar10", path=str(tmp_path), val_fraction=0.2, n_transfer=0)
    assert d.input_shape == [3, 32, 32] and len(d.x_test) == 6 and len(d.x_train) + len(d.x_val) == 30
    channel_means = d.x_train.mean(dim=(0, 2, 3))
    assert torch.allclose(channel_means, torch.zeros(3), atol=1e-4)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar10_refuses_foreign_globals(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="data_batch_3.*not allowed"):
        _run(source="cifar10", path=str(tmp_path))
    assert not marker.exists()


def test_cifar10_missing_batch(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(ValueError, match="test_batch.*does not exist"):
        _run(source="cifar10", path=str(tmp_path))


def _npz(tmp_path, **arrays):
    rng = np.random.default_rng(0)
    base = {
        "x_train": rng.normal(size=(40, 3)),
        "y_train": rng.integers(0, 3, 40),
        "x_test": rng.normal(size=(10, 3)),
        "y_test": rng.integers(0, 3, 10),
    }
    base.update(arrays)
    path = tmp_path / "d.npz"
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


def test_npz_with_val_and_unlabeled_pool(tmp_path):
    rng = np.random.default_rng(1)
    path = _npz(
        tmp_path, x_val=rng.normal(size=(5, 3)), y_val=np.array([0, 1, 2, 2, 1]), x_unlabeled=rng.normal(size=(30, 3))
    )
    d, _ = _run(source="npz", path=path, n_transfer=20, normalize="feature")
    assert (len(d.x_train), len(d.x_val), len(d.x_test), len(d.x_transfer)) == (40, 5, 10, 20)
    assert d.num_classes == 3
    assert torch.allclose(d.x_train.mean(0), torch.zeros(3), atol=1e-5)
    d2, _ = _run(source="npz", path=path, n_transfer=0, num_classes=5, normalize="none")
    assert d2.x_transfer is None and d2.num_classes == 5


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_test": None}, r"missing required array\(s\) \['x_test'\]"),
        ({"x_train": np.full((40, 3), np.nan)}, "x_train contains NaN or inf"),
        ({"y_train": np.zeros(39, dtype=int)}, r"y_train has shape \[39\], expected \[40\]"),
        ({"y_test": np.full(10, 7)}, r"y_test has labels outside \[0, 3\)"),
        ({"y_train": np.zeros(40)}, "y_train must hold integer labels"),
        ({"x_test": np.zeros((10, 4))}, r"x_test rows have shape \[4\], x_train \[3\]"),
        ({"x_val": np.zeros((5, 3))}, "x_val and y_val must be given together"),
    ],
)
def test_npz_bad_input(tmp_path, arrays, message):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(ValueError, match=message) as err:
        _run(source="npz", path=path, num_classes=3)
    assert "\n" not in str(err.value)


def test_npz_refuses_pickled_objects(tmp_path):
    path = _npz(tmp_path, x_unlabeled=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="array 'x_unlabeled' holds Python objects"):
        _run(source="npz", path=path)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"source": "imagenet"}, "data.source: unknown value 'imagenet'"),
        ({"source": "npz", "path": "/nonexistent.npz"}, "npz file '/nonexistent.npz' does not exist"),
        ({"source": "cifar10", "path": "/nonexistent"}, "CIFAR-10 directory '/nonexistent' does not exist"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"normalize": "zca"}, "data.normalize: unknown value 'zca'"),
    ],
)
def test_bad_config(kw, message):
    with pytest.raises(ValueError, match=message):
        _run(**kw)


@pytest.mark.parametrize("name", ["mnist1d", "digits", "cifar10", "npz"])
def test_conf_data_files_are_valid_data_configs(name):
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parent.parent / "conf" / "data" / f"{name}.yaml"
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(path)))
    assert isinstance(cfg, DataConfig) and cfg.source == name
