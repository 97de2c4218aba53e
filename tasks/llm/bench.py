"""Measure one causal-LM variant on one runtime: quality against the teacher and generation speed.

Quality (``quality``): token-weighted perplexity on the held-out documents with a bootstrap interval
over documents, its relative increase over the teacher's with a *paired* interval (the same
resampled documents for both), next-token top-1 agreement with the teacher, and greedy-generation
agreement on the chat prompts (share of the first ``agree_tokens`` tokens identical).

Speed (``speed``): time to first token for a ``prompt_tokens`` prompt, decode tokens/s at batch 1
and at batch ``batch`` (greedy, ``new_tokens`` tokens, median and spread over rounds), at each
thread count; the share of the memory-bandwidth bound at batch 1 = bytes of weights read per token
(the model's size: at batch 1 every weight is read once per token, the tied embedding once as the
LM head) x tokens/s / bandwidth (``tasks.llm.timing.memory_bandwidth_gbs``, measured in the same run).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.llm.decoder import OpenVinoDecoder, OrtDecoder, TorchDecoder
from tasks.llm.model import build_causal_lm, load_lm_state
from tasks.llm.quality import doc_scores, greedy_agreement, perplexity, relative_increase, top_agreement
from tasks.llm.timing import time_generation
from tasks.llm.types import CausalLM
from tasks.llm.weights import files_size

RUNTIMES_OF = {"torch": ("torch",), "onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",)}


def size_of(model: CausalLM) -> int:
    """Bytes of the variant's weights as stored (a tied head once)."""
    if model.format == "torch":
        return sum(t.numel() * t.element_size() for t in model.state_dict.values())
    return files_size(model.files)


def open_decoder(model: CausalLM, runtime: str, threads: int, stateful: bool = False) -> Any:
    """A ``tasks.llm.decoder`` Decoder for ``model`` on ``runtime`` with ``threads`` threads; on OpenVINO
    with ``stateful`` the cache stays inside the plugin (``tasks.llm.stateful``: one batch at a time)."""
    if runtime not in RUNTIMES_OF[model.format]:
        raise ValueError(f"runtimes: {model.format} model '{model.name}' does not run on {runtime}")
    if runtime == "torch":
        import torch

        torch.set_num_threads(threads)
        net = build_causal_lm(model.config)
        load_lm_state(net, model.state_dict)
        return TorchDecoder(net)
    if runtime == "onnxruntime":
        return OrtDecoder(model.files, threads)
    if stateful:
        from tasks.llm.stateful import StatefulOpenVinoDecoder

        return StatefulOpenVinoDecoder(model.files, threads)
    return OpenVinoDecoder(model.files, threads)


class Reference:
    """The teacher's per-document NLL, logits function and greedy tokens, measured once."""

    def __init__(self, decoder: Any, docs: list[list[int]], prompts: list[list[int]], window: int, tokens: int):
        self.decoder, self.docs, self.prompts, self.window, self.tokens = decoder, docs, prompts, window, tokens
        sums, counts, self.tops = doc_scores(decoder.logits, docs, window)
        self.nll = (sums, counts)
        self.greedy = greedy_tokens(decoder, prompts, tokens)


def greedy_tokens(decoder: Any, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    return [decoder.generate(np.array([p], dtype=np.int64), tokens)[0].tolist() for p in prompts]


def quality(decoder: Any, ref: Reference) -> dict:
    """Perplexity (and interval), its paired relative increase over the teacher, agreements."""
    if decoder is ref.decoder:
        nll, tops = ref.nll, ref.tops
    else:
        sums, counts, tops = doc_scores(decoder.logits, ref.docs, ref.window)
        nll = (sums, counts)
    ppl = perplexity(*nll)
    rel = relative_increase(*ref.nll, *nll)
    agree = top_agreement(ref.tops, tops)
    greedy = ref.greedy if decoder is ref.decoder else greedy_tokens(decoder, ref.prompts, ref.tokens)
    return {
        "doc_nll": [round(float(v), 4) for v in nll[0]],  # per document: the paired comparisons of other tools
        "doc_tokens": [int(v) for v in nll[1]],
        "ppl": ppl["ppl"],
        "ppl_ci95": ppl["ci95"],
        "ppl_rel": rel["rel"],
        "ppl_rel_ci95": rel["ci95"],
        "next_token_agree": agree["agree"],
        "greedy_agree": greedy_agreement(ref.greedy, greedy, ref.tokens),
    }


def speed(decoder: Any, prompt: np.ndarray, new_tokens: int, batch: int, rounds: int, threads: int) -> dict:
    """Time to first token and decode tokens/s at batch 1 and ``batch``, suffixed ``_t<threads>``."""
    one = time_generation(decoder, prompt, new_tokens=new_tokens, batch=1, rounds=rounds)
    many = time_generation(decoder, prompt, new_tokens=new_tokens, batch=batch, rounds=rounds)
    p, t = prompt.shape[1], threads
    return {
        f"ttft_ms_p{p}_t{t}": one["ttft_ms"],
        f"ttft_ms_p{p}_t{t}_spread": one["ttft_ms_spread"],
        f"decode_tok_s_b1_t{t}": one["decode_tok_s"],
        f"decode_tok_s_b1_t{t}_spread": one["decode_spread"],
        f"decode_tok_s_b{batch}_t{t}": many["decode_tok_s"],
        f"decode_tok_s_b{batch}_t{t}_spread": many["decode_spread"],
    }
