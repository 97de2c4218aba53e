"""Decode speed of SmolLM2-135M on each decoding path, in one run: torch eager with its KV cache (the
reference), the exported graph on ONNX Runtime, and on OpenVINO with the cache fed in and out every
token (``OpenVinoDecoder``) against the cache kept inside the plugin (``StatefulOpenVinoDecoder``),
for FP32, NNCF INT8 and data-aware INT4 (AWQ + scale estimation, ratio 0.8, group 64, on
calibration rows of the held-out text's package) weights. Prints ONE JSON object.

Per row: time to first token for a ``--prompt``-token prompt and decode tokens/s at batch 1 (median
of ``--rounds``, ``tasks.llm.timing``), size, and next-token agreement with the reference on the
prompt (one forward), so a fast row that is wrong shows it.

    .venv/bin/python benchmarks/llm_decoders.py [--threads 2 --prompt 512 --new 64 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg: str) -> None:
    print(f"[llm_decoders] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (time to first token)")
    ap.add_argument("--new", type=int, default=64, help="greedy tokens per decode timing")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch
    from machine import machine_info

    from tasks.llm.decoder import OpenVinoDecoder, OrtDecoder, TorchDecoder
    from tasks.llm.export import export_decoder
    from tasks.llm.model import load_causal_lm
    from tasks.llm.stateful import StatefulOpenVinoDecoder
    from tasks.llm.text import lm_texts
    from tasks.llm.timing import memory_bandwidth_gbs
    from tasks.llm.weights import files_size, nncf_weights
    from tasks.runtime.hardware import describe

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model, tokenizer = load_causal_lm("smollm2")
    docs = lm_texts(["torch"], seed=0, eval_files=40, calib_files=0, distill_files=0)["eval"]
    text = "\n\n".join(docs)
    ids = np.array([tokenizer(text)["input_ids"][: args.prompt]], np.int64)
    calib = [ids[:, i : i + 128] for i in range(0, args.prompt - 128, 128)]
    log("exporting")
    fp32 = export_decoder(model)
    log("compressing")
    variants = {
        "fp32": fp32,
        "int8": nncf_weights(fp32, "int8"),
        "int4_awq": nncf_weights(fp32, "int4", 64, 0.8, awq=True, scale_estimation=True, calib=calib),
    }
    bandwidth = memory_bandwidth_gbs()
    reference = TorchDecoder(model)
    want = reference.logits(ids).argmax(-1)
    rows = [_row("torch", "fp32", reference, files_size(fp32), want, ids, args)]
    paths = [("onnxruntime", OrtDecoder), ("openvino", OpenVinoDecoder), ("openvino_stateful", StatefulOpenVinoDecoder)]
    for weights, files in variants.items():
        for runtime, make in paths:
            if runtime == "onnxruntime" and weights != "fp32":
                continue  # the NNCF variants are OpenVINO IR
            log(f"{weights} on {runtime}")
            rows.append(_row(runtime, weights, make(files, args.threads), files_size(files), want, ids, args))
    base = rows[0]["decode_tok_s_b1"]
    for r in rows:
        r["decode_vs_torch"] = r["decode_tok_s_b1"] / base
        r["bandwidth_share"] = r["size_bytes"] * r["decode_tok_s_b1"] / (bandwidth * 1e9)
    print(
        json.dumps(
            {
                "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to FP32)",
                "threads": args.threads,
                "prompt_tokens": args.prompt,
                "new_tokens": args.new,
                "bandwidth_gbs": bandwidth,
                "rows": rows,
                "machine": {**machine_info(threads=args.threads), "describe": describe()},
                "load_average_1m": [load_before, os.getloadavg()[0]],
            },
            indent=2,
        )
    )


def _row(runtime: str, weights: str, decoder, size: int, want, ids, args) -> dict:
    from tasks.llm.timing import time_generation

    start = time.perf_counter()
    agree = float((decoder.logits(ids).argmax(-1) == want).mean())
    log(f"  agreement {agree:.3f} ({time.perf_counter() - start:.1f} s)")
    timing = time_generation(decoder, ids, new_tokens=args.new, batch=1, rounds=args.rounds)
    return {
        "runtime": runtime,
        "weights": weights,
        "size_bytes": size,
        "next_token_agree": agree,
        "ttft_ms": timing["ttft_ms"],
        "decode_tok_s_b1": timing["decode_tok_s"],
        "decode_spread": timing["decode_spread"],
    }


if __name__ == "__main__":
    main()
