"""The shipped kustomize overlay deployed for real, the way docs/deployment.md tells a user: the
image from `make image` imported into the node's containerd, an overlay of ``kustomize/default``
that sets the image (kustomize ``images:``) and two replicas, ``kubectl apply --server-side -k``,
cert-manager issuing the webhook certificate and injecting its CA into the CRDs. Then the
controller, as a Pod on its ServiceAccount's RBAC, converts v1beta1 <-> v1beta2 through its
Service, provisions hosts, and a second replica takes over when the leader's Pod is deleted.

The module brings up its own control plane (Services resolved to endpoints, ServiceAccount
tokens: ``Settings.in_cluster_pods``), node and cert-manager once; see docs/test-bed-hosts.md for
what the test bed adds around a Pod and why. Slow: the image build and ~1 min of start-up.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from capi_remote.kube.client import KubeClient
from capi_remote.resources import REMOTE_MACHINES
from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.incluster import management_cluster
from capi_remote_testbed.node import Node
from e2e.bed import Bed, bed_factory
from e2e.conftest import CONTROLLER_IMAGE_NAME as IMAGE_NAME
from e2e.conftest import CONTROLLER_IMAGE_TAG as IMAGE_TAG
from tests.fixtures_hosts import HostsFactory
from tests.support.namespaces import scratch_namespace
from tests.support.waits import eventually
from tests.unit.test_api_models import FIXTURES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "capi-remote-system"
DEPLOYMENT = "capi-remote-controller-manager"
SHIPPED_IMAGE = "ghcr.io/capi-remote/capi-remote"
CONVERTED_CRDS = ("remotemachines", "pooledremotemachines", "remoteclusters")
GROUP = "infrastructure.cluster.x-k8s.io"


@attrs.frozen
class Deployment:
    plane: ControlPlane
    node: Node

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        return self.plane.kubectl(*args, input_text=input_text)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def pods(self) -> list[dict[str, Any]]:
        selector = "app.kubernetes.io/name=capi-remote"
        items: list[dict[str, Any]] = self.get("pods", "-n", SYSTEM, "-l", selector)["items"]
        return items

    def available(self) -> bool:
        status = self.get("deployment", "-n", SYSTEM, DEPLOYMENT)["status"]
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return conditions.get("Available") == "True" and status.get("readyReplicas") == 2

    def leader(self) -> str:
        """The Pod that holds the controller's Lease (its identity is ``<hostname>_<pid>``)."""
        holders = [
            str(lease["spec"].get("holderIdentity") or "")
            for lease in self.get("leases", "-n", SYSTEM)["items"]
        ]
        return next((h.rsplit("_", 1)[0] for h in holders if h), "")

    def diagnose(self) -> str:
        logs = [
            self.kubectl("logs", "-n", SYSTEM, pod["metadata"]["name"], "--tail=40")
            for pod in self.pods()
            if pod["status"].get("phase") == "Running"
        ]
        return self.kubectl("describe", "pods", "-n", SYSTEM) + "\n".join(logs)


def user_overlay(directory: Path) -> Path:
    """The overlay docs/deployment.md has a user write: the release's default plus their image
    and replica count."""
    directory.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(REPO / "kustomize" / "default", directory)],
        "images": [{"name": SHIPPED_IMAGE, "newName": IMAGE_NAME, "newTag": IMAGE_TAG}],
        "replicas": [{"name": DEPLOYMENT, "count": 2}],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def deployment(
    toolchain: toolchain_module.Toolchain,
    tmp_path_factory: pytest.TempPathFactory,
    controller_image: Path,
) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("deploy")
    with management_cluster(toolchain, [controller_image]) as cluster:
        deployed = Deployment(cluster.plane, cluster.node)
        overlay = user_overlay(work / "overlay")
        deployed.kubectl("apply", "--server-side", "-k", str(overlay))
        eventually(
            "the controller Deployment Available with 2 ready replicas",
            deployed.available,
            240,
            deployed.diagnose,
        )
        yield deployed


@pytest.fixture(scope="module")
def control_plane(deployment: Deployment) -> ControlPlane:
    """This module's management cluster, for the shared fixtures (``kube``)."""
    return deployment.plane


