"""The user's labeled text files read with ``datasets`` (tasks/datasets/text_files.py): each format
round-trips, splits are stratified and seeded, labels map through a model's id2label, duplicates
across splits are counted and dropped, reading stays offline, and every bad file is refused with
one line naming the file (and the column, row or labels at fault)."""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.checks import BadValue
from tasks.datasets.text_files import TextFilesConfig, read_text_files
from tasks.datasets.text_splits import DataFileError, TextSplits

NAMES = ["negative", "neutral", "positive"]


def rows(n: int, start: int = 0, prefix: str = "text") -> dict[str, list]:
    """``n`` distinct texts with the three labels in turn (as names)."""
    return {"text": [f"{prefix} {i}" for i in range(start, start + n)], "label": [NAMES[i % 3] for i in range(n)]}


def write(path: Path, data: dict[str, list]) -> str:
    """``data`` (columns) in the format of ``path``'s extension; a path without one: a save_to_disk folder."""
    import datasets

    recs = [dict(zip(data, vals)) for vals in zip(*data.values())]
    if path.suffix == ".csv":
        pd.DataFrame(data).to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(recs), encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.table(data), path)
    else:
        datasets.Dataset.from_dict(data).save_to_disk(str(path))
    return str(path)


def refused(match: str, fn, *args, **kwargs) -> str:
    """``fn`` raises a one-line DataFileError matching ``match``; the message."""
    with pytest.raises(DataFileError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ValueError), msg
    return msg


def read(path: str, **kw) -> TextSplits:
    id2label = kw.pop("id2label", None)
    return read_text_files(TextFilesConfig(path=path, **kw), id2label)


# --- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".json", ".parquet", ""])
def test_each_format_round_trips_with_separate_val_and_test_files(tmp_path, ext):
    train, val, test = rows(9), rows(6, 100), rows(3, 200)
    paths = {name: write(tmp_path / f"{name}{ext}", d) for name, d in (("train", train), ("val", val), ("test", test))}
    s = read(paths["train"], val_path=paths["val"], test_path=paths["test"])
    assert s.label_names == NAMES  # sorted names
    for name, want in (("train", train), ("val", val), ("test", test)):
        got = s.split(name)
        assert got.texts == want["text"] and got.pairs is None
        assert [s.label_names[i] for i in got.labels or []] == want["label"]
        assert s.sources[name] == paths[name]
    assert s.duplicates == {"train_val": 0, "train_test": 0, "val_test": 0} and s.removed_duplicates == 0


def test_format_can_be_named_for_an_unusual_extension(tmp_path):
    path = tmp_path / "reviews.tsv.txt"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(*rows(30).values())))
    refused(r"unknown format '\.txt'.*set format", read, str(path))
    s = read(str(path), format="jsonl")
    assert len(s.train) + len(s.val) + len(s.test) == 30


def test_a_dataset_dict_folder_gives_its_train_validation_and_test_splits(tmp_path):
    import datasets

    parts = {"train": rows(9), "validation": rows(3, 100), "test": rows(6, 200)}
    folder = tmp_path / "dd"
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in parts.items()}).save_to_disk(str(folder))
    s = read(str(folder))
    assert s.val.texts == parts["validation"]["text"] and s.test.texts == parts["test"]["text"]
    assert s.train.texts == parts["train"]["text"]
    assert s.sources == {"train": f"{folder}[train]", "val": f"{folder}[validation]", "test": f"{folder}[test]"}


def test_a_class_label_column_keeps_its_names_and_ids(tmp_path):
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg"])})
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, feats)
    ds.save_to_disk(str(tmp_path / "cl"))
    s = read(str(tmp_path / "cl"))
    assert s.label_names == ["pos", "neg"]  # the ClassLabel's order, not sorted
    for split in (s.train, s.val, s.test):
        assert split.labels == [int(t[1:]) % 2 for t in split.texts]


# --- splitting ----------------------------------------------------------------------------------


