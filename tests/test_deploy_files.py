"""The Dockerfile, the KubeRay manifests and the AWS autoscaler config, checked offline.

Nothing here builds an image or talks to Kubernetes or AWS: the files are parsed, their
required fields checked, every `ray start` / `mlflow server` flag checked against the installed
Ray and MLflow command definitions, the RayJob's pipeline overrides composed and validated by
slimray itself, and the autoscaler YAML accepted by Ray's own validator.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

from pipelines.config.compose import load_config
from pipelines.run import session

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "cluster" / "k8s"
IMAGE = "slimray:0.1.0"
TEMPLATE = "secrets.yaml.example"  # the Secret's shape, placeholders only: never applied
KUBECTL_EXTENSIONS = (".json", ".yaml", ".yml")  # what `kubectl apply -f DIR` (and -R) reads


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _applied() -> list[Path]:
    """The files ``kubectl apply -R -f cluster/k8s/`` would send: kubectl skips other extensions."""
    return sorted(f for f in K8S.rglob("*") if f.is_file() and f.suffix in KUBECTL_EXTENSIONS)


def _by_kind(kind: str) -> dict:
    found = [d for f in _applied() for d in _docs(f.name) if d["kind"] == kind]
    assert len(found) == 1, (kind, found)
    return found[0]


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _option_names(command) -> set[str]:
    return {o for p in command.params for o in p.opts}


def test_dockerfile_pins_the_stack_and_installs_the_project():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and re.search(r"^FROM python:3\.11-slim@sha256:[0-9a-f]{64}$", text, re.M)
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"TORCH_SPEC \?= (torch==[\d.]+)", makefile).group(1)
    assert f"pip install {torch_pin} " in text  # the same torch as `make install`
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "cluster" in pyproject["project"]["optional-dependencies"]
    assert 'pip install -c constraints.txt ".[cluster]"' in text  # mlflow, onnx, ray ... at the tested pins
    assert re.search(r"^COPY .*\bconstraints\.txt\b.* \./$", text, re.M)
    assert "constraints.txt" not in (ROOT / ".dockerignore").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 1 and "@sha256:" in text
    for package in ("pipelines", "tasks", "conf"):
        assert f"COPY {package} ./{package}" in text
    assert "slimray" in pyproject["project"]["scripts"] and 'CMD ["slimray"' in text
    assert "ENV SLIMRAY_CONF=/app/conf" in text and "RAY_AUTH_MODE=token" in text
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    head = _by_kind("RayCluster")["spec"]["headGroupSpec"]["template"]
    assert exposed == {p["containerPort"] for p in _containers(head)[0]["ports"]}
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".cluster", "mlruns"} <= set(ignored)


def test_every_k8s_file_parses_with_required_fields():
    kinds = {}
    for f in _applied():
        for d in _docs(f.name):
            assert {"apiVersion", "kind", "metadata"} <= set(d), f
            assert d["metadata"].get("name"), f
            kinds[d["kind"]] = d["apiVersion"]
    assert kinds == {
        "NetworkPolicy": "networking.k8s.io/v1",
        "Service": "v1",
        "StatefulSet": "apps/v1",
        "Deployment": "apps/v1",
        "PersistentVolumeClaim": "v1",
        "RayCluster": "ray.io/v1",
        "RayJob": "ray.io/v1",
    }


def test_raycluster_runs_the_project_image_with_token_auth():
    from ray.scripts.scripts import start

    rc = _by_kind("RayCluster")
    spec = rc["spec"]
    assert spec["rayVersion"] == __import__("ray").__version__
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    valid = _option_names(start)
    for g in groups:
        assert all(f"--{k}" in valid for k in g["rayStartParams"]), g["rayStartParams"]
        for c in _containers(g["template"]):
            assert c["image"] == IMAGE
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
                "name": "slimray-secrets",
                "key": "ray-auth-token",
            }
            assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
            assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "mlflow-admin-password"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert Path(env["SLIMRAY_CACHE_KEY_FILE"]["value"]).parent.as_posix() in mounts
    w = spec["workerGroupSpecs"][0]
    assert w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
    (secret,) = _docs(TEMPLATE)
    assert {"ray-auth-token", "postgres-password"} <= set(secret["stringData"])


def test_rayjob_runs_a_valid_slimray_pipeline_on_the_raycluster():
    job = _by_kind("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines"]
    cfg = load_config(argv[3:])  # the overrides compose and validate, as `slimray` would
    session.validate(cfg)
    assert cfg.ray.address == "auto"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == _by_kind("RayCluster")["metadata"]["name"]
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "RAY_AUTH_MODE": "token"}
    submitter = _containers(job["spec"]["submitterPodTemplate"])[0]
    assert submitter["image"] == IMAGE and {e["name"] for e in submitter["env"]} >= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}


def test_mlflow_deployment_uses_postgres_and_valid_server_flags():
    from mlflow.cli import server

    dep, svc = _by_kind("Deployment"), [d for d in _docs("mlflow.yaml") if d["kind"] == "Service"][0]
    c = _containers(dep["spec"]["template"])[0]
    assert c["image"] == IMAGE and c["command"] == ["mlflow", "server"]
    args = dict(a.removeprefix("--").split("=", 1) if "=" in a else (a.removeprefix("--"), "") for a in c["args"])
    valid = _option_names(server)
    assert all(f"--{k}" in valid for k in args), sorted(set(args) - {v.removeprefix("--") for v in valid})
    assert int(args["port"]) == c["ports"][0]["containerPort"] == svc["spec"]["ports"][0]["targetPort"]
    assert svc["spec"]["ports"][0]["port"] == 5000 and args["workers"] == "1"
    pg_svc = [d for d in _docs("postgres.yaml") if d["kind"] == "Service"][0]
    pg = _by_kind("StatefulSet")
    uri = args["backend-store-uri"]
    assert uri.startswith("postgresql+psycopg2://slimray@") and "PASSWORD" not in uri  # no secret in argv
    assert f"@{pg_svc['metadata']['name']}:{pg_svc['spec']['ports'][0]['port']}/mlflow" in uri
    env = {e["name"]: e for e in c["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "postgres-password"
    assert args["app-name"] == "basic-auth" and env["MLFLOW_AUTH_CONFIG_PATH"]["value"].endswith("basic_auth.ini")
    pg_env = {e["name"]: e.get("value") for e in _containers(pg["spec"]["template"])[0]["env"]}
    assert pg_env["POSTGRES_USER"] == "slimray" and pg_env["POSTGRES_DB"] == "mlflow"
    assert "mlflow:5000" in args["allowed-hosts"].split(",")


def test_aws_autoscaler_config_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.scripts.scripts import start

    raw = yaml.safe_load((ROOT / "cluster" / "cloud" / "aws.yaml").read_text())
    validate_config_input = prepare_config(copy.deepcopy(raw))  # fills Ray's AWS defaults, offline
    validate_config(validate_config_input)
    assert raw["provider"]["type"] == "aws" and raw["docker"]["image"] == IMAGE
    assert raw["head_node_type"] in raw["available_node_types"]
    valid = _option_names(start)
    for cmd in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        if "ray start" in cmd:
            flags = [t.split("=")[0] for t in shlex.split(cmd.split("ray start", 1)[1]) if t.startswith("--")]
            assert flags and all(f in valid for f in flags), flags
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["head"]["no_such_field"] = 1
    with pytest.raises(Exception, match="no_such_field"):
        validate_config(prepare_config(broken))


def test_mlflow_admits_only_the_ray_pods():
    policies = {d["metadata"]["name"]: d for d in _docs("mlflow.yaml") if d["kind"] == "NetworkPolicy"}
    ray_labels = {"ray.io/cluster": _by_kind("RayCluster")["metadata"]["name"]}
    mlflow = next(p for p in policies.values() if p["spec"]["podSelector"]["matchLabels"] == {"app": "mlflow"})
    assert mlflow["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = mlflow["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": ray_labels}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
    submitter = _by_kind("RayJob")["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert submitter.items() >= ray_labels.items()
    pg = next(p for p in policies.values() if p["spec"]["podSelector"]["matchLabels"] == {"app": "postgres"})
    assert pg["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app": "mlflow"}}}]


def test_placeholder_secrets_are_refused_and_install_generates_sound_ones(tmp_path):
    import subprocess
    import sys

    check = [sys.executable, str(K8S / "check_secrets.py")]
    refused = subprocess.run([*check, str(K8S / TEMPLATE)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert f"{TEMPLATE}: Secret slimray-secrets: ray-auth-token: placeholder value 'change-me'" in refused.stderr
    weak = tmp_path / "weak.yaml"
    weak.write_text("kind: Secret\nmetadata: {name: s}\nstringData: {token: abc123}\n")
    assert subprocess.run([*check, str(weak)], capture_output=True).returncode == 1
    ini = tmp_path / "ini.yaml"
    ini.write_text(
        "kind: Secret\nmetadata: {name: s}\nstringData:\n  a.ini: |\n    [mlflow]\n    admin_password = changeme\n"
    )
    assert subprocess.run([*check, str(ini)], capture_output=True).returncode == 1
    out = tmp_path / "out"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable}
    done = subprocess.run([str(K8S / "install.sh"), "--dry-run", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    (secret,) = yaml.safe_load_all((out / "secret.yaml").read_text())
    template = next(d for d in _docs(TEMPLATE) if d["kind"] == "Secret")
    assert set(secret["stringData"]) == set(template["stringData"])
    assert subprocess.run([*check, str(out / "secret.yaml")], capture_output=True).returncode == 0
    assert oct((out / "secret.yaml").stat().st_mode & 0o777) == "0o600"
    again = tmp_path / "again"
    subprocess.run([str(K8S / "install.sh"), "--dry-run", str(again)], check=True, capture_output=True, env=env)
    (other,) = yaml.safe_load_all((again / "secret.yaml").read_text())
    assert all(secret["stringData"][k] != other["stringData"][k] for k in secret["stringData"])  # generated
    install = (K8S / "install.sh").read_text()
    assert "check_secrets.py" in install and "secrets.yaml" not in install.split("MANIFESTS=")[1]


def test_kubectl_apply_on_the_folder_applies_no_placeholder_secret():
    """``kubectl apply -f cluster/k8s/`` (with or without -R) reads only .json/.yaml/.yml files:
    none of them may hold a placeholder Secret (check_secrets.py passes every one), and the
    template of placeholders has a name kubectl skips."""
    import subprocess
    import sys

    applied = _applied()
    assert {f.name for f in applied} == {"postgres.yaml", "mlflow.yaml", "raycluster.yaml", "rayjob.yaml"}
    check = subprocess.run(
        [sys.executable, str(K8S / "check_secrets.py"), *map(str, applied)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert (K8S / TEMPLATE).is_file() and (K8S / TEMPLATE).suffix not in KUBECTL_EXTENSIONS


def test_aws_setup_installs_slimray_and_fetches_its_secrets(tmp_path):
    import subprocess
    import sys

    raw = yaml.safe_load((ROOT / "cluster" / "cloud" / "aws.yaml").read_text())
    setup = raw["setup_commands"]
    assert any(
        c.startswith("pip install") and "-c ~/slimray/constraints.txt" in c and "slimray[cluster]" in c for c in setup
    )
    assert raw["file_mounts"] == {"~/slimray": "."} and ".cluster" in raw["rsync_exclude"]
    assert any("cluster/cloud/fetch_secrets.py --secret-id" in c for c in setup)
    for cmd in raw["head_start_ray_commands"][1:] + raw["worker_start_ray_commands"][1:]:
        assert cmd.startswith("source ~/.slimray/env;"), cmd
    assert not any("RAY_AUTH_TOKEN" in o for o in raw["docker"]["run_options"])
    sys_path = str(ROOT / "cluster" / "cloud")
    sys.path.insert(0, sys_path)
    try:
        from fetch_secrets import write_env
    finally:
        sys.path.remove(sys_path)
    values = {
        "ray_auth_token": "t" * 32,
        "mlflow_tracking_uri": "https://mlflow.internal:5000",
        "mlflow_username": "slimray",
        "mlflow_password": "p w'$x",
        "cache_key": "k" * 64,
    }
    env_file = write_env(values, tmp_path / "home")
    script = f"source {env_file}; echo $MLFLOW_TRACKING_URI; echo $MLFLOW_TRACKING_PASSWORD;"
    script += " cat $SLIMRAY_CACHE_KEY_FILE"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout.splitlines()
    assert out == ["https://mlflow.internal:5000", "p w'$x", "k" * 64]
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "home").iterdir()} == {"0o600"}
    with pytest.raises(ValueError, match="secret lacks cache_key"):
        write_env({**values, "cache_key": ""}, tmp_path / "h2")
