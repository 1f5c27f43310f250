"""Fixtures for our provider on the real control plane: CRDs installed, controller running as a
real ``capi-remote run`` process (its log is printed on failure)."""

from __future__ import annotations

import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest

from capi_remote.devenv.controlplane import ControlPlane, free_port
from capi_remote.devenv.processes import ManagedProcess, log_tail
from capi_remote.devenv.provider import install_crds, issue_webhook_certificate
from capi_remote.kube.client import KubeClient


@attrs.frozen
class RunningController:
    process: ManagedProcess
    health_port: int
    metrics_port: int
    webhook_port: int

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.process.log, lines)


@pytest.fixture(scope="session")
def controller(control_plane: ControlPlane) -> Iterator[RunningController]:
    workdir = Path(tempfile.mkdtemp(prefix="capi-remote-controller-"))
    webhook_port, health_port, metrics_port = free_port(), free_port(), free_port()
    cert_dir = issue_webhook_certificate(control_plane, workdir / "certs")
    install_crds(control_plane, webhook_port)
    process = ManagedProcess(
        "capi-remote",
        [
            sys.executable,
            "-m",
            "capi_remote.cli",
            "run",
            f"--kubeconfig={control_plane.kubeconfig}",
            f"--webhook-port={webhook_port}",
            f"--webhook-cert-dir={cert_dir}",
            f"--health-addr=127.0.0.1:{health_port}",
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
            "--log-format=json",
            "--log-level=debug",
        ],
        workdir / "controller.log",
    )
    process.start()
    running = RunningController(process, health_port, metrics_port, webhook_port)
    deadline = time.monotonic() + 60
    while True:
        if process.exit_code() is not None:
            pytest.fail(f"controller exited: {process.describe_failure()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"controller not ready: {process.describe_failure()}")
        time.sleep(0.2)
    try:
        yield running
    finally:
        process.stop()
        print(f"\ncontroller log: {process.log}")


@pytest.fixture
async def kube(control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    client = await KubeClient.from_kubeconfig(str(control_plane.kubeconfig))
    yield client
    await client.close()