def test_stratified_split_keeps_every_class_in_every_split_and_is_seeded(tmp_path):
    path = write(tmp_path / "all.csv", rows(60))
    s = read(path, seed=3)
    for name, per_class in (("train", 16), ("val", 2), ("test", 2)):
        assert Counter(s.split(name).labels or []) == {0: per_class, 1: per_class, 2: per_class}, name
    all_texts = s.train.texts + s.val.texts + s.test.texts
    assert sorted(all_texts) == sorted(rows(60)["text"])  # disjoint and complete
    for split in (s.train, s.val, s.test):  # rows keep their file order, labels stay with their text
        assert split.texts == sorted(split.texts, key=lambda t: int(t.split()[1]))
        assert [NAMES[int(t.split()[1]) % 3] for t in split.texts] == [NAMES[i] for i in split.labels or []]
    again = read(path, seed=3)
    assert again == s and again.digest() == s.digest()
    other = read(path, seed=4)
    assert other.val.texts != s.val.texts and other.digest() != s.digest()
    assert s.sources == {"train": path, "val": path, "test": path}


def test_only_the_missing_split_is_carved(tmp_path):
    path, test = write(tmp_path / "train.csv", rows(30)), write(tmp_path / "test.csv", rows(5, 500))
    s = read(path, test_path=test, val_fraction=0.2)
    assert len(s.val) == 6 and len(s.train) == 24 and s.test.texts == rows(5, 500)["text"]
    assert s.sources == {"train": path, "val": path, "test": test}


