"""The chaos test bed: a control plane (with Cluster API) of its own, controller processes the
tests start, kill -9 and restart themselves, and per-test namespaces and host fleets.

The session's shared control plane and controller are never touched: killing or re-pointing them
would break other tests, and a controller without a watch filter would reconcile our objects too.

Sizes scale with ``CAPI_REMOTE_CHAOS_SCALE`` (default 1; ``make chaos`` uses a larger value).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from capi_remote.kube.client import KubeClient
from capi_remote.resources import MACHINES
from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.net import free_port
from capi_remote_testbed.processes import ManagedProcess, log_tail
from capi_remote_testbed.provider import install_crds, issue_webhook_certificate
from e2e.bed import Bed, bed_factory
from tests.fixtures_hosts import HostsFactory

SCALE = max(1.0, float(os.environ.get("CAPI_REMOTE_CHAOS_SCALE", "1") or "1"))
#: Appears in every bootstrap script the chaos tests create, and must appear nowhere else.
MARKER = f"chaos-marker-{secrets.token_hex(8)}"
LEASE_NAMESPACE = "default"


def scaled(default: int, maximum: int | None = None) -> int:
    value = round(default * SCALE)
    return min(value, maximum) if maximum else value


@attrs.define
class Controller:
    """One ``capi-remote run`` process we own (argv shaped as
    capi_remote_testbed.provider.start_controller)."""

    process: ManagedProcess
    health_port: int
    webhook_port: int
    #: Run as PID 1 of a PID namespace of its own, like a container: every restart then has the
    #: identity ``<hostname>_1`` (a container restarted in the same pod), not a new one.
    pod_like: bool = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def identity(self) -> str:
        """The controller's identity (Lease holder, host lock owner): ``<hostname>_<pid>``."""
        return f"{socket.gethostname()}_{1 if self.pod_like else self.pid}"

    def kill9(self) -> None:
        if self.process.exit_code() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.stop()  # reaps it
        # A pod-like controller dies by PDEATHSIG a moment later: wait until its port is closed.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1)
            except OSError:
                return
            time.sleep(0.05)
        raise AssertionError(f"controller {self.identity} still answers after SIGKILL")

    def alive(self) -> bool:
        return self.process.exit_code() is None


@attrs.define
class Controllers:
    """Starts controller processes on the chaos plane; every log is kept for the secret scan."""

    plane: ControlPlane
    workdir: Path
    running: list[Controller] = attrs.field(factory=list)
    logs: list[Path] = attrs.field(factory=list)
    #: Set by ``chaos_bed``: controllers watch only the test's namespace, so leftovers of earlier
    #: tests (Terminating objects whose hosts are gone) never cost a later test time.
    namespace: str = ""
    webhook_port: int = attrs.field(factory=free_port)
    _count: int = 0

    def start(self, *extra: str, wait_ready: bool = True, pod_like: bool = False) -> Controller:
        """Start ``capi-remote run`` (debug logs); ``pod_like``: see :attr:`Controller.pod_like`,
        whose :meth:`Controller.kill9` then kills the namespace's PID 1 (``--kill-child``)."""
        self._count += 1
        health_port, metrics_port = free_port(), free_port()
        # The CRDs' conversion webhook points at webhook_port (installed once: a CRD update
        # re-creates the API server's storage for the resource under the watches). The first
        # live controller serves it; a second replica gets a port of its own.
        taken = {c.webhook_port for c in self.running if c.alive()}
        webhook_port = self.webhook_port if self.webhook_port not in taken else free_port()
        cert_dir = self.workdir / "certs"
        log = self.workdir / f"controller-{self._count}.log"
        process = ManagedProcess(
            f"capi-remote-{self._count}",
            [
                *(["unshare", "--pid", "--kill-child", "--"] if pod_like else []),
                sys.executable, "-m", "capi_remote.cli", "run",
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--webhook-port={webhook_port}",
                f"--webhook-cert-dir={cert_dir}",
                f"--health-addr=127.0.0.1:{health_port}",
                f"--metrics-bind-address=127.0.0.1:{metrics_port}",
                "--log-format=json",
                "--log-level=debug",
                *([f"--namespace={self.namespace}"] if self.namespace else []),
                *extra,
            ],
            log,
        )  # fmt: skip
        process.start()
        self.logs.append(log)
        controller = Controller(process, health_port, webhook_port, pod_like)
        self.running.append(controller)
        if wait_ready:
            self.wait_ready(controller)
        return controller

    def wait_ready(self, controller: Controller, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not controller.alive():
                raise AssertionError(f"controller exited: {controller.process.describe_failure()}")
            try:
                url = f"http://127.0.0.1:{controller.health_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"controller not ready: {controller.process.describe_failure()}"
                )
            time.sleep(0.2)

    def stop_all(self) -> None:
        for controller in self.running:
            controller.process.stop()
        self.running.clear()

    def tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {log}\n{log_tail(log, lines)}" for log in self.logs[-3:])


@attrs.frozen
class ChaosEnv:
    plane: ControlPlane
    controllers: Controllers


