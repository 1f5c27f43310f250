"""What a provider deployed as a Pod needs around it on the test bed: the ``kubernetes`` Service
leading to the API server, and cert-manager.

Why it looks the way it does:

- The API server listens on the machine's loopback and its endpoint reconciler is off, so the
  ``kubernetes`` Service (10.0.0.1:443, what in-cluster clients dial) has no endpoint. We give it
  one: the node's forwarder to the API server on the machine's end of the node's link
  (:attr:`Node.apiserver_endpoint`), as an EndpointSlice that kube-proxy programs like any other.
  The API server's certificate names 10.0.0.1 and ``kubernetes.default.svc``.
- cert-manager runs as two processes of the machine with the admin kubeconfig, not as Pods: it is
  the user's prerequisite, not what the deploy e2e checks, and what the e2e needs from it (issue
  the serving certificate, inject its CA into the CRDs) does not depend on where it runs. Its
  admission webhook is neither built nor registered (toolchain/certmanager/main.go says why).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs
import yaml

from capi_remote_testbed.controlplane import ControlPlane, Settings
from capi_remote_testbed.node import Node, start_node
from capi_remote_testbed.processes import ManagedProcess
from capi_remote_testbed.toolchain import Toolchain, ensure_cert_manager

ENDPOINT_SLICE = "kubernetes-testbed-node"


class InClusterError(RuntimeError):
    """cert-manager failed to start; the message carries its log tail."""


def publish_apiserver(plane: ControlPlane, node: Node) -> None:
    """Make the ``kubernetes`` Service lead Pods to the API server through ``node``'s forwarder."""
    host, port = node.apiserver_endpoint
    plane.apply(
        [
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": ENDPOINT_SLICE,
                    "namespace": "default",
                    "labels": {
                        "kubernetes.io/service-name": "kubernetes",
                        "endpointslice.kubernetes.io/managed-by": "capi-remote-testbed",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }
        ]
    )


@attrs.define
class CertManagerProcesses:
    """cert-manager's CRDs on ``plane`` and its controller and cainjector against it."""

    plane: ControlPlane
    workdir: Path
    _processes: list[ManagedProcess] = attrs.field(factory=list, init=False)

    def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        built = ensure_cert_manager(log=progress)
        progress("cert-manager CRDs")
        self.plane.kubectl("apply", "--server-side", "-f", str(built.crds))
        names = [
            f"crd/{document['metadata']['name']}"
            for path in sorted(built.crds.glob("*.yaml"))
            for document in yaml.safe_load_all(path.read_text())
            if document
        ]
        self.plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        for component in ("controller", "cainjector"):
            process = ManagedProcess(
                f"cert-manager-{component}",
                [str(built.binary), component, "--kubeconfig", str(self.plane.kubeconfig)],
                self.workdir / "logs" / f"cert-manager-{component}.log",
            )
            process.start()
            self._processes.append(process)
        time.sleep(1)  # a wrong flag or kubeconfig makes them exit at once
        for process in self._processes:
            if process.exit_code() is not None:
                raise InClusterError(process.describe_failure())

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()


@attrs.frozen
class ManagementCluster:
    plane: ControlPlane
    node: Node


@contextlib.contextmanager
def management_cluster(
    toolchain: Toolchain, images: Sequence[Path] = (), *, cluster_api: bool = True
) -> Iterator[ManagementCluster]:
    """A fresh management cluster that runs Pods: its own control plane (Services, ServiceAccount
    tokens; Cluster API core as a process if ``cluster_api``, else nothing of Cluster API, for
    ``clusterctl init``), a node whose containerd holds ``images`` (image archives), the
    ``kubernetes`` Service published to Pods, cert-manager running. ``CAPI_REMOTE_KEEP_ENV`` keeps
    its logs."""
    plane = ControlPlane(toolchain, Settings(in_cluster_pods=True, cluster_api=cluster_api))
    plane.start()
    try:
        node = start_node(plane)
        cert_manager = CertManagerProcesses(plane, plane.workdir)
        try:
            publish_apiserver(plane, node)
            cert_manager.start()
            for archive in images:
                node.import_images(archive)
            yield ManagementCluster(plane, node)
        finally:
            cert_manager.stop()
            node.stop()
    finally:
        plane.stop(keep_workdir=bool(os.environ.get("CAPI_REMOTE_KEEP_ENV")))
