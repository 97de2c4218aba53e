"""Accuracy against bits per quantizer (uniform, uniform asymmetric, mean/std, log2) on MNIST-1D.

Trains the teacher (conf/model/cnn1d_teacher.yaml) once and, per seed, the KD student of
benchmarks/kd_gain.py (tasks/steps/distill.py defaults); then quantizes every Conv/Linear weight of each
with ``quantize.method: fake_kbit`` at each bit width and quantizer and measures test accuracy.
Every k-bit model is simulated (FP32 arithmetic on quantized values): the figures are accuracy and
the size computed at the bit width, no speed. Prints ONE JSON object (student: mean of the seeds
and its 95% interval, ``*_ci95``; ``vs_fp32_points_ci95``: the paired drop against the FP32
student of the same seed).

    .venv/bin/python benchmarks/kbit_quantizers.py [--seeds N] [--bits 2 3 4 6 8] [--epochs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from kd_gain import _model, _train  # benchmarks/ is the script's directory
from machine import machine_info
from seeded import add_seeds, mean_ci

from tasks.core.context import StepContext
from tasks.models.build import complete_arch, count_params, load_model, make_artifact
from tasks.steps import data as data_task
from tasks.steps import distill, infer, quantize
from tasks.training.loop import OptimConfig, accuracy

QUANTIZERS = {  # label -> QuantizeConfig fields
    "uniform": {"quantizer": "uniform"},
    "uniform_asym": {"quantizer": "uniform", "symmetric": False},
    "mean": {"quantizer": "mean", "clip_std": 3.0},
    "log2": {"quantizer": "log2"},
}


def sweep(art, data, bits: list[int]) -> dict:
    """{quantizer: {bits: {test_acc, bit_size_bytes}}} for one FP32 model."""
    out: dict = {}
    for label, kw in QUANTIZERS.items():
        for b in bits:
            cfg = quantize.QuantizeConfig(method="fake_kbit", bits=b, **kw)
            q = quantize.run(art, data, cfg=cfg, ctx=StepContext(step=f"kbit_{label}_{b}"))
            acc = accuracy(load_model(q), data.x_test, data.y_test)
            out.setdefault(label, {})[str(b)] = {"test_acc": acc, "bit_size_bytes": q.metrics["bit_size_bytes"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_seeds(p)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    p.add_argument("--epochs", type=int, default=distill.DistillConfig().optim.epochs, help="KD student epochs")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--n-transfer", type=int, default=25000)
    args = p.parse_args()

    t0 = time.perf_counter()
    data = data_task.run(cfg=data_task.DataConfig(source="mnist1d", n_transfer=args.n_transfer), ctx=StepContext())
    t_arch = complete_arch(_model("cnn1d_teacher"), data.input_shape, data.num_classes)
    teacher, _ = _train(t_arch, data.x_train, data.y_train, data, OptimConfig(epochs=args.teacher_epochs), 0)
    t_art = make_artifact(teacher, t_arch, name="teacher", kind="teacher")
    logits = infer.run(t_art, data, cfg=infer.InferConfig(), ctx=StepContext())
    defaults = distill.DistillConfig()
    kd_cfg = dataclasses.replace(
        defaults, student=_model("cnn1d_student"), optim=dataclasses.replace(defaults.optim, epochs=args.epochs)
    )
    students = [distill.run(data, logits, cfg=kd_cfg, ctx=StepContext(step="kd", seed=s)) for s in args.seeds]
    per_seed = [sweep(s, data, args.bits) for s in students]
    fp32 = [accuracy(load_model(s), data.x_test, data.y_test) for s in students]
    mean = {
        q: {
            b: {
                **mean_ci("test_acc", (r[q][b]["test_acc"] for r in per_seed)),
                **mean_ci("vs_fp32_points", (100 * (r[q][b]["test_acc"] - f) for r, f in zip(per_seed, fp32))),
                "test_acc_min": min(r[q][b]["test_acc"] for r in per_seed),
                "bit_size_bytes": per_seed[0][q][b]["bit_size_bytes"],
            }
            for b in per_seed[0][q]
        }
        for q in QUANTIZERS
    }
    print(
        json.dumps(
            {
                **machine_info(threads=torch.get_num_threads()),
                "benchmark": "kbit_quantizers",
                "dataset": "mnist1d",
                "deployment": "simulated: fake k-bit weights, FP32 arithmetic; size at the bit width, no speed",
                "student": {
                    "arch": students[0].arch,
                    "params": count_params(load_model(students[0])),
                    "seeds": args.seeds,
                    **mean_ci("fp32_test_acc", fp32),
                    "fp32_size_bytes": 4
                    * sum(t.numel() for t in students[0].state_dict.values() if t.is_floating_point()),
                    "kbit": mean,
                },
                "teacher": {
                    "params": count_params(teacher),
                    "fp32_test_acc": accuracy(teacher, data.x_test, data.y_test),
                    "kbit": sweep(t_art, data, args.bits),
                },
                "total_s": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
