"""Our own CRDs and webhook certificates on the local control plane.

In a real cluster cert-manager issues the webhook certificate and injects its CA into the CRDs'
conversion settings (see kustomize/). Locally the controller runs as a process on loopback, so the
CRDs' conversion webhook points at ``https://127.0.0.1:<port>/convert`` with our dev CA.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import yaml

from capi_remote_testbed.capiconfig import client_config
from capi_remote_testbed.controlplane import ControlPlane, ControlPlaneError
from capi_remote_testbed.net import free_port
from capi_remote_testbed.processes import ManagedProcess, log_tail

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
            webhook["clientConfig"] = client_config(plane.ca.cert_pem, webhook_port, path_)
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


@attrs.frozen
class ControllerProcess:
    """A running ``capi-remote run`` against a local control plane."""

    process: ManagedProcess
    health_port: int
    metrics_port: int
    webhook_port: int

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.process.log, lines)


def start_controller(
    plane: ControlPlane,
    workdir: Path,
    *,
    log_format: str = "json",
    log_level: str = "info",
    ready_timeout: float = 60.0,
) -> ControllerProcess:
    """Install our CRDs, then run the controller as a real process until its /readyz says so."""
    webhook_port, health_port, metrics_port = free_port(), free_port(), free_port()
    cert_dir = issue_webhook_certificate(plane, workdir / "certs")
    install_crds(plane, webhook_port)
    process = ManagedProcess(
        "capi-remote",
        [
            sys.executable, "-m", "capi_remote.cli", "run",
            f"--kubeconfig={plane.kubeconfig}",
            f"--webhook-port={webhook_port}",
            f"--webhook-cert-dir={cert_dir}",
            f"--health-addr=127.0.0.1:{health_port}",
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
            f"--log-format={log_format}",
            f"--log-level={log_level}",
        ],
        workdir / "controller.log",
    )  # fmt: skip
    process.start()
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.exit_code() is not None:
            raise ControlPlaneError(f"the controller exited: {process.describe_failure()}")
        try:
            url = f"http://127.0.0.1:{health_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return ControllerProcess(process, health_port, metrics_port, webhook_port)
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.stop()
            raise ControlPlaneError(f"controller not ready: {process.describe_failure()}")
        time.sleep(0.2)
