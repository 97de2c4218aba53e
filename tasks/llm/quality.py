"""Quality of a causal LM and of its compressed versions, with document-level uncertainty.

- A model is judged through a ``LogitsFn``: int64 ids ``[1, T]`` -> float32 logits ``[T, V]`` of one
  full forward pass (torch, ONNX Runtime or OpenVINO alike), so every runtime is scored the same way.
- ``doc_nll``: each document's total next-token negative log-likelihood and its number of predicted
  tokens. A document longer than ``window`` is cut into consecutive windows that share one token
  (window k starts at token k * (window - 1)), so every token after the first is scored exactly once
  and the context restarts at each window (cheaper than a sliding stride; a little pessimistic).
- ``perplexity``: token-weighted, exp(sum NLL / sum tokens) (Jelinek et al. 1977), with a percentile
  bootstrap over DOCUMENTS (Efron & Tibshirani 1993): tokens of one document are not independent,
  documents are.
- ``relative_increase``: ppl / ppl_ref - 1 with a PAIRED bootstrap (the same resampled documents
  for both models), which cancels the between-document variance both share; a budget is met "at 95%
  confidence" when the upper bound is within it.
- ``next_token_agreement`` / ``greedy_agreement``: how often a compressed model picks the reference's
  top token, on text (teacher forcing) and on its own greedy generations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

LogitsFn = Callable[[np.ndarray], np.ndarray]


def torch_logits(model) -> LogitsFn:
    """The ``LogitsFn`` of a torch causal LM (no KV cache, float32 logits)."""

    def fn(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)), use_cache=False)
        return out.logits[0].float().numpy()

    return fn


def _windows(doc: list[int], window: int) -> Iterator[np.ndarray]:
    """Consecutive windows of ``doc`` of at most ``window`` tokens sharing one token (see module docstring)."""
    if window < 2:
        raise ValueError(f"window: {window} must be >= 2")
    if len(doc) < 2:
        raise ValueError(f"docs: a document of {len(doc)} token(s); each needs >= 2 (tokenize_docs drops shorter)")
    ids = np.asarray(doc, dtype=np.int64)
    for start in range(0, len(ids) - 1, window - 1):
        yield ids[start : start + window]


def _logits(fn: LogitsFn, ids: np.ndarray) -> np.ndarray:
    logits = np.asarray(fn(ids[None, :]), dtype=np.float32)
    if logits.ndim != 2 or logits.shape[0] != len(ids):
        raise ValueError(f"LogitsFn: returned shape {logits.shape} for {len(ids)} tokens, [T, V] expected")
    return logits


def doc_scores(fn: LogitsFn, docs: list[list[int]], window: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """One pass of ``fn`` over ``docs``: (total NLL in nats, predicted tokens, the top-1 token at every
    predicted position) of each document, so perplexity and agreement cost one forward pass per window."""
    sums, counts, tops = np.zeros(len(docs)), np.zeros(len(docs), dtype=np.int64), []
    for i, doc in enumerate(docs):
        best = []
        for ids in _windows(doc, window):
            logits = _logits(fn, ids)[:-1]
            top = logits.max(axis=1, keepdims=True)  # log-sum-exp shifted by the max, summed in float64
            logz = np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64)) + top[:, 0]
            sums[i] += float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
            counts[i] += len(ids) - 1
            best.append(logits.argmax(axis=1))
        tops.append(np.concatenate(best))
    return sums, counts, tops


def doc_nll(fn: LogitsFn, docs: list[list[int]], window: int) -> tuple[np.ndarray, np.ndarray]:
    """(total NLL in nats, predicted tokens) of each document, float64 / int64 arrays."""
    sums, counts, _ = doc_scores(fn, docs, window)
    return sums, counts


def top_agreement(ref_tops: list[np.ndarray], tops: list[np.ndarray], rounds: int = 1000, seed: int = 0) -> dict:
    """{"agree", "ci95", "positions"} from two models' per-document top-1 tokens (``doc_scores``)."""
    if not ref_tops or len(ref_tops) != len(tops) or any(len(a) != len(b) for a, b in zip(ref_tops, tops)):
        raise ValueError("tops: the two models were not scored on the same documents")
    same = np.array([float((a == b).sum()) for a, b in zip(ref_tops, tops)])
    total = np.array([float(len(a)) for a in ref_tops])
    boot = _ratio(same, total, _resample(len(same), rounds, seed))
    return {"agree": float(same.sum() / total.sum()), "ci95": _ci(boot), "positions": int(total.sum())}


