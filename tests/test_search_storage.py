"""Search resume never unpickles files another user could write: the storage tree is checked
before ``Tuner.restore`` (and before anything starts), refused in one line otherwise."""

from __future__ import annotations

import os
import pwd

import pytest

from pipelines.cli import main
from pipelines.search.storage import UnsafeStorage, check_restorable


def _refused(root, name="search-x") -> str:
    with pytest.raises(UnsafeStorage) as err:
        check_restorable(root, name)
    text = str(err.value)
    assert "\n" not in text and text.startswith("search.storage: ") and "refusing to restore" in text
    return text


def test_private_tree_passes_and_others_writable_or_owned_are_refused(tmp_path):
    root = tmp_path / "tune"
    check_restorable(root, "search-x")  # created, 0700
    assert oct(root.stat().st_mode & 0o777) == "0o700"
    state = root / "search-x" / "trial-1"
    state.mkdir(parents=True)
    (state / "experiment_state.pkl").write_bytes(b"\x80\x04N.")
    check_restorable(root, "search-x")
    os.chmod(state / "experiment_state.pkl", 0o666)
    assert "experiment_state.pkl is writable by other users (mode 666)" in _refused(root)
    os.chmod(state / "experiment_state.pkl", 0o600)
    os.chmod(state, 0o775)
    assert "trial-1 is writable by other users (mode 775)" in _refused(root)
    os.chmod(state, 0o700)
    if os.geteuid() == 0:  # a file planted by another user, even read-only
        nobody = pwd.getpwnam("nobody").pw_uid
        os.chown(state / "experiment_state.pkl", nobody, -1)
        assert f"is owned by uid {nobody}, not by this user" in _refused(root)
        os.chown(state / "experiment_state.pkl", 0, -1)
    check_restorable(root, "search-x")
    os.chmod(tmp_path, 0o777)  # a parent anyone may write (no sticky bit): the tree can be swapped
    try:
        assert f"{tmp_path} (a parent) is writable by other users (mode 777)" in _refused(root)
        os.chmod(tmp_path, 0o1777)  # as /tmp: sticky, so others cannot replace our entries
        check_restorable(root, "search-x")
    finally:
        os.chmod(tmp_path, 0o700)


def test_search_on_shared_storage_exits_2_before_anything_starts(workdir, capsys):
    import ray

    storage = workdir / "shared-tune"
    storage.mkdir()
    os.chmod(storage, 0o777)
    was_running = ray.is_initialized()
    argv = ["experiment=search", f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"pipeline.search.storage={storage}"]
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert lines[0].startswith("MLflow store: ")  # the console's first line names the store
    assert len(lines) == 2 and lines[1].startswith("error: search.storage: ") and "writable by other users" in lines[1]
    assert not (workdir / "mlflow.db").exists() and ray.is_initialized() == was_running
