"""Refuse Kubernetes manifests whose Secrets hold placeholder or weak values.

    python cluster/k8s/check_secrets.py FILE.yaml ...

Exit 0 when every ``kind: Secret`` value (``stringData`` or base64 ``data``) is at least 16
characters and no placeholder (``change-me``, ``changeme``, ``password``, ``secret``, ``xxx``
...) appears in it; else exit 1 with one line naming the file, the secret and the key.
``cluster/k8s/install.sh`` runs it on the manifests it generated before applying anything.
"""

from __future__ import annotations

import base64
import binascii
import sys
from pathlib import Path

import yaml

PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "password", "secret", "xxx", "todo", "example")
MIN_LENGTH = 16


def _values(doc: dict):
    for key, value in (doc.get("stringData") or {}).items():
        yield key, str(value)
    for key, value in (doc.get("data") or {}).items():
        try:
            yield key, base64.b64decode(str(value)).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            yield key, ""


def _placeholder(value: str) -> str | None:
    """The placeholder in ``value``: a line (or an ini line's value) that is one, or holds one."""
    for line in value.splitlines() or [""]:
        token = line.split("=", 1)[1] if "=" in line else line
        token = token.strip().lower()
        if token in PLACEHOLDERS or any(p in token for p in PLACEHOLDERS[:4]):
            return token
    return None


def problems(path: Path) -> list[str]:
    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict) or doc.get("kind") != "Secret":
            continue
        name = (doc.get("metadata") or {}).get("name", "?")
        for key, value in _values(doc):
            bad = _placeholder(value)
            if bad is not None:
                found.append(f"{path}: Secret {name}: {key}: placeholder value '{bad}' (run cluster/k8s/install.sh)")
            elif "\n" not in value.strip() and len(value.strip()) < MIN_LENGTH:
                found.append(f"{path}: Secret {name}: {key}: {len(value.strip())} characters, want >= {MIN_LENGTH}")
    return found


def main(argv: list[str]) -> int:
    for arg in argv:
        found = problems(Path(arg))
        if found:
            print(f"error: {found[0]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
