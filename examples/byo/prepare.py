"""Stand-in for what a user already has: their data as an ``.npz`` and their trained model as a
safetensors checkpoint. Plain PyTorch, no slimray: the model file is the user's own.

    python -m examples.byo.prepare                    # -> examples/byo/out/{data.npz,model.safetensors}
    slimray experiment=byo                            # compress it (conf/experiment/byo.yaml)

The data is MNIST-1D (generated offline by the ``mnist1d`` package), split into the arrays the
``npz`` data source reads: ``x_train, y_train, x_test, y_test`` plus ``x_val, y_val``, the rows the
model was *not* trained on (slimray measures the accuracy budget on them: rows carved out of
``x_train`` would be rows the model has already seen), and ``x_unlabeled``, inputs without labels
that the students are distilled on as well (the teacher labels them).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from examples.byo.model import ResNet1D

OUT = Path(__file__).resolve().parent / "out"


def _mnist1d(samples: int, seed: int, train_split: float = 0.8) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = samples, seed, train_split
    state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    try:
        return make_dataset(args)  # reseeds numpy/random globally: restored below
    finally:
        np.random.set_state(state[0])
        random.setstate(state[1])


def make_data(samples: int, seed: int, unlabeled: int = 0) -> dict[str, np.ndarray]:
    """MNIST-1D arrays (float32 inputs ``[N, 40]``, int64 labels), 10% of train held out as val,
    plus ``unlabeled`` inputs without labels from another seed (a distillation transfer pool)."""
    d = _mnist1d(samples, seed)
    x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
    n_val = len(x) // 10
    pool = {"x_unlabeled": _mnist1d(unlabeled, seed + 1, 1.0)["x"].astype(np.float32)} if unlabeled else {}
    return {
        **pool,
        "x_train": x[n_val:],
        "y_train": y[n_val:],
        "x_val": x[:n_val],
        "y_val": y[:n_val],
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }


def train(model: torch.nn.Module, arrays: dict, epochs: int, lr: float, seed: int) -> float:
    """AdamW + one-cycle schedule; keeps the weights of the best validation epoch. Returns its accuracy."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    xv, yv = torch.from_numpy(arrays["x_val"]), torch.from_numpy(arrays["y_val"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    best, best_state = -1.0, None
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(128):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean())
        print(f"epoch {epoch + 1}/{epochs} val_acc={acc:.4f}", flush=True)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--samples", type=int, default=8000)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--unlabeled", type=int, default=8000, help="rows of x_unlabeled (0: none)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    arrays = make_data(a.samples, 42 + a.seed, a.unlabeled)
    model = ResNet1D(in_ch=1, length=arrays["x_train"].shape[-1], n_classes=10, width=a.width)
    val_acc = train(model, arrays, a.epochs, a.lr, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    np.savez(a.out / "data.npz", **arrays)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(a.out / "model.safetensors"))
    with torch.no_grad():
        test_acc = float(
            (model(torch.from_numpy(arrays["x_test"])).argmax(1) == torch.from_numpy(arrays["y_test"])).float().mean()
        )
    summary = {"out": str(a.out), "width": a.width, "val_acc": val_acc, "test_acc": test_acc}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