def test_unlabeled_text_is_split_without_labels(tmp_path):
    path = write(tmp_path / "pool.jsonl", {"text": [f"sentence {i}" for i in range(40)]})
    s = read(path, label_column="", val_fraction=0.25, test_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (20, 10, 10)
    assert s.label_names == [] and s.train.labels is None and s.test.labels is None
    assert read(path, label_column="", val_fraction=0.25, test_fraction=0.25) == s


def test_max_rows_keeps_a_seeded_sample_of_each_file(tmp_path):
    path = write(tmp_path / "big.parquet", rows(300))
    s = read(path, max_rows=60)
    texts = s.train.texts + s.val.texts + s.test.texts
    assert len(texts) == 60 and set(texts) <= set(rows(300)["text"])
    assert max(int(t.split()[1]) for t in texts) > 60  # a sample of the whole file, not its head
    assert read(path, max_rows=60) == s


# --- labels -------------------------------------------------------------------------------------


def test_label_names_map_through_the_models_id2label(tmp_path):
    id2label = {0: "positive", 1: "negative", 2: "neutral"}
    path = write(tmp_path / "all.csv", rows(30))
    s = read(path, id2label=id2label)
    assert s.label_names == ["positive", "negative", "neutral"]
    for split in (s.train, s.val, s.test):
        assert [id2label[i] for i in split.labels or []] == [NAMES[int(t.split()[1]) % 3] for t in split.texts]
    # a config.json's id2label has string keys; integer labels are the model's ids
    ints = write(tmp_path / "ints.jsonl", {"text": [f"t{i}" for i in range(20)], "label": [i % 3 for i in range(20)]})
    s = read(ints, id2label={"0": "a", "1": "b", "2": "c"})
    assert s.label_names == ["a", "b", "c"] and s.train.labels == [int(t[1:]) % 3 for t in s.train.texts]


def test_labels_outside_the_models_label_set_are_named_with_the_file(tmp_path):
    data = rows(12)
    data["label"][3], data["label"][7] = "angry", "bored"
    path = write(tmp_path / "all.csv", data)
    msg = refused(
        re.escape(f"{path}: label(s) ['angry', 'bored'] not in the model's labels"),
        read,
        path,
        id2label=dict(enumerate(NAMES)),
    )
    assert "'negative', 'neutral', 'positive'" in msg
    ints = write(tmp_path / "ints.csv", {"text": ["a", "b", "c"], "label": [0, 1, 7]})
    refused(re.escape(f"{ints}: label(s) [7] not in the model's labels"), read, ints, id2label=dict(enumerate(NAMES)))


def test_integer_labels_are_kept_when_they_are_0_to_k_minus_1(tmp_path):
    path = write(tmp_path / "ints.csv", {"text": [f"t{i}" for i in range(30)], "label": [i % 3 for i in range(30)]})
    s = read(path)
    assert s.label_names == ["0", "1", "2"]
    assert s.train.labels == [int(t[1:]) % 3 for t in s.train.texts]
    gaps = write(
        tmp_path / "gaps.csv", {"text": [f"t{i}" for i in range(30)], "label": [[0, 2, 5][i % 3] for i in range(30)]}
    )
    refused(
        re.escape(f"{gaps}: integer labels [0, 2, 5] are not the ids 0..K-1 of K classes (missing [1, 3, 4])"),
        read,
        gaps,
    )


def test_label_names_are_sorted_numbers_in_numeric_order_and_booleans_are_names(tmp_path):
    path = write(
        tmp_path / "stars.jsonl",
        {"text": [f"t{i}" for i in range(30)], "label": [["10", "2", "1"][i % 3] for i in range(30)]},
    )
    assert read(path).label_names == ["1", "2", "10"]
    spam = {"text": [f"t{i}" for i in range(30)], "label": [i % 2 == 0 for i in range(30)]}
    flags = write(tmp_path / "spam.csv", spam)
    s = read(flags)
    assert s.label_names == ["False", "True"] and s.train.labels == [1 - int(t[1:]) % 2 for t in s.train.texts]


def test_text_pairs(tmp_path):
    data = {
        "premise": [f"premise {i}" for i in range(30)],
        "hypothesis": [f"hypothesis {i}" for i in range(30)],
        "label": [["entailment", "neutral", "contradiction"][i % 3] for i in range(30)],
    }
    path = write(tmp_path / "nli.parquet", data)
    s = read(path, text_column="premise", text_pair_column="hypothesis")
    assert s.label_names == ["contradiction", "entailment", "neutral"]
    for split in (s.train, s.val, s.test):
        assert split.pairs == [t.replace("premise", "hypothesis") for t in split.texts]
    assert len(s.val.pairs or []) == 3


# --- duplicates ---------------------------------------------------------------------------------


def test_duplicates_across_splits_are_counted_and_dropped_from_val_and_test(tmp_path):
    train = write(tmp_path / "train.csv", {"text": ["a", "b", "c", "d"], "label": ["x", "y", "x", "y"]})
    val = write(tmp_path / "val.csv", {"text": ["a", "b", "e", "f"], "label": ["x", "y", "x", "y"]})
    test = write(tmp_path / "test.csv", {"text": ["c", "e", "g"], "label": ["x", "x", "y"]})
    s = read(train, val_path=val, test_path=test)
    assert s.duplicates == {"train_val": 2, "train_test": 1, "val_test": 1} and s.removed_duplicates == 0
    dropped = read(train, val_path=val, test_path=test, drop_duplicates=True)
    assert dropped.val.texts == ["e", "f"] and dropped.val.labels == [0, 1] and dropped.test.texts == ["e", "g"]
    assert dropped.removed_duplicates == 3 and dropped.duplicates == s.duplicates  # what the files held
    assert dropped.train == s.train and dropped.digest() != s.digest()
    every = write(tmp_path / "dup.csv", {"text": ["a", "b"], "label": ["x", "y"]})
    refused(
        re.escape(f"{every}: every val row also occurs in train"),
        read,
        train,
        val_path=every,
        test_path=test,
        drop_duplicates=True,
    )


def test_a_pair_is_a_duplicate_only_when_both_texts_repeat(tmp_path):
    train = write(tmp_path / "train.jsonl", {"a": ["q1", "q2"], "b": ["r1", "r2"], "label": [0, 1]})
    val = write(tmp_path / "val.jsonl", {"a": ["q1", "q2"], "b": ["r1", "other"], "label": [0, 1]})
    test = write(tmp_path / "test.jsonl", {"a": ["q3"], "b": ["r3"], "label": [0]})
    s = read(train, val_path=val, test_path=test, text_column="a", text_pair_column="b", drop_duplicates=True)
    assert s.duplicates["train_val"] == 1 and s.val.texts == ["q2"] and s.val.pairs == ["other"]


# --- digest, offline --------------------------------------------------------------------------------


def test_digest_is_stable_and_follows_the_content(tmp_path):
    path = write(tmp_path / "a.csv", rows(30))
    s = read(path)
    assert re.fullmatch(r"[0-9a-f]{64}", s.digest()) and read(path).digest() == s.digest()
    copy = write(tmp_path / "copy.parquet", rows(30))  # the same content in another format
    assert read(copy).digest() == s.digest()
    changed = rows(30)
    changed["label"][0] = "positive"
    assert read(write(tmp_path / "b.csv", changed)).digest() != s.digest()


def test_reading_needs_no_network_and_leaves_no_cache(tmp_path, monkeypatch):
    """Every format is read with sockets refused (nothing asks the Hub), and nothing is added to
    the datasets cache in the user's home."""
    import datasets

    home_cache = Path(datasets.config.HF_DATASETS_CACHE)
    before = sorted(home_cache.rglob("*")) if home_cache.exists() else None

    def refuse(*args, **kwargs):
        raise OSError("network use while reading a local data file")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for ext in (".csv", ".jsonl", ".parquet", ""):
        path = write(tmp_path / f"d{ext}", rows(30))
        assert len(read(path).train) == 24
    assert (sorted(home_cache.rglob("*")) if home_cache.exists() else None) == before


def test_a_model_id2label_must_number_its_labels_0_to_k_minus_1(tmp_path):
    path = write(tmp_path / "all.csv", rows(30))
    with pytest.raises(BadValue, match=re.escape("id2label: ids [0, 2] are not 0..K-1")):
        read(path, id2label={0: "negative", 2: "positive"})


# --- config checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"path": ""}, "path: a data file"),
        ({"format": "xlsx"}, "format: 'xlsx' is not one of"),
        ({"text_column": ""}, "text_column: must name"),
        ({"text_pair_column": "text"}, "text_pair_column: must differ"),
        ({"label_column": "text"}, "label_column: must differ"),
        ({"val_path": "d.csv"}, "val_path: must differ from path"),
        ({"val_fraction": 0.0}, r"val_fraction: 0.0 is not in \(0, 1\)"),
        ({"test_fraction": 1.0}, r"test_fraction: 1.0 is not in \(0, 1\)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction: val_fraction \\+ test_fraction = 1 leaves"),
        ({"max_rows": -1}, "max_rows: -1 is not >= 0"),
    ],
)
def test_config_values_are_checked_when_built(kw, match):
    with pytest.raises(BadValue, match=match):
        TextFilesConfig(**{"path": "d.csv", **kw})


