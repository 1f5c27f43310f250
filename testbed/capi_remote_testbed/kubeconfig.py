"""Admin kubeconfigs of the API servers the test bed starts (its control plane, workload servers).

Invariant: the file is created mode 0600 before the client key is written into it.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def write_kubeconfig(
    path: Path, *, name: str, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> None:
    """One cluster, one user ``admin`` (a client certificate), one context, all called ``name``."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "admin"}}],
        "current-context": name,
    }
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
