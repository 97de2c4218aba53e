"""Signed cache entries on a real MLflow server: runs planted with the right cache-key tag and a
newer start_time (unsigned manifest, wrongly signed, no manifest, a signed manifest replayed
from another run, a swapped artifact, a forged publication) are never served or registered;
each is tagged and the pipeline's values and registered model stay the honest ones. And the key
file itself: created 0600 on first use, refused when others can read it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.store import artifacts, signing
from pipelines.store.tracking import OUTPUT_DIR, PUBLISH_DIR
from tasks.core.types import Publication, Registration, Report, Value
from tests.engine_helpers import all_runs, run_pipeline
from tests.servers import MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

PIPELINE = {
    "name": "signed",
    "steps": {
        "source": {"task": "toy_source", "params": {"value": 2.0, "size": 3}},
        "publish": {"task": "toy_publish", "inputs": {"x": "source"}, "params": {"registry_name": "signed-demo"}},
    },
}
FORGED = 100.0  # what every planted output holds: a total of 300 would show it was served


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    srv = MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}")
    try:
        srv.start(timeout=90)
        yield srv
    finally:
        srv.stop()


def _pipeline(workdir, uri: str, registry: str = "signed-demo"):
    spec = json.loads(json.dumps(PIPELINE))
    spec["steps"]["publish"]["params"]["registry_name"] = registry
    return run_pipeline(workdir, [f"tracking.uri={uri}"], pipeline=spec)


def _step(outcome, name: str):
    return next(r for r in all_runs(outcome) if r.data.tags["slimray.step"] == name)


def _plant(client: MlflowClient, honest, folder: str, value, how: str, tmp: Path) -> str:
    """A FINISHED run tagged exactly like ``honest`` (same cache key), started an hour later,
    holding ``value`` under ``folder``/ with its manifest made ``how``."""
    tags = {k: v for k, v in honest.data.tags.items() if k.startswith("slimray.") or k == "mlflow.parentRunId"}
    start = int(time.time() * 1000) + 3_600_000  # a forged newer start_time: first in every lookup
    run_id = client.create_run(honest.info.experiment_id, start_time=start, tags=tags).info.run_id
    d = tmp / how
    key = honest.data.tags["slimray.cache_key"]
    artifacts.save(value, d, artifacts.entry_context(run_id, key, folder))
    body = json.loads((d / "manifest.json").read_text())
    if how == "unsigned":
        body.pop("signature")
    elif how == "foreign-key":
        body["signature"] = signing.sign(body["files"], body["context"], key=b"f" * 64)
    elif how == "replayed":  # the honest run's own signed manifest and files, in another run
        shutil.rmtree(d)
        client.download_artifacts(honest.info.run_id, folder, str(tmp / "replay"))
        d = tmp / "replay" / folder
        body = json.loads((d / "manifest.json").read_text())
        (d / "tensors.safetensors").write_bytes((tmp / "forged.safetensors").read_bytes())
    if how == "no-manifest":
        (d / "manifest.json").unlink()
    else:
        (d / "manifest.json").write_text(json.dumps(body))
    client.log_artifacts(run_id, str(d), folder)
    client.set_terminated(run_id, "FINISHED", end_time=start + 1000)
    return run_id


@pytest.mark.slow
def test_planted_and_tampered_entries_are_never_served_or_registered(workdir, ray_local, server, tmp_path):
    first = _pipeline(workdir, server.url)
    assert first.exit_code == 0
    client = MlflowClient(tracking_uri=server.url)
    honest_source, honest_publish = _step(first, "source"), _step(first, "publish")
    forged = Value(torch.full((3,), FORGED), {"from": "attacker"})
    (tmp_path / "forged").mkdir()
    artifacts.save(forged, tmp_path / "forged")
    shutil.copy(tmp_path / "forged" / "tensors.safetensors", tmp_path / "forged.safetensors")

    hows = ["unsigned", "foreign-key", "no-manifest", "replayed"]
    planted = {how: _plant(client, honest_source, OUTPUT_DIR, forged, how, tmp_path) for how in hows}
    pub = Publication(
        metrics={"headline.total": 3 * FORGED},
        models=[Registration("signed-demo", b"not the honest model", "candidate")],
    )
    planted["publication"] = _plant(client, honest_publish, PUBLISH_DIR, pub, "unsigned", tmp_path / "p")
    # its output/ signed with the real key: only the publication's own manifest can give it away
    context = artifacts.entry_context(planted["publication"], honest_publish.data.tags["slimray.cache_key"], OUTPUT_DIR)
    artifacts.save(Report(data={"total": 3 * FORGED}), tmp_path / "report", context)
    client.log_artifacts(planted["publication"], str(tmp_path / "report"), OUTPUT_DIR)

    # the same pipeline: every step is a cache hit, on the honest runs only
    again = _pipeline(workdir, server.url)
    assert again.exit_code == 0 and {st.status for st in again.states.values()} == {"cached"}
    sources = {r.data.tags["slimray.step"]: r.data.tags.get("slimray.cache_source") for r in all_runs(again)}
    assert sources == {"source": honest_source.info.run_id, "publish": honest_publish.info.run_id}
    assert client.get_run(again.run_id).data.metrics["headline.total"] == 6.0
    # a new publish step: it loads the output of `source`, from the honest run
    third = _pipeline(workdir, server.url, registry="signed-demo-2")
    assert third.exit_code == 0 and third.states["source"].status == "cached"
    assert client.get_run(third.run_id).data.metrics["headline.total"] == 6.0
    reasons = {how: client.get_run(run_id).data.tags for how, run_id in planted.items()}
    assert {how: t["slimray.stored"] for how, t in reasons.items()} == dict.fromkeys(planted, "untrusted")
    assert "manifest.json: unsigned" in reasons["unsigned"]["slimray.error"]
    assert "signature does not verify" in reasons["foreign-key"]["slimray.error"]
    assert "output/manifest.json: missing" in reasons["no-manifest"]["slimray.error"]
    assert f"signed for '{honest_source.info.run_id}/" in reasons["replayed"]["slimray.error"]
    assert "publish/manifest.json: unsigned" in reasons["publication"]["slimray.error"]
    for name, outcome in (("signed-demo", again), ("signed-demo-2", third)):
        version = client.get_model_version_by_alias(name, "candidate")
        assert version.run_id == outcome.run_id
    served = {r.data.tags.get("slimray.cache_source") for o in (again, third) for r in all_runs(o)}
    assert not served & set(planted.values())


@pytest.mark.slow
def test_swapped_artifact_in_an_honest_entry_is_recomputed(workdir, ray_local, server, tmp_path):
    """The server's artifact store itself altered under a signed manifest: the output that must
    be loaded fails its check, is recomputed, and the run is tagged corrupt."""
    first = _pipeline(workdir, server.url)
    assert first.exit_code == 0
    honest = _step(first, "source")
    stored = [p for p in (server.root / "artifacts").rglob("tensors.safetensors") if honest.info.run_id in str(p)]
    assert len(stored) == 1
    artifacts.save(Value(torch.full((3,), FORGED), {"from": "attacker"}), tmp_path / "f")
    stored[0].write_bytes((tmp_path / "f" / "tensors.safetensors").read_bytes())
    again = _pipeline(workdir, server.url, registry="signed-demo-3")
    assert again.exit_code == 0
    assert again.states["source"].status == "done"  # recomputed, not served
    client = MlflowClient(tracking_uri=server.url)
    assert client.get_run(again.run_id).data.metrics["headline.total"] == 6.0
    bad = client.get_run(honest.info.run_id).data.tags
    assert bad["slimray.stored"] == "corrupt" and "tensors.safetensors" in bad["slimray.error"]


def test_cache_key_file_is_private_and_refused_when_shared(tmp_path, monkeypatch):
    """Only the set-up command creates a key (0600); a key its group or others may read is
    refused when this user owns it (a 0640 key was accepted), accepted root-owned and
    group-readable (a Kubernetes secret volume with fsGroup), checked by the exact rule."""
    path = tmp_path / "cfg" / "cache.key"
    monkeypatch.setenv(signing.ENV, str(path))
    assert signing.main(["init"]) == 0 and signing.main(["init"]) == 0  # created once, then kept
    key = signing.load_key()
    assert len(key) == 64 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert signing.load_key() == key
    for mode in (0o644, 0o640, 0o660, 0o604, 0o610):
        os.chmod(path, mode)
        with pytest.raises(signing.CacheKeyError) as err:
            signing.load_key()
        assert "\n" not in str(err.value) and str(path) in str(err.value) and "chmod 600" in str(err.value), mode
    os.chmod(path, 0o400)
    assert signing.load_key() == key
    st = path.stat()

    def root_owned(mode: int) -> os.stat_result:
        return os.stat_result((0o100000 | mode, *st[1:4], 0, *st[5:]))  # st_uid 0

    signing.check_mode(path, root_owned(0o440), euid=1000)  # a secret volume read via fsGroup
    for mode, euid in ((0o440, 0), (0o640, 0), (0o444, 1000), (0o460, 1000), (0o450, 1000)):
        with pytest.raises(signing.CacheKeyError, match=f"mode {mode:o}"):
            signing.check_mode(path, root_owned(mode), euid=euid)
    with pytest.raises(signing.CacheKeyError, match="owned by uid 1234, not by this user or root"):
        signing.check_mode(path, os.stat_result((0o100600, *st[1:4], 1234, *st[5:])), euid=1000)
    monkeypatch.delenv(signing.ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert signing.key_path() == tmp_path / "xdg" / "slimray" / "cache.key"


def test_no_process_creates_a_key_but_set_up_and_a_local_driver(tmp_path, monkeypatch):
    """A missing key is one line naming the node and the path, and is never created, whether
    ``SLIMRAY_CACHE_KEY_FILE`` names it or the default is missing; only ``slimray key init``
    and the driver of a local run (ray.address unset, no SLIMRAY_CACHE_KEY_FILE) create one."""
    named = tmp_path / "mounted" / "cache.key"
    monkeypatch.setenv(signing.ENV, str(named))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for ray_address in (None, "auto"):
        signing.local_default(ray_address)  # a key named by the environment is never made
        with pytest.raises(signing.CacheKeyError) as err:
            signing.load_key()
        line = str(err.value)
        assert "\n" not in line and str(named) in line and socket.gethostname() in line and signing.ENV in line
        assert not named.exists()
    monkeypatch.delenv(signing.ENV)
    default = tmp_path / "xdg" / "slimray" / "cache.key"
    with pytest.raises(signing.CacheKeyError, match="a local run creates this default, a Ray worker or job never"):
        signing.load_key()
    signing.local_default("auto")  # a driver joining a cluster: no key made
    assert not default.exists()
    signing.local_default(None)  # a local run on a laptop
    assert oct(default.stat().st_mode & 0o777) == "0o600" and len(signing.load_key()) == 64


def test_a_ray_worker_without_the_key_fails_in_one_line_naming_its_node(tmp_path, ray_local):
    """A Ray worker whose key file is missing (named by SLIMRAY_CACHE_KEY_FILE, or the default
    on a node that has none) fails in one line naming its host, Ray node id and the path; it
    never makes a key of its own (it used to, then signed with it)."""
    named = tmp_path / "not-mounted" / "cache.key"
    cases = {
        str(named): {signing.ENV: str(named)},
        str(tmp_path / "home" / "slimray" / "cache.key"): {signing.ENV: "", "XDG_CONFIG_HOME": str(tmp_path / "home")},
    }
    node_id = ray_local.get_runtime_context().get_node_id()
    for path, env in cases.items():
        task = ray_local.remote(signing.sign).options(runtime_env={"env_vars": env}, max_retries=0)
        with pytest.raises(signing.CacheKeyError) as err:
            ray_local.get(task.remote({}, "ctx"), timeout=120)
        line = str(err.value).strip().splitlines()[-1]
        assert f"Ray node {node_id}" in line and f"cache key {path} missing" in line, line
        assert not Path(path).exists()


@pytest.mark.parametrize("multirun", [False, True])
def test_a_driver_without_the_key_fails_in_one_line_before_any_work(workdir, tmp_path, monkeypatch, capsys, multirun):
    """``SLIMRAY_CACHE_KEY_FILE`` naming a missing file: the driver (single run or multirun)
    exits 2 with one error line naming its host and the path, before Ray starts or any run is
    created, and makes no key (it used to make one; a run without it computed its steps, then
    failed to store them)."""
    from pipelines.cli import main

    missing = tmp_path / "not-mounted" / "cache.key"
    monkeypatch.setenv(signing.ENV, str(missing))
    args = ["pipeline=demo", f"tracking.uri=sqlite:///{workdir}/mlflow.db"]
    code = main(["-m", *args, "pipeline.steps.left.params.amount=1,2"] if multirun else args)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, err
    # "host H: ..." alone, or "host H, Ray node N: ..." when the session's Ray is up in this process
    assert f"host {socket.gethostname()}" in errors[0] and f"cache key {missing} missing" in errors[0], errors
    assert not missing.exists() and not (workdir / "mlflow.db").exists()
