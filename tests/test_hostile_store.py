"""A hostile store: whoever can write to the tracking store plants runs with the right
``slimray.cache_key`` tag and a newer start time, holding manifests of every malformed kind
(a non-ASCII or non-string signature, truncated, huge, not UTF-8, not JSON, nested past the
parser's depth, a JSON array, a file list naming a path outside the folder or of the wrong
type). Each is skipped and tagged untrusted, the lookup goes on to the next candidate and the
run proceeds: it finds the honest entry, or recomputes where there is none. A planted
signature of non-ASCII characters used to stop every lookup of its key (``TypeError`` from
``hmac.compare_digest``), a deeply nested one too (``RecursionError``). And an entry signed
with another key is a configuration error: skipped and never tagged, by the driver's lookup
and by a worker that holds another key (which used to brand the good entry corrupt)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from pipelines.store import artifacts, manifest, signing
from pipelines.store.manifest import ArtifactError, KeyMismatch
from pipelines.store.tracking import OUTPUT_DIR
from tests.engine_helpers import all_runs, run_pipeline

PIPELINE = {
    "name": "hostile",
    "steps": {
        "source": {"task": "toy_source", "params": {"value": 2.0, "size": 3}},
        "left": {"task": "toy_add", "inputs": {"x": "source"}, "params": {"amount": 1.0}},
    },
}
OTHER_KEY = b"0123456789abcdef" * 4  # another store's key


def _signed_body(value_dir: Path, context: str, key: bytes | None = None, **changes) -> dict:
    """The manifest of the files in ``value_dir`` signed for ``context`` (with ``key``, default
    this machine's), with ``changes`` applied to its file list before signing."""
    body = json.loads((value_dir / manifest.MANIFEST).read_text())
    files = {**body["files"], **changes}
    key = key or signing.load_key()
    return {
        **body,
        "files": files,
        "context": context,
        "key_id": signing.key_id(key),
        "signature": signing.sign(files, context, key),
    }


def _malformed(how: str, value_dir: Path, context: str) -> bytes:
    """The bytes of a manifest made ``how``."""
    body = _signed_body(value_dir, context)
    if how == "non-ascii signature":
        body["signature"] = "é" * 64
    elif how == "signature of another type":
        body["signature"] = [1, 2, 3]
    elif how == "truncated":
        return json.dumps(body).encode()[:100]
    elif how == "huge":
        body["padding"] = "x" * (manifest.MAX_MANIFEST_BYTES + 10)
    elif how == "not UTF-8":
        return b"\xff\xfe" + os.urandom(64)
    elif how == "nested past the parser's depth":
        return b"[" * 200_000
    elif how == "a JSON array":
        return b"[]"
    elif how == "a path outside the folder":  # even under a valid signature
        body = _signed_body(value_dir, context, **{"../../../etc/passwd": {"size": 1, "sha256": "0" * 64}})
    elif how == "files of another type":
        body["files"] = {"value.json": "abc"}
    return json.dumps(body).encode()


def _plant(client: MlflowClient, honest, how: str, tmp: Path, key_id: str | None = None) -> str:
    """A FINISHED run tagged like ``honest`` (same cache key), an hour newer (first in every
    lookup), holding ``honest``'s output files under a manifest made ``how``."""
    tags = {k: v for k, v in honest.data.tags.items() if k.startswith("slimray.") or k == "mlflow.parentRunId"}
    if key_id:
        tags[artifacts.KEY_ID_TAG] = key_id
    start = int(time.time() * 1000) + 3_600_000
    run_id = client.create_run(honest.info.experiment_id, start_time=start, tags=tags).info.run_id
    d = tmp / run_id / OUTPUT_DIR
    client.download_artifacts(honest.info.run_id, OUTPUT_DIR, str(tmp / run_id))
    context = artifacts.entry_context(run_id, honest.data.tags["slimray.cache_key"], OUTPUT_DIR)
    if how == "signed with another key":
        (d / manifest.MANIFEST).write_text(json.dumps(_signed_body(d, context, OTHER_KEY)))
    else:
        (d / manifest.MANIFEST).write_bytes(_malformed(how, d, context))
    client.log_artifacts(run_id, str(d), OUTPUT_DIR)
    client.set_terminated(run_id, "FINISHED", end_time=start + 1000)
    return run_id


MALFORMED = {
    "non-ascii signature": "malformed (malformed signature",
    "signature of another type": "malformed (malformed signature (want 64 lowercase hex digits, got list",
    "truncated": "unreadable (not JSON: JSONDecodeError",
    "huge": "too large",
    "not UTF-8": "unreadable (not JSON: UnicodeDecodeError",
    "nested past the parser's depth": "unreadable (not JSON: RecursionError",
    "a JSON array": "a JSON object expected, got list",
    "a path outside the folder": "lists a file slimray never writes: '../../../etc/passwd'",
    "files of another type": "'value.json': want exactly size and sha256",
}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_planted_malformed_manifests_are_skipped_and_the_run_proceeds(workdir, ray_local, tmp_path):
    first = run_pipeline(workdir, pipeline=PIPELINE)
    assert first.exit_code == 0
    client = MlflowClient(tracking_uri=first.uri)
    honest = {r.data.tags["slimray.step"]: r for r in all_runs(first)}
    assert honest["source"].data.tags[artifacts.KEY_ID_TAG] == signing.key_id()
    kinds = [*MALFORMED, "signed with another key"]
    planted = {how: _plant(client, honest["source"], how, tmp_path / "s") for how in kinds}
    planted["another key, by its tag"] = _plant(
        client, honest["source"], "signed with another key", tmp_path / "t", key_id=signing.key_id(OTHER_KEY)
    )
    # `left` has no honest entry left, only planted ones: it is recomputed
    left_planted = {how: _plant(client, honest["left"], how, tmp_path / "l") for how in kinds}
    client.delete_run(honest["left"].info.run_id)

    again = run_pipeline(workdir, pipeline=PIPELINE)
    assert again.exit_code == 0
    assert again.states["source"].status == "cached" and again.states["left"].status == "done"
    assert again.states["source"].trials[0].hit.info.run_id == honest["source"].info.run_id
    assert again.states["left"].trials[0].meta.summary["score"] == 3.0  # 2.0 + 1.0, from the honest source
    for group in (planted, left_planted):
        tags = {how: client.get_run(run_id).data.tags for how, run_id in group.items()}
        for how, reason in MALFORMED.items():
            assert tags[how]["slimray.stored"] == "untrusted", how
            assert reason in tags[how]["slimray.error"], (how, tags[how]["slimray.error"])
        for how in ("signed with another key", "another key, by its tag"):
            if how in tags:  # another key: configuration, not tampering: left as it was
                assert tags[how]["slimray.stored"] == "true" and "slimray.error" not in tags[how], how


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
names = st.sampled_from(["value.json", "tensors.safetensors", "blobs/a.onnx", "../x", "/etc/passwd", "blobs/.."])
entries = json_values | st.fixed_dictionaries({"size": json_values, "sha256": json_values})
hexish = st.text(alphabet="0123456789abcdefé\x00", min_size=64, max_size=64)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "files": json_values | st.dictionaries(names | st.text(max_size=10), entries, max_size=4),
        "context": json_values,
        "signature": json_values | hexish,
        "key_id": json_values | st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
        "algorithm": json_values | st.just(signing.ALGORITHM),
    },
)
manifests = (
    st.binary(max_size=200)
    | bodies.map(lambda b: json.dumps(b).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=manifests)
@example(data=json.dumps({"files": {}, "context": "", "signature": "é" * 64}).encode())
@example(data=json.dumps({"files": {}, "signature": "\x00" * 64}).encode())
@example(data=b"[" * 100_000)
def test_any_manifest_is_an_artifact_error_or_trusted(tmp_path_factory, data):
    """Whatever bytes a manifest holds, checking it raises ``ArtifactError`` (or returns a
    signed listing), never another exception that would stop the lookup."""
    path = tmp_path_factory.mktemp("m") / manifest.MANIFEST
    path.write_bytes(data)
    try:
        manifest.check_manifest(path, None, "planted")
    except ArtifactError as e:
        assert "\n" not in str(e)


def test_another_key_is_told_apart_from_tampering(tmp_path):
    """A manifest naming another key's id is a ``KeyMismatch`` naming both ids (configuration);
    one naming this key's id (or none) whose signature fails is tampering."""
    from tasks.core.types import Value

    d = artifacts.save(Value(1.0, {}), tmp_path / "v", "ctx")
    body = _signed_body(d, "ctx", OTHER_KEY)
    (d / manifest.MANIFEST).write_text(json.dumps(body))
    with pytest.raises(KeyMismatch) as err:
        artifacts.load(d, context="ctx")
    theirs, ours = signing.key_id(OTHER_KEY), signing.key_id()
    assert f"key id {theirs}" in str(err.value) and f"has id {ours}" in str(err.value)
    assert "configuration" in str(err.value) and "\n" not in str(err.value)
    for forged_id in (ours, None):
        body["key_id"] = forged_id
        (d / manifest.MANIFEST).write_text(json.dumps(body))
        with pytest.raises(ArtifactError, match="signature does not verify") as err:
            artifacts.load(d, context="ctx")
        assert not isinstance(err.value, KeyMismatch)


def _resign_in_place(run, key: bytes) -> None:
    """Re-sign ``run``'s stored output (a local artifact store) with ``key`` and tag its id, as
    a node holding ``key`` would have stored it."""
    d = Path(run.info.artifact_uri.removeprefix("file://")) / OUTPUT_DIR
    context = artifacts.entry_context(run.info.run_id, run.data.tags["slimray.cache_key"], OUTPUT_DIR)
    (d / manifest.MANIFEST).write_text(json.dumps(_signed_body(d, context, key)))


@pytest.mark.timeout(400)
def test_a_worker_with_another_key_fails_in_one_line_and_tags_nothing(workdir, ray_local, tmp_path, monkeypatch):
    """The driver holds the store's key, a worker another one (its node was started without
    the store's key file): the worker cannot verify the good entry it must load. It fails in
    one line naming both key ids and its node; the good entry is not tagged corrupt (it was,
    and no lookup trusted it again)."""
    first = run_pipeline(workdir, pipeline=PIPELINE)
    assert first.exit_code == 0
    client = MlflowClient(tracking_uri=first.uri)
    source = next(r for r in all_runs(first) if r.data.tags["slimray.step"] == "source")
    store_key = tmp_path / "store.key"
    store_key.write_bytes(OTHER_KEY)
    os.chmod(store_key, 0o600)
    _resign_in_place(source, OTHER_KEY)  # the store's entry, signed with the store's key
    client.set_tag(source.info.run_id, artifacts.KEY_ID_TAG, signing.key_id(OTHER_KEY))
    monkeypatch.setenv(signing.ENV, str(store_key))  # the driver has the store's key; the workers do not

    again = run_pipeline(workdir, ["pipeline.steps.left.params.amount=1.5"], pipeline=PIPELINE)
    assert again.exit_code == 1
    assert again.states["source"].status == "failed"
    note = again.states["source"].note
    assert "\n" not in note and f"key id {signing.key_id(OTHER_KEY)}" in note, note
    assert "Ray node" in note and "configuration" in note, note
    tags = client.get_run(source.info.run_id).data.tags
    assert tags["slimray.stored"] == "true" and "slimray.error" not in tags


def test_mark_corrupt_tags_damage_and_never_another_key(tmp_path):
    """The one decision both call sites (a worker loading a hit, the recorder publishing) use:
    damage or tampering tags the run corrupt; another key tags nothing."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("marks", artifact_location=str(tmp_path / "a"))
    damaged, other_key = (client.create_run(experiment).info.run_id for _ in range(2))
    for run_id in (damaged, other_key):
        client.set_tag(run_id, "slimray.stored", "true")
    assert artifacts.mark_corrupt(client, damaged, ArtifactError("run", "tensors.safetensors", "truncated"))
    mismatch = KeyMismatch("run", "output/manifest.json", signing.key_id(OTHER_KEY), signing.key_id())
    assert not artifacts.mark_corrupt(client, other_key, mismatch)
    assert client.get_run(damaged).data.tags["slimray.stored"] == "corrupt"
    assert "truncated" in client.get_run(damaged).data.tags["slimray.error"]
    assert client.get_run(other_key).data.tags["slimray.stored"] == "true"
    assert "slimray.error" not in client.get_run(other_key).data.tags
