"""The ``lm_data`` step: the text a causal language model is judged, calibrated and distilled on.

Held-out documents, calibration rows and distillation rows come from the prose (docstrings and
comments) of installed Python packages, one document per source file, each file in one split only
(``tasks.llm.text.lm_texts``: seeded), so no evaluation document is seen in calibration or
distillation. The chat prompts (``tasks.llm.text.CHAT_PROMPTS``) are rendered with the model's
chat template. Everything is tokenized with the teacher's own tokenizer (an input, not a path), and
the result is logged as an MLflow dataset with its content digest (``pipelines.store.lineage``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from tasks.core.checks import at_least, require
from tasks.core.context import StepContext
from tasks.llm.types import CausalLM, TokenSet

PACKAGES = "email http logging unittest asyncio xml importlib multiprocessing urllib concurrent json wsgiref".split()


@dataclass
class LmDataConfig:
    packages: list[str] = field(default_factory=lambda: list(PACKAGES))  # standard-library packages: offline
    seed: int = 0
    eval_files: int = 24  # held-out documents (one per source file)
    calib_files: int = 16
    distill_files: int = 64
    max_doc_tokens: int = 512  # each held-out document is cut to this many tokens
    seq_len: int = 256  # tokens per calibration / distillation row
    calib_rows: int = 16
    distill_rows: int = 64
    prompts: int = 24  # chat prompts (at most len(CHAT_PROMPTS))

    def __post_init__(self) -> None:
        require("packages", bool(self.packages), "name at least one installed package")
        for key in ("eval_files", "calib_files", "distill_files", "calib_rows", "distill_rows", "prompts"):
            at_least(key, getattr(self, key), 1)
        at_least("max_doc_tokens", self.max_doc_tokens, 2)
        at_least("seq_len", self.seq_len, 2)


def _flat(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.tensor([0] + [len(r) for r in rows], dtype=torch.long).cumsum(0)
    return torch.tensor([t for r in rows for t in r], dtype=torch.long), offsets


def run(teacher: CausalLM, *, cfg: LmDataConfig, ctx: StepContext) -> TokenSet:
    """Tokenized evaluation documents, calibration and distillation rows, and chat prompts."""
    from tasks.llm.model import tokenizer_from_files
    from tasks.llm.text import CHAT_PROMPTS, lm_texts, pack, render_chat, tokenize_docs

    require("prompts", cfg.prompts <= len(CHAT_PROMPTS), f"at most {len(CHAT_PROMPTS)} (tasks.llm.text.CHAT_PROMPTS)")
    tokenizer = tokenizer_from_files(teacher.tokenizer)
    texts = lm_texts(cfg.packages, cfg.seed, cfg.eval_files, cfg.calib_files, cfg.distill_files)
    docs = tokenize_docs(tokenizer, texts["eval"], cfg.max_doc_tokens)
    eos = tokenizer.eos_token_id or 0  # separates packed documents
    calib = pack(tokenize_docs(tokenizer, texts["calib"], 1 << 30), cfg.seq_len, cfg.calib_rows, eos)
    distill = pack(tokenize_docs(tokenizer, texts["distill"], 1 << 30), cfg.seq_len, cfg.distill_rows, eos)
    prompts = [render_chat(tokenizer, p) for p in CHAT_PROMPTS[: cfg.prompts]]
    eval_ids, eval_offsets = _flat(docs)
    prompt_ids, prompt_offsets = _flat(prompts)
    digest = hashlib.sha256(b"".join(teacher.tokenizer[k] for k in sorted(teacher.tokenizer))).hexdigest()[:16]
    ctx.log_metrics(
        {"eval_docs": len(docs), "eval_tokens": len(eval_ids), "calib_rows": len(calib), "distill_rows": len(distill)}
    )
    return TokenSet(
        name=f"lm_text-{'+'.join(cfg.packages)}",
        eval_ids=eval_ids,
        eval_offsets=eval_offsets,
        calib=calib,
        distill=distill,
        prompt_ids=prompt_ids,
        prompt_offsets=prompt_offsets,
        meta={
            "packages": list(cfg.packages),
            "seq_len": cfg.seq_len,
            "tokenizer_sha256": digest,
            "docs_per_split": {k: len(v) for k, v in texts.items()},
        },
    )
