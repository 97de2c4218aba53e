"""benchmarks/llm_anchor.py, the plain optimum-intel anchor of issue 30: its command line and input checks work in
slimray's own venv without optimum-intel (it is imported only when the anchor runs, in .venv-anchor), and the
perplexity it reports comes from slimray's own ``doc_nll``, loaded by file path."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "llm_anchor.py"


def _anchor():
    spec = importlib.util.spec_from_file_location("llm_anchor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs_without_optimum():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--docs", "--prompt", "--threads", "--new-tokens", "--rounds", "--out", "--write-inputs"):
        assert flag in out.stdout


def test_missing_inputs_is_a_usage_error():
    out = subprocess.run([sys.executable, str(SCRIPT), "--threads", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--docs, --prompt and --out are required" in out.stderr


def test_bad_arguments_and_inputs_name_the_culprit(tmp_path):
    anchor = _anchor()
    with pytest.raises(ValueError, match="--new-tokens: 1"):
        anchor.parse_args(["--docs", "d", "--prompt", "p", "--out", "o", "--new-tokens", "1"])
    bad = tmp_path / "docs.json"
    bad.write_text(json.dumps([[1, 2, 3], [4]]))  # a one-token document has nothing to predict
    with pytest.raises(ValueError, match=r"docs\.json: expected a list of token-id lists"):
        anchor.read_ids(bad, nested=True)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        anchor.read_ids(bad, nested=True)
    good = tmp_path / "prompt.json"
    good.write_text(json.dumps([5, 6, 7]))
    assert anchor.read_ids(good, nested=False) == [5, 6, 7]


def test_perplexity_is_slimrays_doc_nll():
    from tasks.llm.quality import doc_nll

    rng = np.random.default_rng(0)
    table = rng.normal(size=(32, 32)).astype(np.float32)  # a bigram "model": logits of the next token

    def logits(ids):
        return table[ids[0]]

    docs = [rng.integers(0, 32, size=n).tolist() for n in (5, 17, 40)]
    ours = _anchor().load_quality().doc_nll(logits, docs, 8)
    theirs = doc_nll(logits, docs, 8)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], [4, 16, 39])
