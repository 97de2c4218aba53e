"""The ``lm_benchmark`` step: every causal-LM variant on every runtime it runs on, against the
teacher in torch FP32 eager with its KV cache (the reference), and the selection.

Per row (``tasks.llm.bench``): size, perplexity with its interval, the paired relative increase
over the teacher, next-token and greedy agreement, time to first token for a ``prompt_tokens``
prompt and decode tokens/s at batch 1 and ``batch`` at each thread count, resident memory, and the
share of the memory-bandwidth bound (bandwidth measured in the same run). A variant is *rejected*
when its next-token agreement is below ``min_next_token_agree`` (the parity gate) or when the
upper end of its perplexity increase's 95% interval exceeds ``ppl_budget``; the selected row is
the fastest decoder at batch 1 (most threads) among the rest. The table goes to ``llm.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from tasks.core.checks import at_least, require
from tasks.core.context import StepContext
from tasks.core.publication import Publication, Registration
from tasks.core.types import Report
from tasks.llm.types import CausalLM, TokenSet
from tasks.runtime.hardware import describe


@dataclass
class LmBenchmarkConfig:
    runtimes: list[str] = field(default_factory=lambda: ["torch", "onnxruntime", "openvino"])
    threads: list[int] = field(default_factory=lambda: [2])
    prompt_tokens: int = 512  # the prompt of the time-to-first-token figure
    new_tokens: int = 128  # greedy tokens per decode timing
    batch: int = 8  # the second batch size of the decode figure
    rounds: int = 3  # timings are the median over rounds (spread reported)
    window: int = 512  # tokens per forward pass for perplexity and agreement
    agree_prompts: int = 8  # chat prompts for greedy-generation agreement
    agree_tokens: int = 32
    ppl_budget: float = 0.05  # highest relative perplexity increase (upper end of its 95% interval)
    min_next_token_agree: float = 0.9  # the parity gate
    registry_name: str = "llm"  # the selected variant is registered as <registry_name>@<alias> ("" : not at all)
    alias: str = "candidate"

    def __post_init__(self) -> None:
        require("runtimes", set(self.runtimes) <= {"torch", "onnxruntime", "openvino"}, "torch|onnxruntime|openvino")
        require("threads", bool(self.threads) and min(self.threads) >= 1, "list thread counts >= 1")
        for key in ("prompt_tokens", "new_tokens", "batch", "rounds", "window", "agree_prompts", "agree_tokens"):
            at_least(key, getattr(self, key), 1)
        require("ppl_budget", self.ppl_budget >= 0, "must be >= 0")
        require("min_next_token_agree", 0 <= self.min_next_token_agree <= 1, "must be in [0, 1]")


def _prompt(data: TokenSet, tokens: int) -> np.ndarray:
    ids = data.eval_ids[:tokens]
    require("prompt_tokens", len(ids) == tokens, f"the held-out text has only {len(data.eval_ids)} tokens")
    return ids.numpy().astype(np.int64)[None]


def _verdict(row: dict, cfg: LmBenchmarkConfig) -> str:
    if row["next_token_agree"] < cfg.min_next_token_agree:
        return f"next-token agreement {row['next_token_agree']:.3f} < {cfg.min_next_token_agree}"
    if row["ppl_rel_ci95"][1] > cfg.ppl_budget:
        return f"perplexity +{row['ppl_rel']:.1%} (95% CI up to +{row['ppl_rel_ci95'][1]:.1%}) > +{cfg.ppl_budget:.0%}"
    return ""


def _row(model: CausalLM, runtime: str, ref: Any, data: TokenSet, cfg, bandwidth: float, ctx) -> tuple:
    """One (variant, runtime) row; ``ref`` is the teacher's ``tasks.llm.bench.Reference`` (None: this is it)."""
    from tasks.llm.bench import Reference, open_decoder, quality, size_of, speed

    top = max(cfg.threads)
    decoder = open_decoder(model, runtime, top, stateful=True)
    if ref is None:
        ref = Reference(decoder, data.docs(), data.prompts()[: cfg.agree_prompts], cfg.window, cfg.agree_tokens)
    row = {
        "name": model.name,
        "runtime": runtime,
        "format": model.format,
        "parent": model.parent,
        "size_bytes": size_of(model),
        "compression": model.metrics.get("compression", {}),  # weights per precision (lm_quantize)
        **quality(decoder, ref),
    }
    for t in sorted(cfg.threads):
        ctx.progress(f"lm_benchmark: {model.name} on {runtime}, {t} thread(s)")
        dec = decoder if t == top else open_decoder(model, runtime, t, stateful=True)
        row.update(speed(dec, _prompt(data, cfg.prompt_tokens), cfg.new_tokens, cfg.batch, cfg.rounds, t))
    row["rss_mb"] = psutil.Process().memory_info().rss / 2**20
    row["bandwidth_share"] = row["size_bytes"] * row[f"decode_tok_s_b1_t{top}"] / (bandwidth * 1e9)
    return row, ref


