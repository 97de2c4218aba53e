"""Worker-side facts: a cache key is computed on the driver, but the step runs on a worker node.

- a measuring step (benchmark, prune, quantize) is keyed on the hardware fingerprint of the node
  that runs it, also when the driver's differs, and is pinned there: a result measured on one
  node type is reused on that type only (a 3-node ``ray.cluster_utils`` cluster whose worker nodes
  pretend to be other machines with ``SLIMRAY_HARDWARE_SALT`` in their raylet's environment);
- the worker checks what the key read on the driver (hardware, library versions, the files the
  params name) against its own node before it computes, and fails the step in one line;
- ``reduce_range: auto`` follows the fingerprint in the key, not the CPU the code runs on.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.run.worker import FactError, Facts, StepJob, check_facts
from pipelines.store import keys as keys_module
from pipelines.store.keys import library_versions
from pipelines.store.tracking import find_cached
from tasks.runtime.hardware import KERNEL_FLAGS, SALT_ENV, VNNI_FLAGS, cpu, fingerprint, keyed_on

GiB = 1024**3


# ---- reduce_range: auto -----------------------------------------------------------------------


def test_reduce_range_auto_follows_the_fingerprint_in_the_key(monkeypatch):
    """Decided from the key's fingerprint (which carries the VNNI bit), whatever CPU runs the code."""
    from tasks.compression.ort_int8 import use_reduce_range

    monkeypatch.delenv(SALT_ENV, raising=False)
    fp = fingerprint()
    assert set(VNNI_FLAGS) <= set(KERNEL_FLAGS)  # every VNNI/AMX-INT8 flag is kept in the fingerprint
    assert [f for f in fp["isa"] if f in VNNI_FLAGS] == [f for f in VNNI_FLAGS if f in cpu()[1]]
    without = {**fp, "arch": "x86_64", "isa": ["avx", "avx2", "fma"]}
    with keyed_on(without):
        assert use_reduce_range("auto") is True
    with keyed_on({**without, "isa": ["avx", "avx2", "fma", "avx512f", "avx512_vnni"]}):
        assert use_reduce_range("auto") is False
    with keyed_on({**without, "isa": ["avx2", "avx_vnni"]}):
        assert use_reduce_range("auto") is False
    with keyed_on({**fp, "arch": "aarch64", "isa": ["asimd", "asimddp"]}):
        assert use_reduce_range("auto") is False
        assert use_reduce_range("on") is True and use_reduce_range("off") is False


# ---- the worker's check -----------------------------------------------------------------------


def _job(params: dict, facts: Facts) -> StepJob:
    return StepJob(
        step="bench",
        task="benchmark",
        run_name="bench",
        params=params,
        seed=0,
        uri="",
        experiment_id="0",
        parent_run="",
        root_run="",
        tags={},
        layout=[],
        facts=facts,
    )


