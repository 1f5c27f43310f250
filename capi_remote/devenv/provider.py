"""Our own CRDs and webhook certificates on the local control plane.

In a real cluster cert-manager issues the webhook certificate and injects its CA into the CRDs'
conversion settings (see kustomize/). Locally the controller runs as a process on loopback, so the
CRDs' conversion webhook points at ``https://127.0.0.1:<port>/convert`` with our dev CA.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from capi_remote.devenv.controlplane import ControlPlane

CRD_DIR = Path(__file__).resolve().parent.parent.parent / "manifests" / "crds"


def issue_webhook_certificate(plane: ControlPlane, directory: Path) -> Path:
    """Write tls.crt/tls.key for a webhook server on loopback, signed by the plane's CA."""
    pair = plane.ca.issue("capi-remote-webhook", hosts=("127.0.0.1", "localhost"), server=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    key = directory / "tls.key"
    key.touch(mode=0o600, exist_ok=True)
    key.write_bytes(pair.key_pem)
    return directory


def provider_crds(plane: ControlPlane, webhook_port: int) -> list[dict[str, Any]]:
    crds = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        webhook = crd["spec"].get("conversion", {}).get("webhook")
        if webhook is not None:
            path_ = webhook["clientConfig"]["service"].get("path", "/convert")
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{webhook_port}{path_}",
                "caBundle": base64.b64encode(plane.ca.cert_pem).decode(),
            }
        crds.append(crd)
    return crds


def install_crds(plane: ControlPlane, webhook_port: int) -> None:
    """Apply (or update) our CRDs and wait until they are established."""
    crds = provider_crds(plane, webhook_port)
    plane.apply(crds)
    names = [crd["metadata"]["name"] for crd in crds]
    plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names]
    )