def _table(rows: list[dict], top: int) -> str:
    head = "| variant | runtime | size MB | ppl (95% CI) | next-token agree | decode tok/s b1 | ttft ms | selected |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ttft = next(v for k, v in r.items() if k.startswith("ttft_ms_p") and k.endswith(f"_t{top}"))
        lines.append(
            f"| {r['name']} | {r['runtime']} | {r['size_bytes'] / 1e6:.1f} | {r['ppl']:.2f} "
            f"({r['ppl_ci95'][0]:.2f}-{r['ppl_ci95'][1]:.2f}) | {r['next_token_agree']:.3f} | "
            f"{r[f'decode_tok_s_b1_t{top}']:.1f} | {ttft:.0f} | "
            f"{'yes' if r['selected'] else (r['rejected'] or '')} |"
        )
    return "\n".join(lines) + "\n"


def run(models: list[CausalLM], data: TokenSet, *, cfg: LmBenchmarkConfig, ctx: StepContext) -> Report:
    """Rows for every (variant, runtime) pair; the first model is the reference (torch, FP32)."""
    from tasks.llm.bench import RUNTIMES_OF
    from tasks.llm.timing import memory_bandwidth_gbs

    require("models", bool(models) and models[0].format == "torch", "list the torch teacher first (the reference)")
    bandwidth, top, ref = memory_bandwidth_gbs(), max(cfg.threads), None
    rows: list[dict] = []
    for model in models:
        for runtime in (r for r in RUNTIMES_OF[model.format] if r in cfg.runtimes):
            row, ref = _row(model, runtime, ref, data, cfg, bandwidth, ctx)
            row["rejected"] = "" if not rows else _verdict(row, cfg)
            rows.append(row)
    require("runtimes", bool(rows), f"{cfg.runtimes} runs none of the models")
    speed_key = f"decode_tok_s_b1_t{top}"
    best = max((r for r in rows if not r["rejected"]), key=lambda r: r[speed_key])
    for r in rows:
        r["selected"] = r is best
    base = rows[0]
    ttft_key = f"ttft_ms_p{cfg.prompt_tokens}_t{top}"
    ratios = {
        "size": base["size_bytes"] / best["size_bytes"],
        "decode_b1": best[speed_key] / base[speed_key],
        "ttft": base[ttft_key] / best[ttft_key],
        "ppl_rel": best["ppl_rel"],
    }
    ctx.log_metrics({"selected_size_ratio": ratios["size"], "selected_decode_speedup": ratios["decode_b1"]})
    data_out = {
        "reference": f"{base['name']}_{base['runtime']}_fp32",
        "machine": describe(),
        "bandwidth_gbs": bandwidth,
        "threads": sorted(cfg.threads),
        "selected": best["name"],
        "selected_runtime": best["runtime"],
        "selected_vs_reference": ratios,
        "variants": rows,
    }
    table = _table(rows, top).encode()
    ctx.log_file("llm.json", json.dumps(data_out, indent=1).encode())
    ctx.log_file("llm.md", table)
    held_out = {"docs": data.docs(), "prompt": _prompt(data, cfg.prompt_tokens)[0].tolist()}
    ctx.log_file("eval_tokens.json", json.dumps(held_out).encode())  # what the rows were scored on
    selected = next(m for m in models if m.name == best["name"])
    return Report(data=data_out, files={"llm.md": table}, publish=_publication(selected, best, table, cfg))


def _publication(model: CausalLM, row: dict, table: bytes, cfg: LmBenchmarkConfig) -> Publication:
    """The table on the parent run and the selected variant in the registry with everything serving
    needs: graph or weights, tokenizer and chat template, generation config (``tasks.llm.served``)."""
    from tasks.llm.served import lm_files

    models = []
    if cfg.registry_name:
        files = lm_files(model)
        models.append(
            Registration(cfg.registry_name, b"", cfg.alias, model.name, files, row["runtime"], kind="causal_lm")
        )
    summary = f"Selected **{row['name']}** on {row['runtime']} (the fastest within the budget).\n\n"
    return Publication(files={"llm.md": table}, description=summary + table.decode(), models=models)
