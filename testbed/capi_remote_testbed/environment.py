"""The embedded local environment behind ``capi-remote dev up`` and ``make run``.

Control plane (etcd, kube-apiserver, kube-controller-manager, Cluster API core), a fleet of
namespaced sshd hosts, our CRDs, the controller as a real ``capi-remote run`` process, and a
sample Cluster. By default a real one (:mod:`capi_remote_testbed.realcluster`): the hosts are
prepared as nodes, the kubeadm bootstrap and control-plane providers run, and the shipped
ClusterClass makes a KubeadmControlPlane on the first host and a MachineDeployment on the others.
With ``stand_in`` the quick flow of the infrastructure contract only: a Cluster with one
RemoteMachine on a host of its own and a MachineDeployment drawing its machines from a pool, whose
bootstrap script registers Nodes in the management API server (no kubelet). A state file lets
``dev status`` and ``dev down`` find it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from capi_remote_testbed import budget, kubeadm_providers, samples, toolchain
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.hosts import HostFleet
from capi_remote_testbed.kubeadm_providers import RunningProviders
from capi_remote_testbed.processes import ManagedProcess
from capi_remote_testbed.provider import ControllerProcess, start_controller
from capi_remote_testbed.realcluster import RealCluster
from capi_remote_testbed.tcpproxy import TcpProxy

NAMESPACE = "demo"
CLUSTER = "demo"
POOL = "workers"
STATE_FILE = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "capi-remote-dev.json"


class EnvironmentError_(RuntimeError):
    """The environment could not come up; the message says which part and why."""


@attrs.frozen
class Settings:
    #: The first host runs the control plane (stand-in: a standalone machine), the rest form the
    #: worker pool; the default leaves one spare for scaling up.
    hosts: int = 4
    workers: int = 2  # MachineDeployment replicas drawn from the pool
    stand_in: bool = False  # the quick flow without kubelets (infrastructure contract only)
    controller_log_level: str = "info"
    #: None: no state file (a test's environment, invisible to ``dev status`` and ``dev down``).
    state_file: Path | None = STATE_FILE


@attrs.define
class LocalEnvironment:
    settings: Settings = Settings()
    plane: ControlPlane | None = None
    fleet: HostFleet | None = None
    controller: ControllerProcess | None = None
    providers: RunningProviders | None = None
    #: The real cluster (None with ``stand_in``).
    real: RealCluster | None = None
    _proxy: TcpProxy | None = None

    def start(self, progress: Callable[[str], None]) -> None:
        if self.settings.hosts < 2:
            raise EnvironmentError_("the environment needs at least 2 hosts")
        try:
            progress("building or finding the control plane binaries")
            tools = toolchain.ensure(log=progress)
            self.plane = ControlPlane(tools)
            self.plane.start(progress=lambda component: progress(f"starting {component}"))
            if self.settings.stand_in:
                self._start_stand_in(progress)
            else:
                self._start_real(progress)
            self._write_state()
        except BaseException:
            self.stop()
            raise

    def _start_stand_in(self, progress: Callable[[str], None]) -> None:
        assert self.plane is not None
        progress(f"starting {self.settings.hosts} namespaced sshd hosts")
        self.fleet = HostFleet(self.settings.hosts).start()
        self._proxy = TcpProxy(
            ("127.0.0.1", self.plane.apiserver_port), listen_host=self.fleet.gateway
        )
        self._proxy.start()
        progress("installing capi-remote CRDs and starting the controller")
        self._start_controller()
        progress("creating the sample Cluster, RemoteMachine and MachineDeployment")
        self.plane.apply(self.sample_objects())

    def _start_real(self, progress: Callable[[str], None]) -> None:
        assert self.plane is not None
        progress(f"starting {self.settings.hosts} namespaced hosts prepared as Kubernetes nodes")
        self.fleet = HostFleet(self.settings.hosts, nodes=True, ready_timeout=120).start()
        progress("starting the kubeadm bootstrap and control-plane providers")
        self.providers = kubeadm_providers.start(self.plane, kubeadm_providers.ensure(log=progress))
        progress("installing capi-remote CRDs and starting the controller")
        self._start_controller()
        self.plane.apply(self._namespace_and_credentials())
        self.real = RealCluster(self.plane, self.fleet, NAMESPACE, CLUSTER, self.settings.workers)
        self.real.apply(progress)

    def _namespace_and_credentials(self) -> list[dict[str, Any]]:
        assert self.fleet is not None
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            *samples.credentials(
                NAMESPACE, self.fleet.client_key.private_openssh, self.fleet.known_hosts()
            ),
        ]

    def _start_controller(self) -> None:
        assert self.plane is not None
        self.controller = start_controller(
            self.plane,
            self.plane.workdir / "controller",
            log_format="console",
            log_level=self.settings.controller_log_level,
        )

    def sample_objects(self) -> list[dict[str, Any]]:
        """The stand-in flow's objects."""
        assert self.plane is not None and self.fleet is not None and self._proxy is not None
        hosts = self.fleet.hosts
        script = samples.node_registration_script(
            self._proxy.port, self.fleet.gateway, self.plane.workdir / "pki"
        )
        objects: list[dict[str, Any]] = [
            *self._namespace_and_credentials(),
            *samples.cluster(CLUSTER, NAMESPACE, self.plane.kubeconfig.read_bytes()),
            samples.bootstrap_secret("demo-bootstrap", NAMESPACE, script),
            samples.remote_machine(
                "demo-cp-0", NAMESPACE, samples.host_spec(hosts[0].address, hosts[0].port)
            ),
            samples.machine("demo-cp-0", NAMESPACE, CLUSTER, "demo-bootstrap"),
            *[
                samples.pooled(host.name, NAMESPACE, POOL, samples.host_spec(host.address))
                for host in hosts[1:]
            ],
            samples.machine_template("demo-workers", NAMESPACE, POOL),
            samples.machine_deployment(
                "demo-workers", NAMESPACE, CLUSTER, "demo-bootstrap", "demo-workers",
                self.settings.workers,
            ),
        ]  # fmt: skip
        return objects

    def management_processes(self) -> list[ManagedProcess]:
        """Every process of the management side: control plane, providers, our controller."""
        assert self.plane is not None and self.controller is not None
        return [
            *self.plane.processes,
            *(self.providers.processes if self.providers else []),
            self.controller.process,
        ]

    def usage(self) -> tuple[list[budget.Usage], list[budget.Usage]]:
        """(node hosts, management processes): peak memory and CPU so far."""
        assert self.fleet is not None
        hosts = [budget.host_usage(h) for h in self.fleet.hosts] if self.fleet.nodes else []
        processes = [budget.process_usage(p) for p in self.management_processes()]
        return hosts, [u for u in processes if u is not None]

    def _write_state(self) -> None:
        assert self.plane is not None and self.fleet is not None and self.controller is not None
        if self.settings.state_file is None:
            return
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(self.plane.kubeconfig),
            "namespace": NAMESPACE,
            "controller_log": str(self.controller.process.log),
            "client_key": str(self.fleet.client_key_path),
            "hosts": [{"name": h.name, "address": h.address} for h in self.fleet.hosts],
        }
        if self.real is not None:
            state["workload_kubeconfig"] = str(self.real.kubeconfig)
        self.settings.state_file.write_text(json.dumps(state, indent=2))

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.process.stop()
        if self.providers is not None:
            self.providers.stop()
        if self._proxy is not None:
            self._proxy.close()
        if self.fleet is not None:
            self.fleet.close()
        if self.plane is not None:
            self.plane.stop()
        if self.settings.state_file is not None:
            self.settings.state_file.unlink(missing_ok=True)


def read_state() -> dict[str, Any] | None:
    """The running environment's state, or None if none is running."""
    try:
        state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        STATE_FILE.unlink(missing_ok=True)
        return None
    return state
