"""Fetch a Ray node's secrets from AWS Secrets Manager into owner-only files (``ray up`` setup).

    python fetch_secrets.py --secret-id slimray/cluster --region eu-west-1 [--home ~/.slimray]

The secret is one JSON ``SecretString``: ``ray_auth_token``, ``mlflow_tracking_uri``,
``mlflow_username``, ``mlflow_password`` and ``cache_key`` (the key that signs cached step
outputs). Written under ``--home`` (mode 0700): ``cache.key`` and ``env`` (both 0600), the
latter as ``export`` lines (RAY_AUTH_MODE/RAY_AUTH_TOKEN, MLFLOW_TRACKING_URI/USERNAME/PASSWORD,
SLIMRAY_CACHE_KEY_FILE) that the start commands source. No secret is ever a command-line
argument. The node's instance profile needs ``secretsmanager:GetSecretValue`` on the secret.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

REQUIRED = ("ray_auth_token", "mlflow_tracking_uri", "mlflow_username", "mlflow_password", "cache_key")


def write_env(values: dict, home: Path) -> Path:
    """Write ``home/env`` and ``home/cache.key`` (0600, in a 0700 directory); returns the env file."""
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise ValueError(f"secret lacks {', '.join(missing)}")
    os.umask(0o077)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    (home / "cache.key").write_text(values["cache_key"].strip() + "\n")
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": values["ray_auth_token"],
        "MLFLOW_TRACKING_URI": values["mlflow_tracking_uri"],
        "MLFLOW_TRACKING_USERNAME": values["mlflow_username"],
        "MLFLOW_TRACKING_PASSWORD": values["mlflow_password"],
        "SLIMRAY_CACHE_KEY_FILE": str(home / "cache.key"),
    }
    path = home / "env"
    path.write_text("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items()))
    for f in (path, home / "cache.key"):
        os.chmod(f, 0o600)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret-id", default="slimray/cluster")
    parser.add_argument("--region", required=True)
    parser.add_argument("--home", default=str(Path.home() / ".slimray"))
    args = parser.parse_args(argv)
    import boto3  # installed by the setup commands; not a slimray dependency

    client = boto3.client("secretsmanager", region_name=args.region)
    try:
        values = json.loads(client.get_secret_value(SecretId=args.secret_id)["SecretString"])
        path = write_env(values, Path(args.home).expanduser())
    except (ValueError, KeyError) as e:
        print(f"error: secret {args.secret_id}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
