"""Admin kubeconfigs of the API servers the test bed starts (its control plane, workload servers).

Invariant: the file is created mode 0600 before the client key is written into it.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from capi_remote_testbed.pki import KeyPair


def write_kubeconfig(path: Path, name: str, server: str, ca_pem: bytes, admin: KeyPair) -> None:
    """One cluster, one user ``admin`` (``admin``'s client certificate), one context, all called
    ``name``."""

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
                "user": {
                    "client-certificate-data": b64(admin.cert_pem),
                    "client-key-data": b64(admin.key_pem),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "admin"}}],
        "current-context": name,
    }
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
