"""Bad data, tried systematically: each input ends with one line naming the file and the key.

Loader cases are checked on the data task directly, then (property-based, ``hypothesis``)
over random shapes, corruptions and truncation points; one case goes through the whole
engine: the run exits 1, the step's run is FAILED and nothing is stored for the cache.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from tasks.core.context import StepContext
from tasks.steps.data import DataConfig, run
from tests.engine_helpers import all_runs, run_pipeline

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _arrays(n_train=40, n_test=10, width=3, k=3, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.normal(size=(n_train, width)),
        "y_train": np.arange(n_train) % k,
        "x_test": rng.normal(size=(n_test, width)),
        "y_test": np.arange(n_test) % k,
    }


def _write(path, arrays: dict) -> str:
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def _load(path: str, **kw):
    return run(cfg=DataConfig(source="npz", path=path, n_transfer=100, **kw), ctx=StepContext())


def _assert_one_line(err, path: str, *words: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    assert text.startswith(path), text
    for w in words:
        assert w in text, text


CASES = {
    "nan input": ({"x_train": np.full((40, 3), np.nan)}, ["x_train", "NaN or inf", "first row 0"]),
    "inf in test": ({"x_test": np.r_[np.zeros((9, 3)), [[0, np.inf, 0]]]}, ["x_test", "first row 9"]),
    "inf in unlabeled pool": ({"x_unlabeled": np.full((5, 3), -np.inf)}, ["x_unlabeled", "NaN or inf"]),
    "label far out of range": ({"y_train": np.r_[np.arange(39) % 3, [1000]]}, ["labels are not 0..1000"]),
    "negative label": ({"y_test": np.r_[np.zeros(9, int), [-1]]}, ["y_test", "negative labels"]),
    "mismatched lengths": ({"y_train": np.zeros(39, int)}, ["y_train", "expected [40]"]),
    "one-hot labels": ({"y_train": np.eye(3)[np.arange(40) % 3].astype(int)}, ["y_train", "[40, 3]"]),
    "1-d inputs": ({"x_train": np.zeros(40)}, ["x_train", "expected [N, features...]"]),
    "wrong row shape": ({"x_test": np.zeros((10, 1, 3))}, ["x_test", "[1, 3]", "x_train [3]"]),
    "empty arrays": ({"x_train": np.zeros((0, 3)), "y_train": np.zeros(0, int)}, ["must not be empty"]),
    "object array": ({"x_unlabeled": np.array([{"a": 1}], dtype=object)}, ["'x_unlabeled'", "Python objects"]),
    "complex inputs": ({"x_test": np.ones((10, 3), complex)}, ["x_test", "non-numeric dtype complex"]),
    "string labels": ({"y_test": np.array(["a"] * 10)}, ["y_test"]),
}


_RNG = np.random.default_rng(1)
# Inputs that pass every check on the raw arrays but not on what the model sees (after the split,
# the cast to float32 and normalization), or whose splits are too small to train or validate on
MODEL_VIEW = {
    "float64 beyond float32 in train": (
        {"x_train": np.r_[_RNG.normal(size=(39, 3)), [[1e39, 0, 0]]]},
        ["x_train", "beyond float32's range", "first row 39"],
    ),
    "float64 beyond float32 in test": ({"x_test": np.r_[np.zeros((9, 3)), [[0, -5e38, 0]]]}, ["x_test", "row 9"]),
    "float64 beyond float32 in val": (
        {"x_val": np.full((4, 3), -1e40), "y_val": np.arange(4) % 3},
        ["x_val", "4 row(s)", "inf once cast"],
    ),
    "float64 beyond float32 in pool": ({"x_unlabeled": np.full((5, 3), 1e300)}, ["x_unlabeled", "float32"]),
    "train mean overflows float32": ({"x_train": np.full((40, 3), 3e38)}, ["x_train", "after normalization"]),
    "train std overflows float32": (
        {"x_train": np.tile([[3e38], [-3e38]], (20, 3))},
        ["x_train", "NaN or inf after normalization"],
    ),
    "constant inputs": ({"x_train": np.zeros((40, 3))}, ["x_train is constant", "nothing to learn"]),
    "rows without values": ({"x_train": np.zeros((40, 0)), "x_test": np.zeros((10, 0))}, ["x_train", "shape [0]"]),
    "one train row": (
        {"x_train": np.zeros((1, 3)), "y_train": np.zeros(1, int), "y_test": np.zeros(10, int)},
        ["x_train: 0 row(s) left for training", "need at least 2"],
    ),
    "fewer train rows than classes": (
        {"x_train": _RNG.normal(size=(4, 3)), "y_train": np.arange(4), "y_test": np.arange(10) % 4},
        ["x_train: 3 row(s) left", "need at least 4"],
    ),
    "a single class": (
        {"y_train": np.zeros(40, int), "y_test": np.zeros(10, int)},
        ["y_train: 1 class", "needs 2"],
    ),
    "empty validation split": ({"x_val": np.zeros((0, 3)), "y_val": np.zeros(0, int)}, ["x_val: 0 rows"]),
    "empty unlabeled pool": ({"x_unlabeled": np.zeros((0, 3))}, ["x_unlabeled: 0 rows"]),
}


@pytest.mark.parametrize("case", MODEL_VIEW, ids=list(MODEL_VIEW))
def test_what_the_model_sees_is_checked(tmp_path, case):
    change, words = MODEL_VIEW[case]
    path = _write(tmp_path / "d.npz", {**_arrays(), **change})
    for normalize in ("channel", "feature"):
        with pytest.raises(ValueError) as err:
            _load(path, normalize=normalize)
        _assert_one_line(err, path, *words)


@pytest.mark.slow
def test_bad_files_through_slimray_exit_1_with_one_line_before_training(workdir, ray_local, capsys):
    """Each model-view case through ``slimray data=npz data.path=...`` (the default pipeline):
    exit 1, the data step's one line names the file, no later step runs."""
    from pipelines.cli import main

    for i, (case, (change, words)) in enumerate(MODEL_VIEW.items()):
        path = _write(workdir / f"bad{i}.npz", {**_arrays(), **change})
        code = main(["data=npz", f"data.path={path}", f"tracking.uri=sqlite:///{workdir}/mlflow.db"])
        err = capsys.readouterr().err
        assert code == 1, (case, err[-2000:])
        lines = [ln for ln in err.splitlines() if path in ln]
        assert lines and all(w in " ".join(lines) for w in words[:1]), (case, err[-2000:])
        assert "Traceback" not in err, (case, err[-3000:])
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    steps = {r.data.tags.get("slimray.step") for r in client.search_runs(["1"], max_results=1000)}
    assert steps <= {"data", None}, steps  # nothing after the data step ever ran


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_npz_is_one_line_naming_file_and_key(tmp_path, case):
    change, words = CASES[case]
    path = _write(tmp_path / "d.npz", {**_arrays(), **change})
    with pytest.raises(ValueError) as err:
        _load(path)
    _assert_one_line(err, path, *words)


