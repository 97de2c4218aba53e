"""Stored outputs: round trips for any value (hypothesis), one-line errors for any truncated or
corrupt file, and a corrupt cache entry that the engine stops trusting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from pipelines.store import artifacts, manifest, signing
from pipelines.store.manifest import ArtifactError
from tasks.core.types import Value
from tests.engine_helpers import all_runs, run_pipeline

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
)
tensors = st.builds(
    lambda shape, seed, dtype: (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 10).to(dtype),
    st.lists(st.integers(0, 4), max_size=3),
    st.integers(0, 1000),
    st.sampled_from([torch.float32, torch.float16, torch.int64, torch.uint8]),
)
meta = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)
values = st.builds(lambda t, m, blob: Value(t, {"m": m, "blob": blob}), tensors, meta, st.binary(max_size=64))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@SETTINGS
@given(value=values)
def test_any_value_round_trips(tmp_path_factory, value):
    d = artifacts.save(value, tmp_path_factory.mktemp("v"))
    back = artifacts.load(d)
    assert _same(value.value, back.value) and _same(value.meta, back.meta)


def _stored(tmp_path) -> Path:
    value = Value(torch.arange(12.0).reshape(3, 4), {"onnx": b"\x08\x01" * 40, "name": "m"})
    return artifacts.save(value, tmp_path / "out")


@SETTINGS
@given(
    which=st.sampled_from(["value.json", "tensors.safetensors", "blobs/value.meta.onnx"]),
    cut=st.floats(0.0, 0.99),
    flip=st.booleans(),
    where=st.floats(0.0, 0.99),
)
def test_any_truncated_or_corrupt_file_is_one_line_naming_it(tmp_path_factory, which, cut, flip, where):
    d = _stored(tmp_path_factory.mktemp("c"))
    path = d / which
    data = bytearray(path.read_bytes())
    if flip:
        data[int(len(data) * where)] ^= 0xFF
    else:
        data = data[: int(len(data) * cut)]
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as err:
        artifacts.load(d, origin="run abc")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"run abc: {which}: "), text


def _resign(d: Path, context: str = "", key: bytes | None = None) -> None:
    """Rewrite the manifest of ``d`` for its current files, as a key holder would."""
    paths = [p for p in sorted(d.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    files = {str(p.relative_to(d)): manifest.digest(p) for p in paths}
    sig = signing.sign(files, context, key)
    (d / "manifest.json").write_text(json.dumps({"files": files, "context": context, "signature": sig}))


def test_missing_files_unsigned_and_foreign_manifests(tmp_path):
    d = _stored(tmp_path)
    (d / "blobs" / "value.meta.onnx").unlink()
    with pytest.raises(ArtifactError, match="blobs/value.meta.onnx: missing"):
        artifacts.load(d)
    d2 = _stored(tmp_path / "b")
    (d2 / "manifest.json").unlink()  # no manifest: refused, whatever the files
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        artifacts.load(d2)
    body = json.loads((d / "manifest.json").read_text())
    del body["signature"]
    (d2 / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(ArtifactError, match="manifest.json: unsigned"):
        artifacts.load(d2)
    _resign(d2, key=b"0" * 64)  # signed, but with someone else's key
    with pytest.raises(ArtifactError, match="manifest.json: signature does not verify"):
        artifacts.load(d2)
    _resign(d2, context="abc/output")  # signed for another cache key
    with pytest.raises(ArtifactError, match="signed for 'abc/output', not for 'def/output'"):
        artifacts.load(d2, context="def/output")
    (d2 / "blobs" / "extra.onnx").write_bytes(b"planted")
    with pytest.raises(ArtifactError, match="blobs/extra.onnx: not listed in the signed manifest"):
        artifacts.load(d2)
    with pytest.raises(ArtifactError, match="value.json: missing"):
        artifacts.load(tmp_path / "nothing")


def test_signed_but_undecodable_outputs_are_named(tmp_path):
    d = _stored(tmp_path)
    (d / "tensors.safetensors").write_bytes(b"\x00" * 7)
    _resign(d)
    with pytest.raises(ArtifactError, match="tensors.safetensors: unreadable"):
        artifacts.load(d)
    (d / "tensors.safetensors").unlink()
    _resign(d)
    with pytest.raises(ArtifactError, match="value.json: does not decode .*tensor 'value.value'"):
        artifacts.load(d)


def _steps(outcome) -> dict:
    return {r.data.tags["slimray.step"]: r for r in all_runs(outcome) if "slimray.trial" not in r.data.tags}


def _output_dir(run) -> Path:
    return Path(run.info.artifact_uri.removeprefix("file://")) / "output"


@pytest.mark.slow
def test_corrupt_cache_entry_is_untagged_and_recomputed(workdir, ray_local):
    """Truncate a stored output the next run must load: it is recomputed (and marked so), the
    bad run is no longer a cache source, and the values are right."""
    first = run_pipeline(workdir)
    assert first.exit_code == 0
    source = _steps(first)["source"]
    st_file = _output_dir(source) / "tensors.safetensors"
    st_file.write_bytes(st_file.read_bytes()[:-5])
    # a new `left` needs the output of `source` (no inputs of its own): loaded -> recomputed
    second = run_pipeline(workdir, ["pipeline.steps.left.params.amount=1.5"])
    assert second.exit_code == 0
    assert second.states["source"].status == "done"  # recomputed, not served from the bad entry
    assert second.states["left"].trials[0].meta.summary["score"] == 2.5  # 1.0 + 1.5
    bad = MlflowClient(tracking_uri=first.uri).get_run(source.info.run_id)
    assert bad.data.tags["slimray.stored"] == "corrupt"
    assert "tensors.safetensors: truncated" in bad.data.tags["slimray.error"]
    new_source = _steps(second)["source"]
    assert new_source.data.tags["slimray.cached"] == "false"
    assert "truncated" in new_source.data.tags["slimray.recomputed"]
    assert new_source.data.tags["slimray.stored"] == "true" and new_source.info.status == "FINISHED"
    third = run_pipeline(workdir, ["pipeline.steps.left.params.amount=1.5"])
    assert {st.status for st in third.states.values()} == {"cached"}
    assert all(r.data.tags.get("slimray.cache_source") != source.info.run_id for r in all_runs(third))


def test_corrupt_cache_entry_without_inputs_fails_with_one_line(workdir, ray_local):
    """When the corrupt step's own inputs were cache hits nobody loaded, it cannot recompute in
    place: one line naming the run and file, the run exits 1, and the rerun recomputes."""
    first = run_pipeline(workdir)
    left = _steps(first)["left"]
    value_json = _output_dir(left) / "value.json"
    value_json.write_text(json.dumps({"__type__": "Value"}))
    second = run_pipeline(workdir, ["pipeline.steps.join.params.metric=grand"])
    assert second.exit_code == 1
    note = second.states["left"].note
    assert "\n" not in note and f"run {left.info.run_id}" in note and "value.json" in note and "rerun" in note
    third = run_pipeline(workdir, ["pipeline.steps.join.params.metric=grand"])
    assert third.exit_code == 0 and third.states["left"].status == "done"
