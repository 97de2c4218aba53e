"""``slimray submit [overrides]``: run a pipeline as a Ray Job on the cluster named by the
environment (as written by ``cluster/up.sh`` to ``.cluster/env``).

The project directory is shipped as the job's working directory (without the virtualenv,
local MLflow stores and cluster state), so the job runs this checkout's code with the
cluster's Python. The job's driver is ``python -m pipelines ray=cluster <overrides>`` with
``MLFLOW_TRACKING_URI`` (and basic-auth credentials, if set) passed through, so the step
table lands in the job's logs (``ray job logs``) and the runs on the tracking server; the
cache therefore works across submissions. This command follows the logs until the job ends
and exits with the pipeline's exit code (Ctrl-C stops the job and exits 130).

Each node unpacks the package into its own temp dir; nodes on one machine need one each
(``cluster/up.sh`` gives them that): Ray's runtime-env agent of a node that has not seen a package
unpacks it over any directory of that name, and in a shared temp dir that was the directory a
running job's driver worked in (docs/reliability.md, "Submitted jobs").

Environment: ``RAY_API_SERVER_ADDRESS`` (the dashboard's ``http://host:port``; else an
``http`` ``RAY_ADDRESS``), ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``, ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

EXCLUDES = [
    ".venv",
    "venv",
    ".git",
    ".cluster",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "mlflow.db-*",
    "outputs",
    ".pytest_cache",
    "__pycache__",
    "*.pyc",
    ".hypothesis",
    "*.egg-info",
]
PASSED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "RAY_AUTH_MODE",
    "SLIMRAY_TASKS",  # your own tasks' modules (they ship with the working directory)
)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(RuntimeError):
    """A one-line reason the job could not be submitted."""


def api_address() -> str:
    address = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
    if not address.startswith(("http://", "https://")):
        raise SubmitError(
            "set RAY_API_SERVER_ADDRESS to the Ray dashboard (http://host:8265), "
            "e.g. `source .cluster/env` after cluster/up.sh"
        )
    return address


def job_spec(overrides: list[str], project: Path) -> dict:
    """The submission: entrypoint, working dir with excludes, the environment the driver needs."""
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        raise SubmitError(
            "set MLFLOW_TRACKING_URI to the tracking server (a Ray Job runs on the "
            "cluster: a local sqlite/file store would stay there)"
        )
    env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    # `ray job stop` (what Ctrl-C here does) signals the job's driver with these: SIGINT is the
    # driver's own Ctrl-C (pipelines.run.lifecycle: its runs end KILLED, exit 130), and the wait
    # covers that clean-up before Ray's SIGKILL (its defaults, SIGTERM and 3 s, left runs RUNNING)
    env.update(RAY_JOB_STOP_SIGNAL="SIGINT", RAY_JOB_STOP_WAIT_TIME_S="15")
    entry = shlex.join(["python", "-m", "pipelines", "ray=cluster", *overrides])
    return {
        "entrypoint": entry,
        "runtime_env": {"working_dir": str(project), "excludes": EXCLUDES, "env_vars": env},
        "submission_id": f"slimray-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
    }


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def exit_code(info) -> int:
    """The pipeline's own exit code when Ray recorded it; else 0/1 from the job status."""
    if info.status == "SUCCEEDED":
        return 0
    if info.status == "STOPPED":
        return 130
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


def main(argv: list[str]) -> int:
    from pipelines.store.preflight import PreflightError, check_tracking

    bad = [a for a in argv if a.startswith("--")]
    if bad:
        print(f"error: unknown option {bad[0]} (usage: slimray submit [KEY=VALUE ...])", file=sys.stderr)
        return 2
    project = Path(__file__).resolve().parents[2]  # the checkout holding pipelines/ and tasks/
    try:
        address = api_address()
        spec = job_spec(argv, project)
        check_tracking(os.environ["MLFLOW_TRACKING_URI"])  # fail here, not minutes later in the job
    except (SubmitError, PreflightError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(**spec)
    except Exception as e:  # connection refused, 401 without the token, ...
        print(
            f"error: cannot submit to {address}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            file=sys.stderr,
        )
        return 2
    try:
        where = (client.get_job_info(job_id).runtime_env or {}).get("working_dir", "")  # the package's URI
        print(f"Submitted Ray job {job_id} to {address} (working dir: {where})", file=sys.stderr)
        print(f"logs: ray job logs {job_id}", file=sys.stderr)
        asyncio.run(_follow(client, job_id))
        info = client.get_job_info(job_id)
        while info.status not in TERMINAL:  # the log stream can end a moment before the status
            time.sleep(0.5)
            info = client.get_job_info(job_id)
    except KeyboardInterrupt:
        client.stop_job(job_id)
        print(f"interrupted: Ray job {job_id} stopped", file=sys.stderr)
        return 130
    code = exit_code(info)
    print(f"Ray job {job_id} {info.status} (exit code {code})", file=sys.stderr)
    return code
