"""Checks that run before any Ray work: is the tracking store there at all?

MLflow's HTTP client retries a dead server with back-off for minutes (a wrong URI took 262 s
and a 110-line traceback to fail). Here one short request decides, so the user gets one line
within seconds and nothing is started:

- ``http(s)://``: ``GET /api/2.0/mlflow/experiments/search`` with a short timeout (sent with
  ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN`` when set, as MLflow's
  own client would). Any answer but 2xx is an error: 401/403 mean the credentials are missing
  or wrong; 5xx means the server is up but its backend store (e.g. PostgreSQL) is not.
- ``sqlite:///path``: the directory must exist and be writable.
- ``file:`` / plain paths: the same for the store directory.
- ``postgresql://`` and other database URIs used directly: a TCP connection to host:port.
Other schemes (``databricks``, plugins) are left to MLflow.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

TIMEOUT_S = 5.0


class PreflightError(RuntimeError):
    """The tracking store cannot be used; the message is one line naming the URI."""


def _auth_header() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _check_http(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url, headers=_auth_header())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise PreflightError(
                f"MLflow server {uri} refused the request (HTTP {e.code}): set "
                f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        if e.code >= 500:
            raise PreflightError(
                f"MLflow server {uri} answered HTTP {e.code} ({e.reason}); is its backend store up?"
            ) from None
        raise PreflightError(
            f"{uri} is not an MLflow tracking server (HTTP {e.code} {e.reason} for its "
            f"REST API); check MLFLOW_TRACKING_URI / tracking.uri"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        reason = getattr(reason, "strerror", None) or reason
        raise PreflightError(
            f"MLflow server {uri} is unreachable ({reason}); start it or fix MLFLOW_TRACKING_URI / tracking.uri"
        ) from None
    except ValueError:
        raise PreflightError(f"{uri} does not answer like an MLflow server (no JSON from the REST API)") from None


def _check_dir(uri: str, path: Path, what: str) -> None:
    """The directory that will hold the store must exist and be writable (MLflow creates the
    database file or the store folder itself)."""
    directory = path if what == "store directory" and path.is_dir() else path.parent
    if not directory.is_dir():
        raise PreflightError(f"tracking URI {uri}: {what} {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PreflightError(f"tracking URI {uri}: {what} {directory} is not writable")


def _check_tcp(uri: str, host: str, port: int, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise PreflightError(
            f"tracking database {host}:{port} ({urlparse(uri).scheme}) is unreachable ({e.strerror or e})"
        ) from None


DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_tracking(uri: str, timeout: float = TIMEOUT_S) -> None:
    """Raise ``PreflightError`` (one line) if ``uri`` cannot take runs right now."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
    elif scheme == "sqlite":
        path = unquote(parsed.path)[1:]  # SQLAlchemy: sqlite:///rel.db, sqlite:////abs/path.db
        if path in ("", ":memory:"):
            return
        _check_dir(uri, Path(path), "database directory")
    elif scheme == "file" or (scheme == "" and uri):
        _check_dir(uri, Path(unquote(parsed.path) if scheme else uri), "store directory")
    elif scheme in DB_PORTS and parsed.hostname:
        _check_tcp(uri, parsed.hostname, parsed.port or DB_PORTS[scheme], timeout)
