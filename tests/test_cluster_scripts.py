"""``cluster/up.sh`` -> ``slimray submit`` -> results on PostgreSQL -> ``cluster/down.sh``,
end to end on a real local cluster: PostgreSQL, MLflow (basic auth) on it, a token-authenticated
Ray head and two worker nodes, all started by the script, stopped by the script, nothing left.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.servers import private_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGES = "session_*/runtime_resources/working_dir_files/_ray_pkg_*/pipelines"  # a node's unpacked jobs


def _env_file(state: Path) -> dict:
    env = {}
    for line in (state / "env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


def _group_pids(state: Path) -> dict[str, int]:
    return {p.name: int(p.read_text().split()[0]) for p in (state / "pids").iterdir()}


def _cluster_processes(state: Path, ray_tmp: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if (str(state) in ln or ray_tmp in ln) and "ps -eo" not in ln]


def _listeners(pids: set[int]) -> set[str]:
    """Local addresses of TCP sockets listened on by ``pids`` (from ``ss``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    found = set()
    for ln in out.splitlines():
        if any(f"pid={p}," in ln for p in pids):
            found.add(ln.split()[3])
    return found


def _tree(pids: set[int]) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,pgid"], capture_output=True, text=True).stdout
    return {int(a) for a, b in (ln.split() for ln in out.splitlines()[1:]) if int(b) in pids}


def _http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _submit(env: dict, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "submit", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )


def _statuses(pg_uri: str, experiment: str) -> dict[str, int]:
    import psycopg2

    with psycopg2.connect(pg_uri) as pg, pg.cursor() as cur:
        cur.execute(
            "SELECT r.status, count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
            "WHERE e.name = %s GROUP BY r.status",
            (experiment,),
        )
        return dict(cur.fetchall())


def _job_log(env: dict, submit_log: Path) -> str:
    """The tail of the job's own log (its driver's output), for a failure message."""
    text = submit_log.read_text(errors="replace")
    job = next((w for w in text.split() if w.startswith("slimray-")), None)
    if job is None:
        return text[-2000:]
    cmd = [str(BIN / "ray"), "job", "logs", job, "--address", env["RAY_API_SERVER_ADDRESS"]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60).stdout[-3000:]


def _five_submissions_in_a_row(env: dict, ray_tmp: Path) -> None:
    """Five Ray Jobs in a row, first thing after ``up.sh``, each computing on both worker nodes,
    then registering a model in its driver (MLflow's ``log_model`` calls ``os.getcwd()``, as
    experiment=smoke's report does): every one finishes. The first one's package is new to every
    node, the case where a worker node's runtime-env agent used to unpack it again over the
    directory the driver was running in (docs/reliability.md): each node has its own copy."""
    start = time.monotonic()
    for i in range(5):
        out = _submit(env, "pipeline=nodes_publish", f"pipeline.steps.source.params.value={i}")
        assert out.returncode == 0, f"submission {i + 1} of 5: " + out.stdout[-3000:] + out.stderr[-3000:]
        assert f"demo total: {4.0 * i}" in out.stdout and "working dir: gcs://_ray_pkg_" in out.stderr, out.stdout
    print(f"five submissions in a row: {time.monotonic() - start:.0f} s")
    copies = [list((ray_tmp / node).glob(PACKAGES)) for node in ("", "w1", "w2")]  # head, worker nodes
    assert all(copies), copies  # each node unpacked the package into its own temp dir


def _ctrl_c_of_a_submitted_job(env: dict, pg_uri: str, tmp: Path) -> None:
    """Ctrl-C of ``slimray submit`` stops the Ray job with SIGINT: the job's driver goes through
    the run lifecycle (runs KILLED, none left RUNNING) and the command exits 130 at once."""
    nap = "+pipeline.steps.nap={task: toy_sleep, inputs: {x: source}, params: {seconds: 120}}"
    cmd = [sys.executable, "-m", "pipelines", "submit", "pipeline=demo", "tracking.experiment=demo-stop", nap]
    log = tmp / "submit.log"
    submit = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while _statuses(pg_uri, "demo-stop").get("RUNNING", 0) < 2:  # the parent and a step run
            assert submit.poll() is None and time.time() < deadline, "the job never started a step"
            time.sleep(1)
        time.sleep(3)  # the nap step's run is open
        submit.send_signal(signal.SIGINT)
        assert submit.wait(timeout=30) == 130
        deadline = time.time() + 40
        while _statuses(pg_uri, "demo-stop").get("RUNNING", 0):
            if time.time() > deadline:
                pytest.fail(f"runs left RUNNING: {_statuses(pg_uri, 'demo-stop')}\n{_job_log(env, log)}")
            time.sleep(1)
        assert _statuses(pg_uri, "demo-stop").get("KILLED", 0) >= 1
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.wait()


def test_up_submit_postgres_down():
    import psycopg2

    state = private_dir("slimray-cluster-") / "cluster"  # PostgreSQL's user must reach it
    base = {
        **os.environ,
        "SLIMRAY_CLUSTER_DIR": str(state),
        "SLIMRAY_VENV": str(BIN.parent),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN"):
        base.pop(k, None)
    up = subprocess.run(
        [str(ROOT / "cluster/up.sh"), "--workers", "2", "--basic-auth"],
        env=base,
        capture_output=True,
        text=True,
        timeout=600,
    )
    ray_tmp = (state / "ray_tmp").read_text().strip() if (state / "ray_tmp").exists() else "/nonexistent"
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        groups = _group_pids(state)
        assert set(groups) == {"postgres", "mlflow", "ray-head", "ray-worker-1", "ray-worker-2"}
        # idempotent: a second up.sh starts nothing
        again = subprocess.run(
            [str(ROOT / "cluster/up.sh"), "--workers", "2", "--basic-auth"],
            env=base,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr
        assert _group_pids(state) == groups
        cenv = _env_file(state)
        env = {**base, **cenv}
        uri = cenv["MLFLOW_TRACKING_URI"]

        # exposure: MLflow's basic-auth app refuses anonymous requests; everything on 127.0.0.1
        search = uri + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert _http_status(search) == 401
        assert _http_status(search, ("admin", "wrong")) == 401
        assert _http_status(search, ("admin", cenv["MLFLOW_TRACKING_PASSWORD"])) == 200
        anonymous = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_P")}
        refused = _submit(anonymous, "pipeline=demo")
        assert refused.returncode == 2 and "HTTP 401" in refused.stderr, refused.stderr[-2000:]
        addresses = _listeners(_tree(set(groups.values())))
        assert addresses, "no listening sockets found for the cluster's processes"
        # the HTTP services and PostgreSQL listen on loopback only. Ray 2.60's own gRPC ports
        # (GCS, raylet, agents, client server) bind all interfaces whatever --node-ip-address
        # says; they require the token (documented in cluster/README.md)
        ports = {
            cenv["MLFLOW_TRACKING_URI"].rsplit(":", 1)[1],
            cenv["RAY_API_SERVER_ADDRESS"].rsplit(":", 1)[1],
            cenv["SLIMRAY_POSTGRES_URI"].rsplit(":", 1)[1].split("/")[0],
        }
        served = {a for a in addresses if a.rsplit(":", 1)[1] in ports}
        assert {a.rsplit(":", 1)[1] for a in served} == ports, (served, ports)
        assert all(a.startswith("127.0.0.1:") for a in served), served

        # before anything else reaches the worker nodes: five submissions in a row finish
        _five_submissions_in_a_row(env, Path(ray_tmp))

        # a pipeline as a Ray Job, tracked on the server (PostgreSQL behind it)
        first = _submit(env, "pipeline=demo")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "SUCCEEDED" in first.stderr and "join" in first.stdout and "Pipeline 'demo' finished" in first.stdout
        pg = psycopg2.connect(cenv["SLIMRAY_POSTGRES_URI"].replace("+psycopg2", ""), passfile=cenv["PGPASSFILE"])
        with pg, pg.cursor() as cur:
            cur.execute(
                "SELECT r.status, count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                "WHERE e.name = 'demo' GROUP BY r.status"
            )
            assert dict(cur.fetchall()) == {"FINISHED": 1 + 5 + 6}  # parent, 5 step runs, 6 sweep trials
            cur.execute(
                "SELECT count(DISTINCT t.value) FROM tags t JOIN runs r ON t.run_uuid = r.run_uuid JOIN experiments e "
                "ON r.experiment_id = e.experiment_id WHERE t.key = 'slimray.node_id' AND e.name = 'demo'"
            )
            assert cur.fetchone()[0] >= 2  # steps ran on more than one node
        # resubmission: served from the cache through the server
        second = _submit(env, "pipeline=demo")
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        with pg, pg.cursor() as cur:
            cur.execute(
                "SELECT t.value, count(*) FROM tags t JOIN runs r ON t.run_uuid = r.run_uuid JOIN experiments e "
                "ON r.experiment_id = e.experiment_id WHERE t.key = 'slimray.cached' AND e.name = 'demo' "
                "GROUP BY t.value"
            )
            assert dict(cur.fetchall()) == {"false": 11, "true": 11}
        pg.close()
        # the job ends with the pipeline's exit code: 2 for a config error, 1 for a failed step
        bad_config = _submit(env, "pipeline=demo", "pipeline.steps.join.task=toy_fail")
        assert bad_config.returncode == 2, bad_config.stdout[-3000:] + bad_config.stderr[-3000:]
        assert "error: pipeline.steps.join.inputs.xs: task 'toy_fail' has no input 'xs'" in bad_config.stdout
        failing = _submit(env, "pipeline=demo", "+pipeline.steps.boom={task: toy_fail, inputs: {x: source}}")
        assert failing.returncode == 1, failing.stdout[-3000:] + failing.stderr[-3000:]
        assert "this step fails on purpose" in failing.stdout
        pg_uri = cenv["SLIMRAY_POSTGRES_URI"].replace("+psycopg2", "") + "?passfile=" + cenv["PGPASSFILE"]
        _ctrl_c_of_a_submitted_job(env, pg_uri, state)
    finally:
        down = subprocess.run([str(ROOT / "cluster/down.sh")], env=base, capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stderr
    assert not _cluster_processes(state, ray_tmp), _cluster_processes(state, ray_tmp)
    assert not (state / "env").exists() and not list((state / "pids").iterdir())
    assert "stopped postgres" in down.stdout
    purge = subprocess.run(
        [str(ROOT / "cluster/down.sh"), "--purge"], env=base, capture_output=True, text=True, timeout=60
    )
    assert purge.returncode == 0 and not state.exists() and not Path(ray_tmp).exists()
    state.parent.rmdir()
