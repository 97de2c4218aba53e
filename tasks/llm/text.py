"""Text for causal language models: evaluation, calibration and distillation documents, chat prompts.

**Documents** (``lm_texts``) come from the offline corpus of ``tasks.datasets.corpus``: one document
per Python SOURCE FILE, its docstring paragraphs and comment blocks (the corpus' prose filter)
joined by blank lines. A text already seen in an earlier file (package, then path order) is dropped,
as in ``build_corpus``, so no sentence is in two documents. Files are ranked by a seeded hash of
``<package>/<path>`` and the first ``eval_files`` go to "eval", the next ``calib_files`` to "calib",
the next ``distill_files`` to "distill": no file is in two splits and each split keeps that ranked
(stable, package-mixed) order. ``DEFAULT_PACKAGES`` are standard-library packages with much prose:
they exist offline on every install; a web-trained model has seen their source, but not this
extraction of it into plain paragraphs, so the text is a fair, fixed held-out sample for comparing a
model with its compressed versions (the absolute perplexity is not a claim about the model).

**Token ids**: ``tokenize_docs`` encodes without special tokens, then prepends BOS only when the
tokenizer itself adds one (``tokenizer("a")`` starts with it), and cuts at ``max_tokens`` after that,
so every document starts the same way the model saw text in training. ``pack`` concatenates
documents with an end-of-text separator and cuts rows for calibration / distillation batches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from tasks.datasets.corpus import CorpusConfig, package_files

DEFAULT_PACKAGES = (
    "email http logging unittest asyncio xml importlib multiprocessing urllib concurrent json wsgiref"
).split()
SPLITS = ("eval", "calib", "distill")

CHAT_PROMPTS: list[str] = [
    "Write a Python function that returns the factorial of a number.",
    "What is 17 times 23? Show your steps.",
    "Explain in two sentences why the sky is blue.",
    "List five fruits that are red.",
    "Translate 'good morning, my friend' into French.",
    "Write a haiku about autumn leaves.",
    "What is the capital of Japan?",
    "Give three tips for sleeping better.",
    "Explain what a hash table is to a beginner.",
    "Write a SQL query that counts the rows of a table named users.",
    "If a train travels 60 km in 45 minutes, what is its speed in km per hour?",
    "Summarize the story of Cinderella in three sentences.",
    "What is the difference between a list and a tuple in Python?",
    "Suggest a name for a small coffee shop by the sea.",
    "Explain photosynthesis simply.",
    "Write a short email asking a colleague to move a meeting to Friday.",
    "What are the first ten prime numbers?",
    "How do I reverse a string in JavaScript?",
    "Describe the water cycle in four steps.",
    "Is 221 a prime number? Explain.",
    "Give me a recipe for a simple tomato pasta.",
    "What does the acronym CPU stand for, and what does it do?",
    "Write a limerick about a cat who loves to code.",
    "Name three planets of the solar system and one fact about each.",
]


def _documents(packages: list[str], min_words: int) -> dict[str, str]:
    """{"<package>/<path>": document} of every source file with >= ``min_words`` words of new prose."""
    cfg = CorpusConfig(packages=list(packages))
    seen: set[str] = set()
    docs = {}
    for package in packages:
        for rel, kept in package_files(package, cfg, seen):
            text = "\n\n".join(kept)
            if len(text.split()) >= min_words:
                docs[rel] = text
    return docs


def lm_texts(
    packages: list[str], seed: int, eval_files: int, calib_files: int, distill_files: int, min_words: int = 30
) -> dict[str, list[str]]:
    """{"eval", "calib", "distill": documents}, one per source file, files disjoint across splits
    (see the module docstring). Deterministic for the packages' versions and ``seed``."""
    if not packages or len(set(packages)) != len(packages):
        raise ValueError(f"packages: need >= 1 distinct package names, got {packages}")
    sizes = {"eval_files": eval_files, "calib_files": calib_files, "distill_files": distill_files}
    for name, n in sizes.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name}: {n!r} must be an integer >= 0")
    docs = _documents(list(packages), min_words)
    need = sum(sizes.values())
    if need > len(docs):
        raise ValueError(f"packages {list(packages)}: {len(docs)} files with prose, {need} requested for the splits")
    ranked = sorted(docs, key=lambda rel: hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest())
    out, start = {}, 0
    for split, n in zip(SPLITS, sizes.values()):
        out[split] = [docs[rel] for rel in ranked[start : start + n]]
        start += n
    return out


def render_chat(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` as one user turn with the generation prompt appended (the chat
    template rendered as text, then tokenized without extra specials, as ``apply_chat_template``
    does); the plain prompt with the tokenizer's specials when it has no chat template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def _bos_prefix(tokenizer) -> list[int]:
    """[bos] when the tokenizer adds BOS itself, else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    added = list(tokenizer("a")["input_ids"][:1])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"][:1])
    return [bos] if added == [bos] and plain != [bos] else []


def tokenize_docs(tokenizer, docs: list[str], max_tokens: int) -> list[list[int]]:
    """Each document's ids (BOS as the tokenizer adds it, see the module docstring), cut at
    ``max_tokens``; documents of fewer than 2 tokens (nothing to predict) are dropped."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens: {max_tokens} must be >= 2")
    prefix = _bos_prefix(tokenizer)
    out = []
    for doc in docs:
        ids = (prefix + list(tokenizer(doc, add_special_tokens=False)["input_ids"]))[:max_tokens]
        if len(ids) >= 2:
            out.append(ids)
    return out


def pack(docs_ids: list[list[int]], seq_len: int, rows: int, eos_id: int = 0) -> torch.Tensor:
    """[rows, seq_len] ids: the documents concatenated, each followed by ``eos_id`` (SmolLM2's
    ``<|endoftext|>`` is 0; pass the tokenizer's for others), cut into consecutive rows; the tail
    that does not fill a row is left out."""
    if seq_len < 2 or rows < 1:
        raise ValueError(f"pack: seq_len {seq_len} must be >= 2 and rows {rows} >= 1")
    flat: list[int] = []
    need = seq_len * rows
    for ids in docs_ids:
        flat.extend(ids)
        flat.append(eos_id)
        if len(flat) >= need:
            break
    if len(flat) < need:
        raise ValueError(f"pack: {len(flat)} tokens in {len(docs_ids)} documents, {rows} x {seq_len} = {need} needed")
    return torch.tensor(flat[:need], dtype=torch.long).view(rows, seq_len)


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a file: ``.jsonl`` lines of ``{"prompt": "..."}`` (blank lines skipped) or any other
    text file, one prompt a line. A line that is not such a prompt is a one-line error naming it."""
    import json

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"prompts {path}: not a readable UTF-8 text file ({type(e).__name__})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(line)
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"prompts {path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("prompt"), str) or not doc["prompt"]:
            raise ValueError(f'prompts {path}:{number}: expected {{"prompt": "<non-empty text>"}}')
        prompts.append(doc["prompt"])
    if not prompts:
        raise ValueError(f"prompts {path}: no prompts")
    return prompts