def test_labels_out_of_range_for_declared_classes(tmp_path):
    path = _write(tmp_path / "d.npz", _arrays(k=3))
    with pytest.raises(ValueError) as err:
        _load(path, num_classes=2)
    _assert_one_line(err, path, "y_train", "outside [0, 2)")
    assert _load(path, num_classes=5).num_classes == 5  # missing classes are fine when declared


def test_not_an_archive_and_missing_file(tmp_path):
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError) as err:
        _load(str(npy))
    _assert_one_line(err, str(npy), "single array (.npy)")
    text = tmp_path / "text.npz"
    text.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(ValueError) as err:
        _load(str(text))
    _assert_one_line(err, str(text), "not a readable .npz archive")
    with pytest.raises(ValueError, match="npz file '.*missing.npz' does not exist"):
        _load(str(tmp_path / "missing.npz"))


@SETTINGS
@given(
    n_train=st.integers(1, 30),
    n_test=st.integers(1, 10),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    k=st.integers(2, 5),
    seed=st.integers(0, 2**16),
)
def test_any_valid_npz_loads_with_its_shapes(tmp_path, n_train, n_test, shape, k, seed):
    rng = np.random.default_rng(seed)
    n_train = max(n_train, k + 1)  # every class present in train (and one row left for val)
    arrays = {
        "x_train": rng.normal(size=(n_train, *shape)),
        "y_train": np.arange(n_train) % k,
        "x_test": rng.normal(size=(n_test, *shape)),
        "y_test": rng.integers(0, k, n_test),
    }
    path = _write(tmp_path / f"ok-{seed}.npz", arrays)
    d = _load(path, normalize="none")
    assert d.num_classes == k and list(d.x_train.shape[1:]) == shape
    assert len(d.x_train) + len(d.x_val) == n_train and len(d.x_test) == n_test


@SETTINGS
@given(
    key=st.sampled_from(["x_train", "x_test"]),
    row=st.integers(0, 9),
    col=st.integers(0, 2),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
)
def test_any_non_finite_value_is_found_with_its_row(tmp_path, key, row, col, bad):
    arrays = _arrays()
    arrays[key] = arrays[key].copy()
    arrays[key][row, col] = bad
    path = _write(tmp_path / "nf.npz", arrays)
    with pytest.raises(ValueError) as err:
        _load(path)
    _assert_one_line(err, path, key, f"first row {row}")


@SETTINGS
@given(cut=st.floats(0.0, 0.999))
def test_any_truncation_of_an_npz_is_named(tmp_path, cut):
    buf = io.BytesIO()
    np.savez(buf, **_arrays())
    data = buf.getvalue()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ValueError) as err:
        _load(str(path))
    _assert_one_line(err, str(path))


@SETTINGS
@given(offset=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_a_flipped_byte_in_an_npz_is_named_or_harmless(tmp_path, offset, byte):
    """Zip CRCs catch changed array bytes; a change in padding may be harmless. Either the
    data loads as valid data or the error is one line naming the file, never a traceback."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, v in _arrays().items():
            b = io.BytesIO()
            np.save(b, v)
            zf.writestr(k + ".npy", b.getvalue())
    data = bytearray(buf.getvalue())
    data[offset % len(data)] ^= byte or 1
    path = tmp_path / "flip.npz"
    path.write_bytes(bytes(data))
    try:
        d = _load(str(path))
    except ValueError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
    else:
        assert d.num_classes >= 1


def test_bad_data_step_fails_the_run_with_one_line_and_stores_nothing(workdir, ray_local):
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][5] = 1000
    path = _write(workdir / "labels.npz", arrays)
    out = run_pipeline(
        workdir,
        pipeline={"name": "bad_data", "steps": {"data": {"task": "data", "params": {"source": "npz", "path": path}}}},
    )
    assert out.exit_code == 1
    st_data = out.states["data"]
    assert st_data.status == "failed"
    assert "\n" not in st_data.note and path in st_data.note and "labels are not 0..1000" in st_data.note
    runs = all_runs(out)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "slimray.stored" not in runs[0].data.tags
    assert path in runs[0].data.tags["slimray.error"]
    assert MlflowClient(tracking_uri=out.uri).get_run(out.run_id).info.status == "FAILED"