def _check(sums, counts) -> tuple[np.ndarray, np.ndarray]:
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if sums.ndim != 1 or sums.shape != counts.shape or len(sums) == 0:
        raise ValueError(f"sums/counts: shapes {sums.shape} and {counts.shape}, two equal non-empty 1-D arrays needed")
    if counts.sum() <= 0 or (counts < 0).any():
        raise ValueError("counts: token counts must be >= 0 with a positive total")
    return sums, counts


def _resample(n: int, rounds: int, seed: int) -> np.ndarray:
    """[rounds, n] document indices drawn with replacement."""
    if rounds < 1:
        raise ValueError(f"rounds: {rounds} must be >= 1")
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def _ratio(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """sum(num) / sum(den) over each resample (rows of ``idx``); a resample with no tokens gives nan."""
    d = den[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, num[idx].sum(axis=1) / np.where(d > 0, d, 1), np.nan)


def _ci(values: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def perplexity(sums, counts, rounds: int = 1000, seed: int = 0) -> dict:
    """{"ppl", "ci95": [lo, hi], "tokens", "docs"}: token-weighted perplexity and its document bootstrap."""
    sums, counts = _check(sums, counts)
    ppl = float(np.exp(sums.sum() / counts.sum()))
    boot = np.exp(_ratio(sums, counts, _resample(len(sums), rounds, seed)))
    return {"ppl": ppl, "ci95": _ci(boot), "tokens": int(counts.sum()), "docs": len(sums)}


def relative_increase(ref_sums, ref_counts, sums, counts, rounds: int = 1000, seed: int = 0) -> dict:
    """{"rel": ppl / ppl_ref - 1, "ci95": [lo, hi]} with a paired document bootstrap (same documents)."""
    ref_sums, ref_counts = _check(ref_sums, ref_counts)
    sums, counts = _check(sums, counts)
    if len(sums) != len(ref_sums):
        raise ValueError(f"sums: {len(sums)} documents, the reference has {len(ref_sums)}; score the same documents")
    rel = float(np.exp(sums.sum() / counts.sum() - ref_sums.sum() / ref_counts.sum()) - 1)
    idx = _resample(len(sums), rounds, seed)
    boot = np.exp(_ratio(sums, counts, idx) - _ratio(ref_sums, ref_counts, idx)) - 1
    return {"rel": rel, "ci95": _ci(boot)}


def next_token_agreement(
    ref_fn: LogitsFn, fn: LogitsFn, docs: list[list[int]], window: int, rounds: int = 1000, seed: int = 0
) -> dict:
    """{"agree", "ci95", "positions"}: share of predicted positions (the windows of ``doc_nll``) where
    both models' top token is the same, with a document bootstrap of that share."""
    if not docs:
        raise ValueError("docs: no documents to compare on")
    return top_agreement(doc_scores(ref_fn, docs, window)[2], doc_scores(fn, docs, window)[2], rounds, seed)


def greedy_agreement(ref: list[list[int]], cand: list[list[int]], n: int = 32) -> float:
    """Mean over prompts of the share of the first ``n`` generated tokens that are identical position
    by position; a position one sequence lacks (it stopped earlier) counts as a mismatch, two empty
    generations agree fully."""
    if len(ref) != len(cand) or not ref:
        raise ValueError(f"cand: {len(cand)} generations for {len(ref)} reference ones (equal, >= 1 needed)")
    if n < 1:
        raise ValueError(f"n: {n} must be >= 1")
    shares = []
    for r, c in zip(ref, cand):
        r, c = list(r)[:n], list(c)[:n]
        longest = max(len(r), len(c))
        shares.append(1.0 if longest == 0 else sum(a == b for a, b in zip(r, c)) / longest)
    return float(np.mean(shares))