# --- bad files --------------------------------------------------------------------------------------


def test_a_missing_file_or_unknown_format_is_named(tmp_path):
    refused(re.escape(f"path: '{tmp_path}/nope.csv' does not exist"), read, str(tmp_path / "nope.csv"))
    train = write(tmp_path / "t.csv", rows(9))
    refused(
        re.escape(f"test_path: '{tmp_path}/gone.csv' does not exist"), read, train, test_path=str(tmp_path / "gone.csv")
    )
    (tmp_path / "notes.txt").write_text("text,label\na,x\n")
    refused(re.escape(f"path: '{tmp_path}/notes.txt': unknown format '.txt'"), read, str(tmp_path / "notes.txt"))
    (tmp_path / "folder").mkdir()
    refused(
        re.escape(f"{tmp_path}/folder: a folder not written by Dataset.save_to_disk"), read, str(tmp_path / "folder")
    )
    refused(
        re.escape(f"path: '{tmp_path}/folder' is a folder, but format is 'csv'"),
        read,
        str(tmp_path / "folder"),
        format="csv",
    )
    refused(re.escape(f"path: '{train}' is a file, but format 'disk'"), read, train, format="disk")


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet", ""])
def test_a_misspelled_column_names_the_file_and_its_columns(tmp_path, ext):
    path = write(tmp_path / f"d{ext}", {"sentence": ["a", "b"], "labels": ["x", "y"]})
    refused(re.escape(f"{path}: no column 'text' (text_column); its columns: sentence, labels"), read, path)
    refused(
        re.escape(f"{path}: no column 'label' (label_column); its columns: sentence, labels; did you mean 'labels'?"),
        read,
        path,
        text_column="sentence",
    )
    refused(
        re.escape(f"{path}: no column 'other' (text_pair_column)"),
        read,
        path,
        text_column="sentence",
        text_pair_column="other",
        label_column="",
    )