@pytest.fixture(scope="package")
def chaos_env(toolchain: toolchain_module.Toolchain) -> Iterator[ChaosEnv]:
    """A control plane with Cluster API for the chaos tests only (about 10-20 s to start)."""
    plane = ControlPlane(toolchain)
    plane.start()
    workdir = Path(tempfile.mkdtemp(prefix="capi-remote-chaos-"))
    controllers = Controllers(plane, workdir)
    issue_webhook_certificate(plane, workdir / "certs")
    install_crds(plane, controllers.webhook_port)
    try:
        yield ChaosEnv(plane, controllers)
    finally:
        controllers.stop_all()
        keep = bool(os.environ.get("CAPI_REMOTE_KEEP_ENV"))
        if keep:
            print(f"\nchaos logs in {workdir} and {plane.workdir}")
        plane.stop(keep_workdir=keep)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def controllers(chaos_env: ChaosEnv) -> Iterator[Controllers]:
    """The package's controller starter; whatever a test started is stopped after it."""
    yield chaos_env.controllers
    chaos_env.controllers.stop_all()


@pytest.fixture
async def chaos_kube(chaos_env: ChaosEnv) -> AsyncIterator[KubeClient]:
    client = await KubeClient.from_kubeconfig(str(chaos_env.plane.kubeconfig))
    yield client
    await client.close()


ChaosBedFactory = Callable[[int], Awaitable[Bed]]


@pytest.fixture
async def chaos_bed(
    chaos_env: ChaosEnv, chaos_kube: KubeClient, hosts: HostsFactory
) -> AsyncIterator[ChaosBedFactory]:
    """``await chaos_bed(n)`` -> a Bed on the chaos plane: own namespace, n hosts, credentials."""
    plane = chaos_env.plane
    namespace = f"chaos-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", namespace)
    chaos_env.controllers.namespace = namespace
    async with bed_factory(chaos_kube, plane, namespace, lambda n: hosts(n)[0].fleet) as make:
        yield make
    chaos_env.controllers.namespace = ""
    plane.kubectl("delete", "namespace", namespace, "--wait=false")


# -- bootstrap scripts with per-step counters ----------------------------------------------------

COUNT_START = "/var/tmp/chaos-count-start"
COUNT_END = "/var/tmp/chaos-count-end"


def counted(script: str) -> str:
    """Add a counter step first in runcmd and one just before the success sentinel is written,
    plus the marker. Not after it: a host with the sentinel counts as bootstrapped and runs
    nothing more (docs/ssh-runner.md), so a step after it may be skipped after a crash."""
    head, sep, tail = script.partition("runcmd:\n")
    sentinel = "- mkdir -p /run/cluster-api\n"
    assert sep and sentinel in tail, "the script has no runcmd writing the sentinel"
    first = f"- echo x >> {COUNT_START}\n- echo {MARKER} > /var/tmp/chaos-marker\n"
    tail = tail.replace(sentinel, f"- echo x >> {COUNT_END}\n" + sentinel, 1)
    return head + sep + first + tail


def trivial_script() -> str:
    """A bootstrap that registers no Node: enough for claims and step counting."""
    return counted(
        "#cloud-config\nruncmd:\n"
        "- mkdir -p /run/cluster-api\n"
        "- touch /run/cluster-api/bootstrap-success.complete\n"
    )


def counts(host: Any) -> tuple[int, int]:
    def lines(path: str) -> int:
        result = host.exec_inside(["cat", path])
        return len(result.stdout.split()) if result.returncode == 0 else 0

    return lines(COUNT_START), lines(COUNT_END)


async def machine_phases(bed: Bed) -> dict[str, str]:
    return {
        m["metadata"]["name"]: str((m.get("status") or {}).get("phase") or "")
        for m in await bed.list(MACHINES)
    }


async def lease_spec(plane: ControlPlane, name: str = "capi-remote") -> dict[str, Any]:
    try:
        out = await asyncio.to_thread(
            plane.kubectl, "get", "lease", name, "-n", LEASE_NAMESPACE, "-o", "json"
        )
    except Exception:
        return {}
    return dict(json.loads(out).get("spec") or {})


async def lease_holder(plane: ControlPlane, name: str = "capi-remote") -> str:
    return str((await lease_spec(plane, name)).get("holderIdentity") or "")


# -- controller logs (R3, R5) --------------------------------------------------------------------


@attrs.frozen
class LogErrors:
    """The error lines of a controller log, described without their payload."""

    #: JSON lines the controller logged at error level (a failed reconcile...):
    #: ``event (namespace/name, logger)``.
    controller: list[str]
    #: Lines that are not JSON and say ERROR or Traceback: libraries logging through the
    #: standard library (paramiko's ``ERROR:paramiko.transport:...`` on a handshake it gave up).
    foreign: int


def log_errors(log: Path) -> LogErrors:
    controller, foreign = [], 0
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            foreign += "ERROR" in line or "Traceback" in line
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            where = f"{entry.get('namespace', '')}/{entry.get('name', '')}"
            controller.append(f"{entry.get('event')} ({where}, {entry.get('logger', '')})")
    return LogErrors(controller, foreign)
