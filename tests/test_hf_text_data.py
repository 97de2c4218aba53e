"""The ``hf_text_data`` step: the user's text files tokenized with tiny BERT / DistilBERT folders
(different input names) into a ``Dataset``: shapes, the folder's input order, labels numbered by the
folder's id2label, text pairs, unlabeled text as an embedding set, calibration rows held out of
train, metrics and the texts' digest, and one-line refusals before any file is read."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")

from pipelines.config.errors import SpecError  # noqa: E402
from pipelines.config.spec import build_config  # noqa: E402
from tasks.core.checks import BadValue  # noqa: E402
from tasks.core.context import StepContext  # noqa: E402
from tasks.datasets.text_files import read_text_files  # noqa: E402
from tasks.datasets.text_splits import DataFileError  # noqa: E402
from tasks.models.hf_folder import ModelFolderError  # noqa: E402
from tasks.steps.hf_text_data import HfTextDataConfig, run  # noqa: E402
from tasks.training.embedding import trim_padding  # noqa: E402
from tests.hf_models import LABELS, SENTENCES, encode, tokenizer, write_folder  # noqa: E402

NAMES = list(LABELS.values())  # negative, neutral, positive


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "bert": write_folder(root, "bert"),
        "distilbert": write_folder(root, "distilbert"),
        "encoder": write_folder(root, "bert", task="embedding"),
    }


def texts(n: int, start: int = 0) -> list[str]:
    """``n`` distinct short texts from the tiny vocabulary."""
    return [
        f"{SENTENCES[i % len(SENTENCES)]} {'cat ' * (i // len(SENTENCES))}".strip() for i in range(start, start + n)
    ]


def csv(path: Path, **columns: list) -> str:
    pd.DataFrame(columns).to_csv(path, index=False)
    return str(path)


def one_line(exc_type: type, match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ValueError), msg
    return msg


def test_classifier_folder_numbers_labels_by_its_id2label_in_its_input_order(folders, tmp_path):
    # only two of the model's three labels occur: the files alone would number positive 1, the model says 2
    train_labels = ["positive" if i % 2 else "negative" for i in range(30)]
    train = csv(tmp_path / "reviews.csv", text=texts(30), label=train_labels)
    val_texts = texts(6, start=30)[:5] + [texts(1)[0]]  # the last one also occurs in train
    val = csv(tmp_path / "val.csv", text=val_texts, label=["negative", "positive"] * 3)
    test = csv(tmp_path / "test.csv", text=texts(4, start=40), label=["positive"] * 4)
    cfg = HfTextDataConfig(model=str(folders["bert"]), path=train, val_path=val, test_path=test, n_calib=6)
    ctx = StepContext()
    data = run(cfg=cfg, ctx=ctx)

    tok = tokenizer("bert")
    names = ["input_ids", "attention_mask", "token_type_ids"]  # BertTokenizer lists the mask last
    assert data.input_names == names
    # the mask is the row that padding trimming reads: a batch is cut to its longest real row, no shorter
    longest = int(data.x_train[:, 1].sum(1).max())
    assert trim_padding(data.x_train).shape[-1] == longest and int((data.x_train[:, 2] != 0).sum()) == 0
    assert data.task == "classification" and data.num_classes == 3 and data.name == "reviews.csv"
    assert data.x_train.shape == (24, 3, 64) and data.x_train.dtype == torch.int64  # seq_len 0: max_length 64
    assert data.x_calib is not None and data.x_calib.shape == (6, 3, 64)
    assert torch.equal(data.x_val, encode(tok, names, val_texts, 64))  # a separate file keeps its order
    assert data.y_val.tolist() == [0, 2] * 3 and data.y_test.tolist() == [2] * 4
    assert set(data.y_train.tolist()) == {0, 2}
    assert ctx.summary["train_rows"] == 24 and ctx.summary["calib_rows"] == 6 and ctx.summary["val_rows"] == 6
    assert ctx.summary["duplicates_train_val"] == 1 and ctx.summary["duplicates_train_test"] == 0
    assert ctx.summary["classes"] == 3
    meta = json.loads(ctx.files["text_files.json"])
    files = cfg.files()
    assert meta["digest"] == read_text_files(files, LABELS).digest()
    assert meta["labels"] == NAMES and meta["input_names"] == names and meta["seq_len"] == 64


def test_pairs_follow_each_folders_input_names(folders, tmp_path):
    first, second = texts(20), texts(20, start=20)
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"premise": a, "hypothesis": b, "y": NAMES[i % 3]}) + "\n"
            for i, (a, b) in enumerate(zip(first, second))
        )
    )
    for arch, names in (
        ("bert", ["input_ids", "attention_mask", "token_type_ids"]),
        ("distilbert", ["input_ids", "attention_mask"]),
    ):
        cfg = HfTextDataConfig(
            model=str(folders[arch]),
            path=str(path),
            text_column="premise",
            text_pair_column="hypothesis",
            label_column="y",
            seq_len=24,
            n_calib=0,
        )
        data = run(cfg=cfg, ctx=StepContext())
        assert data.input_names == names and data.x_train.shape[1:] == (len(names), 24)
        assert data.x_calib is None  # n_calib 0: quantization calibrates on train
        assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 20
        tok = tokenizer(arch)
        enc = tok(first, second, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
        want = {tuple(r.flatten().tolist()) for r in torch.stack([enc[n] for n in names], dim=1)}
        got = {tuple(r.flatten().tolist()) for r in torch.cat([data.x_train, data.x_val, data.x_test])}
        assert got == want  # every pair encoded as a pair, nothing else
        if arch == "bert":
            assert (data.x_train[:, 1] == 1).any(dim=1).all()  # the second text's token types


def test_unlabeled_text_is_an_embedding_set_and_calibration_is_held_out_of_train(folders, tmp_path):
    path = csv(tmp_path / "corpus.csv", text=texts(40))
    cfg = HfTextDataConfig(model=str(folders["distilbert"]), path=path, label_column="", seq_len=16, n_calib=8)
    ctx = StepContext()
    data = run(cfg=cfg, ctx=ctx)
    assert data.task == "embedding" and data.num_classes == 0
    assert all((y == -1).all() for y in (data.y_train, data.y_val, data.y_test))
    assert data.x_calib is not None and data.x_calib.shape == (8, 2, 16)
    assert len(data.x_train) == 40 - 4 - 4 - 8  # 10% val, 10% test, the calibration rows
    rows = lambda x: {tuple(r.flatten().tolist()) for r in x}  # noqa: E731
    assert not rows(data.x_calib) & rows(data.x_train) and len(rows(data.x_calib)) == 8
    again = run(cfg=cfg, ctx=StepContext())  # the same seed, the same sets
    assert torch.equal(again.x_calib, data.x_calib) and torch.equal(again.x_train, data.x_train)

    small = HfTextDataConfig(model=str(folders["distilbert"]), path=path, label_column="", n_calib=1000)
    capped = run(cfg=small, ctx=StepContext())
    assert capped.x_calib is not None and len(capped.x_calib) == len(capped.x_train) == 16  # half of train


def test_an_encoder_folder_takes_the_files_label_names(folders, tmp_path):
    path = csv(tmp_path / "topics.csv", text=texts(30), label=["sport", "art", "news"] * 10)
    data = run(cfg=HfTextDataConfig(model=str(folders["encoder"]), path=path, n_calib=0), ctx=StepContext())
    assert data.task == "classification" and data.num_classes == 3
    assert data.input_names == ["input_ids", "attention_mask", "token_type_ids"]


def test_refusals_are_one_line_and_come_before_the_work(folders, tmp_path):
    good = csv(tmp_path / "good.csv", text=texts(30), label=["negative", "neutral", "positive"] * 10)
    nowhere = str(tmp_path / "missing.csv")
    bert = str(folders["bert"])
    # config checks: when the config is built (the validator builds it before Ray starts)
    one_line(
        BadValue, "text_pair_column: must differ", HfTextDataConfig, model=bert, path=good, text_pair_column="text"
    )
    one_line(BadValue, "n_calib: -1 is not >= 0", HfTextDataConfig, model=bert, path=good, n_calib=-1)
    one_line(
        SpecError,
        r"params.val_path: must differ from path",
        build_config,
        "hf_text_data",
        {"model": bert, "path": good, "val_path": good},
    )
    assert build_config("hf_text_data", {}).path == ""  # the option file composes without data
    # required values and the folder's limits: before any file is read (the file here does not exist)
    one_line(BadValue, "^model: .*required", run, cfg=HfTextDataConfig(path=nowhere), ctx=StepContext())
    one_line(BadValue, "^path: .*required", run, cfg=HfTextDataConfig(model=bert), ctx=StepContext())
    one_line(
        BadValue,
        "^seq_len: 100 is longer than .* \\(64 tokens\\)",
        run,
        cfg=HfTextDataConfig(model=bert, path=nowhere, seq_len=100),
        ctx=StepContext(),
    )
    one_line(
        ModelFolderError,
        "no such folder",
        run,
        cfg=HfTextDataConfig(model=str(tmp_path / "nope"), path=nowhere),
        ctx=StepContext(),
    )
    one_line(
        DataFileError,
        "missing.csv' does not exist",
        run,
        cfg=HfTextDataConfig(model=bert, path=nowhere),
        ctx=StepContext(),
    )
    # the files' labels against the model's
    odd = csv(tmp_path / "odd.csv", text=texts(30), label=["negative", "great", "positive"] * 10)
    msg = one_line(
        DataFileError,
        r"odd.csv: label\(s\) \['great'\] not in the model's labels",
        run,
        cfg=HfTextDataConfig(model=bert, path=odd),
        ctx=StepContext(),
    )
    assert "negative" in msg
    one_line(
        DataFileError,
        "no column 'label'",
        run,
        cfg=HfTextDataConfig(model=bert, path=csv(tmp_path / "plain.csv", text=texts(30))),
        ctx=StepContext(),
    )
