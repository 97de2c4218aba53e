"""Complete cache keys: the contents of files a step reads and the versions of the libraries
its code uses are part of the key, and change exactly the steps they affect."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.store import code
from pipelines.store.keys import FileHasher, library_versions, step_keys, task_libraries


def _spec(overrides=(), pipeline=None):
    cfg = load_config(list(overrides))
    if pipeline is not None:
        cfg.pipeline = OmegaConf.create(pipeline)
    return session.validate(cfg)[0]


def _changed(a: dict, b: dict) -> set[str]:
    return {name for name in a if a[name] != b[name]}


def test_editing_a_data_file_in_place_invalidates_it_and_its_descendants(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMRAY_CACHE_DIR", str(tmp_path / "hashes"))
    monkeypatch.setattr(code, "SETTLE_NS", 0)  # remember the hash of the file written just now
    npz = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(40, 8)).astype("float32"),
        "y_train": np.arange(40) % 2,
        "x_test": rng.normal(size=(10, 8)).astype("float32"),
        "y_test": np.arange(10) % 2,
    }
    np.savez(npz, **arrays)
    pipeline = {
        "name": "files",
        "steps": {
            "data": {"task": "data", "params": {"source": "npz", "path": str(npz)}},
            "teacher": {"task": "train", "inputs": {"data": "data"}},
            "other": {"task": "toy_source"},
        },
    }
    spec = _spec(pipeline=pipeline)
    before = step_keys(spec, 0)
    assert step_keys(spec, 0) == before  # deterministic, and the hash memo does not change it
    arrays["y_train"] = arrays["y_train"][::-1].copy()  # same shape and size, other contents
    np.savez(npz, **arrays)
    after = step_keys(spec, 0)
    assert _changed(before, after) == {"data", "teacher"}
    assert (tmp_path / "hashes" / "file-hashes.json").exists()


def test_a_library_version_invalidates_exactly_the_steps_whose_code_uses_it():
    spec = _spec()  # the default compress pipeline
    versions = library_versions()
    base = step_keys(spec, 0, versions)
    users = {n for n, s in spec.steps.items() if "onnxruntime" in task_libraries(s.task)}
    assert users and users != set(spec.steps), users  # some steps run onnxruntime, not all
    bumped = step_keys(spec, 0, {**versions, "onnxruntime": "99.0"})
    changed = _changed(base, bumped)
    # a step changes when it uses onnxruntime itself or consumes a step that does
    downstream = set(users)
    for name, s in spec.steps.items():  # topological order
        if set(s.upstream) & downstream:
            downstream.add(name)
    assert changed == downstream
    assert "teacher" not in changed
    # the project's own version changes every step
    assert _changed(base, step_keys(spec, 0, {**versions, "slimray": "0.0.0-other"})) == set(spec.steps)


def test_file_hasher_streams_and_remembers(tmp_path, monkeypatch):
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * (3 << 20))
    hasher = FileHasher(tmp_path / "memo.json")
    h = hasher.path(f)
    hasher.save()
    assert not FileHasher(tmp_path / "memo.json").known  # written just now: its stamp could repeat
    monkeypatch.setattr(code, "SETTLE_NS", 0)  # as if it had been written a while ago
    hasher = FileHasher(tmp_path / "memo.json")
    assert hasher.path(f) == h and hasher.dirty
    hasher.save()
    again = FileHasher(tmp_path / "memo.json")
    assert again.known and again.path(f) == h and not again.dirty  # served from the memo
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a").write_text("1")
    first = hasher.path(d)
    (d / "b").write_text("2")
    assert hasher.path(d) != first


def test_a_glob_param_hashes_the_files_it_matches(tmp_path):
    from pipelines.store.files import file_hashes

    for i in range(2):
        (tmp_path / f"part-{i}.csv").write_text(f"x\n{i}\n")
    params = {"input_path": str(tmp_path / "part-*.csv"), "split_points": ["net.[0]"]}
    hasher = FileHasher(tmp_path / "memo.json")
    first = file_hashes(params, hasher)
    assert set(first) == {"input_path"}  # a string that matches nothing is not a file
    (tmp_path / "part-1.csv").write_text("x\n9\n")
    changed = file_hashes(params, hasher)
    (tmp_path / "part-2.csv").write_text("x\n2\n")
    added = file_hashes(params, hasher)
    assert len({first["input_path"], changed["input_path"], added["input_path"]}) == 3