@pytest.fixture
def namespace(deployment: Deployment, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-deploy-{request.node.name[5:15].replace('_', '-').strip('-')}"
    with scratch_namespace(deployment.kubectl, name):
        yield name


def _secret_ca(deployment: Deployment) -> str:
    secret = deployment.get("secret", "-n", SYSTEM, "capi-remote-webhook-service-cert")
    return str(secret["data"].get("ca.crt") or "")


def test_cert_manager_injects_the_ca_and_the_pod_converts_through_its_service(
    deployment: Deployment, namespace: str
) -> None:
    ca = eventually(
        "the serving certificate's Secret", lambda: _secret_ca(deployment), 60, deployment.diagnose
    )
    for plural in CONVERTED_CRDS:
        crd = f"{plural}.{GROUP}"

        def injected(crd: str = crd) -> bool:
            conversion = deployment.get("crd", crd)["spec"]["conversion"]
            return bool(conversion["webhook"]["clientConfig"].get("caBundle") == ca)

        eventually(f"cainjector to write the CA into {crd}", injected, 60, deployment.diagnose)
        service = deployment.get("crd", crd)["spec"]["conversion"]["webhook"]["clientConfig"]
        assert service["service"] == {
            "name": "capi-remote-webhook-service",
            "namespace": SYSTEM,
            "path": "/convert",
            "port": 443,
        }

    fixture = FIXTURES[0]  # RemoteMachine
    for written, read in (("v1beta1", "v1beta2"), ("v1beta2", "v1beta1")):
        source = fixture.load(written)
        name = f"conv-{written}"
        source["metadata"] = {"name": name, "namespace": namespace}
        source.pop("status", None)
        deployment.kubectl("create", "-f", "-", input_text=json.dumps(source))
        served = deployment.get(f"remotemachines.{read}.{GROUP}", "-n", namespace, name)
        assert served["apiVersion"] == f"{GROUP}/{read}"
        assert served["spec"] == fixture.load(read)["spec"], deployment.diagnose()


async def _provisioned(bed: Bed, name: str, deployment: Deployment, within: float) -> None:
    async def check() -> bool:
        rm = await bed.get(REMOTE_MACHINES, name) or {}
        return bool(((rm.get("status") or {}).get("initialization") or {}).get("provisioned"))

    await bed.wait_for(
        f"RemoteMachine {name} provisioned by the controller's Pod",
        check,
        within,
        diagnose=lambda: bed.describe("remotemachine", name) + deployment.diagnose(),
    )


async def test_the_pod_provisions_hosts_and_the_other_replica_takes_over(
    deployment: Deployment, kube: KubeClient, namespace: str, hosts: HostsFactory
) -> None:
    async with bed_factory(kube, deployment.plane, namespace, lambda n: hosts(n)[0].fleet) as make:
        bed = await make(2)
        first, second = bed.fleet.hosts
        await bed.cluster("pod")
        data = await bed.bootstrap_secret("pod-bootstrap")
        await bed.remote_machine("pod-0", bed.host_spec(first))
        await bed.machine("pod-0", "pod", data)
        await _provisioned(bed, "pod-0", deployment, 180)

        leader = deployment.leader()
        pods = {pod["metadata"]["name"] for pod in deployment.pods()}
        assert leader in pods, (leader, pods)
        (survivor,) = pods - {leader}
        deployment.kubectl("delete", "pod", "-n", SYSTEM, leader, "--wait=false")
        # The next machine appears only once the survivor leads: it is the one that provisions it.
        eventually(
            f"{survivor} to take the Lease",
            lambda: deployment.leader() == survivor,
            90,
            deployment.diagnose,
        )
        await bed.remote_machine("pod-1", bed.host_spec(second))
        await bed.machine("pod-1", "pod", data)
        await _provisioned(bed, "pod-1", deployment, 240)
        assert deployment.leader() == survivor
        for host in (first, second):  # each ran its bootstrap, once
            done = host.exec_inside(["test", "-f", "/run/cluster-api/bootstrap-success.complete"])
            assert done.returncode == 0

    # The survivor ran on the Pod network (not hostNetwork), never restarted (probes, memory
    # limit) and was never refused a request (the shipped RBAC has every verb a Pod needs).
    (pod,) = [p for p in deployment.pods() if p["metadata"]["name"] == survivor]
    assert deployment.node.network is not None
    assert ipaddress.ip_address(pod["status"]["podIP"]) in deployment.node.network.pod_subnet
    assert [c["restartCount"] for c in pod["status"]["containerStatuses"]] == [0]
    logs = deployment.kubectl("logs", "-n", SYSTEM, survivor)
    # An Event for an object of a namespace an earlier test is deleting is refused with a 403
    # too ("being terminated"): that is the namespace's lifecycle, not the RBAC.
    refused = [
        line
        for line in logs.lower().splitlines()
        if "forbidden" in line and "because it is being terminated" not in line
    ]
    assert not refused, "\n".join(refused)[-4000:]