def test_the_worker_check_names_the_node_and_both_sides(tmp_path, monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    data = tmp_path / "d.npz"
    data.write_bytes(b"rows")
    params = {"path": str(data)}
    versions = library_versions()
    here = {"torch": versions["torch"], "python": versions["python"]}
    files = keys_module.file_hashes(params, keys_module.FileHasher())
    check_facts(_job(params, Facts(here, files, fingerprint())), "n1")  # all alike: passes

    other = {**fingerprint(), "salt": "node-a"}
    with pytest.raises(FactError) as e:
        check_facts(_job(params, Facts(here, files, other)), "n1 (host)")
    line = str(e.value)
    assert "\n" not in line and "node n1 (host) has hardware fingerprint " in line
    digest = hashlib.sha256(json.dumps(fingerprint(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert f"fingerprint {digest[:12]} {{}} but the cache key holds fingerprint " in line
    assert line.endswith('{"salt":"node-a"}; a measurement is stored only under its hardware')

    torch_here = re.escape(versions["torch"])
    with pytest.raises(FactError, match=rf"node n1 has torch {torch_here} .* holds torch 0\.0\.1"):
        check_facts(_job(params, Facts({**here, "torch": "0.0.1"}, files)), "n1")
    with pytest.raises(FactError, match="has not-a-real-dist absent .* holds not-a-real-dist 1.0"):
        check_facts(_job(params, Facts({**here, "not-a-real-dist": "1.0"}, files)), "n1")

    data.write_bytes(b"other rows")  # the file the driver hashed is not what this node would read
    with pytest.raises(FactError, match=r"params\.path names a file whose content hash here is"):
        check_facts(_job(params, Facts(here, files)), "n1")
    data.unlink()
    with pytest.raises(FactError, match=r"params\.path .* here is absent"):
        check_facts(_job(params, Facts(here, files)), "n1")


# ---- a local run whose driver differs from its workers ----------------------------------------


def _npz(path) -> str:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.normal(size=(64, 6)).astype("float32"),
        y_train=np.arange(64) % 2,
        x_test=rng.normal(size=(16, 6)).astype("float32"),
        y_test=np.arange(16) % 2,
    )
    return str(path)


def _measuring_pipeline(npz: str, bench_resources: dict | None = None) -> dict:
    bench = {
        "task": "benchmark",
        "inputs": {"models": ["zoo"], "data": "data"},
        "params": {"warmup": 1, "iters_b1": 3, "iters_b256": 1},
    }
    if bench_resources:
        bench["resources"] = bench_resources
    return {
        "name": "facts",
        "steps": {
            "data": {"task": "data", "params": {"source": "npz", "path": npz, "normalize": "none"}},
            "zoo": {
                "task": "train",
                "inputs": {"data": "data"},
                "params": {
                    "model": {"_target_": "tasks.models.zoo.MLP", "hidden": [4]},
                    "optim": {"epochs": 1, "batch_size": 16},
                },
            },
            "bench": bench,
        },
    }


def _execute(uri: str, pipeline: dict):
    cfg = load_config([f"tracking.uri={uri}"])
    cfg.pipeline = OmegaConf.create(pipeline)
    spec, ray_cfg, tracking = session.validate(cfg)
    return session.execute(cfg, spec, ray_cfg, tracking, [])


@pytest.mark.slow
def test_a_driver_on_other_hardware_or_libraries_than_its_workers_stores_nothing(workdir, ray_local, monkeypatch):
    """Ray's workers were started before the driver took another fingerprint (and, below, other
    library versions): the workers refuse, in one line, to compute under the driver's key."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    pipe = _measuring_pipeline(_npz(workdir / "d.npz"))
    monkeypatch.setenv(SALT_ENV, "the driver only")
    out = _execute(uri, pipe)
    st = out.states["bench"]
    assert (out.states["data"].status, out.states["zoo"].status, st.status) == ("done", "done", "failed")
    assert st.note.startswith("FactError: step bench: node ") and " has hardware fingerprint " in st.note
    assert st.note.endswith('{"salt":"the driver only"}; a measurement is stored only under its hardware')
    assert st.note.count('"salt"') == 1  # the node's own fingerprint has none
    client = MlflowClient(tracking_uri=uri)
    assert find_cached(client, out.experiment_id, st.trials[0].key) is None  # nothing stored under it

    monkeypatch.delenv(SALT_ENV)
    real = keys_module.library_versions
    monkeypatch.setattr(keys_module, "library_versions", lambda: {**real(), "numpy": "0.0.1"})
    out = _execute(uri, pipe)
    assert {n: s.status for n, s in out.states.items()} == {"data": "failed", "zoo": "skipped", "bench": "skipped"}
    assert f"has numpy {np.__version__} but the cache key (the driver's) holds numpy 0.0.1" in out.states["data"].note


# ---- a cluster whose worker nodes differ from the driver --------------------------------------


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(420)
def test_a_measurement_is_reused_only_on_the_hardware_it_was_taken_on(tmp_path, monkeypatch):
    """Head (the driver's node, unsalted, no ``bench`` resource) plus one worker node at a time
    holding ``bench``: node A (salt a), then B (salt b), then C (salt a, the same machine type as
    A). The benchmark is keyed on the worker's fingerprint, never the driver's: measured on A,
    measured again on B (the models upstream reused), reused on C."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(SALT_ENV, raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # the store exists before workers log
    pipe = _measuring_pipeline(_npz(tmp_path / "d.npz"), {"custom": {"bench": 1}})
    if ray.is_initialized():
        ray.shutdown()
    args = dict(num_cpus=1, memory=2 * GiB, object_store_memory=200 * 1024**2)
    cluster = Cluster(initialize_head=True, head_node_args=args)

    def worker(salt: str):
        node = cluster.add_node(**args, resources={"bench": 1}, env_vars={SALT_ENV: salt})
        cluster.wait_for_nodes(timeout=90)
        return node

    def ran_on(out) -> tuple[dict, str]:
        st = out.states["bench"]
        return {n: s.status for n, s in out.states.items()}, st.trials[0].meta.node_id

    try:
        node = worker("a")
        ray.init(address=cluster.address, logging_level="WARNING")
        first = _execute(uri, pipe)
        assert ran_on(first) == ({"data": "done", "zoo": "done", "bench": "done"}, node.node_id)
        measured_on_a = first.states["bench"].trials[0].key

        cluster.remove_node(node)
        node = worker("b")
        second = _execute(uri, pipe)
        assert ran_on(second) == ({"data": "cached", "zoo": "cached", "bench": "done"}, node.node_id)
        assert second.states["bench"].trials[0].key != measured_on_a

        cluster.remove_node(node)
        worker("a")
        third = _execute(uri, pipe)
        assert {n: s.status for n, s in third.states.items()} == {"data": "cached", "zoo": "cached", "bench": "cached"}
        assert third.states["bench"].trials[0].key == measured_on_a
        assert third.states["bench"].trials[0].hit.info.run_id == first.states["bench"].trials[0].meta.run_id
    finally:
        ray.shutdown()
        cluster.shutdown()