def test_empty_files_and_empty_splits_are_named(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    refused(re.escape(f"{tmp_path}/empty.csv: the file is empty"), read, str(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("text,label\n")
    refused(re.escape(f"{tmp_path}/header.csv: no data rows"), read, str(tmp_path / "header.csv"))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), empty)
    refused(re.escape(f"{empty}: no data rows"), read, str(empty))
    small = write(tmp_path / "small.csv", rows(4))
    refused(re.escape(f"{small}: the val split is empty: 4 row(s) x val_fraction 0.1 rounds to 0"), read, small)


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_empty_texts_are_named_by_row(tmp_path, ext):
    data = rows(6)
    data["text"][2] = ""
    data["text"][4] = "   "
    path = write(tmp_path / f"d{ext}", data)
    refused(re.escape(f"{path}: row 3: column 'text' is empty (1 more such row(s))"), read, path)


def test_non_string_texts_are_named_by_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine", "label": "x"}\n{"text": null, "label": "y"}\n')
    refused(re.escape(f"{path}: row 2: column 'text' is empty"), read, str(path))
    numbers = write(tmp_path / "n.csv", {"text": [12, 13, 14], "label": ["x", "y", "x"]})
    refused(re.escape(f"{numbers}: row 1: column 'text' is 12 (int), not a string (2 more such row(s))"), read, numbers)


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_a_file_that_is_not_utf8_is_named(tmp_path, ext):
    path = tmp_path / f"latin1{ext}"
    lines = (
        ["text,label", "ok,x", "café,y"]
        if ext == ".csv"
        else ['{"text": "ok", "label": "x"}', '{"text": "café", "label": "y"}']
    )
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    line = 3 if ext == ".csv" else 2
    refused(re.escape(f"{path}: not UTF-8 text (line {line} holds byte 0xe9); save the file as UTF-8"), read, str(path))


def test_missing_labels_are_named(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("text,label\na,x\nb,\nc,y\nd,\n")
    refused(re.escape(f"{path}: column 'label' has 2 missing label(s) (first at row 2)"), read, str(path))
    ints = tmp_path / "gaps.jsonl"
    ints.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": null}\n')
    refused(re.escape(f"{ints}: column 'label' has 1 missing label(s) (first at row 2)"), read, str(ints))


def test_labels_of_other_kinds_are_named(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"text": "a", "label": 0.5}\n{"text": "b", "label": 1.0}\n')
    refused(
        re.escape(f"{path}: row 1: label 0.5 (float) in column 'label' is neither a name nor an integer id"),
        read,
        str(path),
    )
    train = write(tmp_path / "train.csv", rows(9))
    val = write(tmp_path / "val.csv", {"text": ["v1", "v2"], "label": [0, 1]})
    refused(
        re.escape(f"label column 'label': files disagree ({train} has names, {val} has integer ids"),
        read,
        train,
        val_path=val,
    )


def test_a_damaged_file_is_named(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    refused(re.escape(f"{path}: could not be read as parquet ("), read, str(path))
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    refused(re.escape(f"{bad_json}: could not be read as json ("), read, str(bad_json))


def test_a_dataset_dict_without_a_train_split_is_named(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    parts = {"validation": rows(3), "test": rows(3, 10)}
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in parts.items()}).save_to_disk(str(folder))
    refused(
        re.escape(f"{folder}: a DatasetDict folder with splits ['test', 'validation'] and none named train for train"),
        read,
        str(folder),
    )
