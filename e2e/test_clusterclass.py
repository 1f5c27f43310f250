"""ClusterClass topology on the real test bed, with a real control-plane provider: the shipped
ClusterClass (RemoteClusterTemplate, KubeadmControlPlaneTemplate on a pooled RemoteMachineTemplate,
a worker class of KubeadmConfigTemplate + RemoteMachineTemplate) and a topology Cluster, run by
CAPI core, the kubeadm bootstrap and control-plane providers and our controller, on sshd hosts.

The kubeadm bootstrap provider's cloud-config (``## template: jinja``) runs on the hosts as it is;
a kubeadm stand-in (``kubeadm-shim.sh``) registers the Nodes in the workload API server."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from capi_remote.kube.client import KubeClient
from capi_remote.resources import (
    CLUSTERS,
    CONFIGMAPS,
    MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote_testbed import clustertemplates
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.kubeadm_providers import RunningProviders
from capi_remote_testbed.pki import CertificateAuthority
from capi_remote_testbed.toolchain import KUBERNETES_VERSION
from e2e import kubeadm
from e2e.bed import MACHINE_DEPLOYMENTS, NODES, Bed, BedFactory

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]
CLUSTER = "cc"
CP_POOL, WORKER_POOL = "cc-control-plane", "cc-workers"
WORKERS = 2


def _condition(obj: JSONDict | None, type_: str) -> JSONDict:
    for condition in ((obj or {}).get("status") or {}).get("conditions", []):
        if condition.get("type") == type_:
            return dict(condition)
    return {}


async def _machines(bed: Bed, *, control_plane: bool) -> list[JSONDict]:
    selector = f"cluster.x-k8s.io/cluster-name={CLUSTER},"
    selector += (
        "cluster.x-k8s.io/control-plane" if control_plane else "!cluster.x-k8s.io/control-plane"
    )
    return await bed.list(MACHINES, label_selector=selector)


def _running(machines: list[JSONDict]) -> list[JSONDict]:
    return [m for m in machines if (m.get("status") or {}).get("phase") == "Running"]


def _inside(bed: Bed, address: str, path: str) -> str:
    host = next(h for h in bed.fleet.hosts if h.address == address)
    result = host.exec_inside(["cat", path])
    assert result.returncode == 0, f"{path} missing on {host.name}: {result.stderr.decode()}"
    return result.stdout.decode()


def _host_address(machine: JSONDict) -> str:
    provider_id = machine["spec"]["providerID"]
    assert provider_id.startswith("remote-machine://"), provider_id
    return str(provider_id.removeprefix("remote-machine://").rsplit(":", 1)[0])


async def test_cluster_class_topology_with_kubeadm_control_plane(
    make_bed: BedFactory, kubeadm_managers: RunningProviders
) -> None:
    bed = await make_bed(1 + WORKERS)
    plane = bed.plane
    assert isinstance(plane, ControlPlane)  # kubeadm_managers skips on other clusters
    hosts = bed.fleet.hosts
    await bed.pooled(hosts[0].name, CP_POOL, hosts[0])
    for host in hosts[1:]:
        await bed.pooled(host.name, WORKER_POOL, host)
    ca = CertificateAuthority.create("kubernetes")
    etcd_ca = CertificateAuthority.create("etcd-ca")

    def diagnose() -> str:
        return kubeadm.describe(bed, kubeadm_managers)

    with kubeadm.workload_api_server(plane, ca, bed.fleet.gateway) as workload:
        workload_kube = await KubeClient.from_kubeconfig(str(workload.kubeconfig))
        try:
            await _create_and_check(
                bed, plane, workload_kube, workload.endpoint, ca, etcd_ca, diagnose
            )
            await _delete_and_check(bed, diagnose)
        finally:
            await workload_kube.close()


async def _create_and_check(
    bed: Bed,
    plane: ControlPlane,
    workload: KubeClient,
    endpoint: tuple[str, int],
    ca: CertificateAuthority,
    etcd_ca: CertificateAuthority,
    diagnose: Any,
) -> None:
    class_documents = kubeadm.cluster_class(bed.namespace, plane.etcd_url)
    secrets = kubeadm.cluster_secrets(CLUSTER, bed.namespace, ca, etcd_ca)
    await asyncio.to_thread(plane.apply, secrets + class_documents)
    for condition in ("VariablesReady", "RefVersionsUpToDate"):
        await asyncio.to_thread(
            plane.kubectl, "wait", "-n", bed.namespace, "clusterclass/remote",
            "--timeout=60s", f"--for=condition={condition}",
        )  # fmt: skip
    cluster = clustertemplates.topology_cluster(
        CLUSTER,
        bed.namespace,
        endpoint,
        control_plane_pool=CP_POOL,
        worker_pool=WORKER_POOL,
        workers=WORKERS,
    )
    await asyncio.to_thread(plane.apply, [cluster])

    # The control plane: KCP initialises it on a pooled host through the kubeadm cloud-config.
    async def control_plane_running() -> list[JSONDict]:
        return _running(await _machines(bed, control_plane=True))

    (cp_machine,) = await bed.wait_for(
        "the control-plane Machine to be Running", control_plane_running, 240, diagnose
    )

    async def kcp_initialized() -> JSONDict | None:
        for kcp in (await bed.kube.list(kubeadm.KUBEADM_CONTROL_PLANES, bed.namespace))["items"]:
            if ((kcp.get("status") or {}).get("initialization") or {}).get(
                "controlPlaneInitialized"
            ):
                return dict(kcp)
        return None

    await bed.wait_for("KubeadmControlPlane initialized", kcp_initialized, 120, diagnose)

    # Then the topology controller's MachineDeployment, whose workers join with bootstrap tokens.
    async def workers_running() -> list[JSONDict]:
        running = _running(await _machines(bed, control_plane=False))
        return running if len(running) == WORKERS else []

    workers = await bed.wait_for(f"{WORKERS} workers Running", workers_running, 300, diagnose)

    async def available() -> JSONDict | None:
        kcp = await kcp_initialized()
        return kcp if _condition(kcp, "Available").get("status") == "True" else None

    kcp = await bed.wait_for("KubeadmControlPlane Available", available, 180, diagnose)
    assert kcp["status"]["version"] == KUBERNETES_VERSION

    # The RemoteCluster came from the RemoteClusterTemplate, with the endpoint from the variable.
    cluster_obj = await bed.get(CLUSTERS, CLUSTER)
    assert cluster_obj is not None
    infra_ref = cluster_obj["spec"]["infrastructureRef"]
    assert infra_ref["kind"] == "RemoteCluster"
    remote = await bed.get(REMOTE_CLUSTERS, infra_ref["name"])
    assert remote is not None
    annotations = remote["metadata"].get("annotations") or {}
    assert annotations.get("cluster.x-k8s.io/cloned-from-name") == "remote"
    assert annotations.get("cluster.x-k8s.io/cloned-from-groupkind") == (
        "RemoteClusterTemplate.infrastructure.cluster.x-k8s.io"
    )
    assert remote["spec"]["controlPlaneEndpoint"] == {"host": endpoint[0], "port": endpoint[1]}
    assert remote["status"]["initialization"]["provisioned"] is True
    assert _condition(remote, "Ready").get("status") == "True"
    # ClusterClass server-side-apply dry-runs (ours included) went through: topology reconciled.
    topology = _condition(cluster_obj, "TopologyReconciled")
    assert topology.get("status") == "True", topology
    assert _condition(cluster_obj, "ControlPlaneInitialized").get("status") == "True"

    # Each Machine runs on one of our hosts, and its Node is in the workload cluster, linked.
    cp_address = _host_address(cp_machine)
    assert cp_address == bed.fleet.hosts[0].address
    worker_addresses = {_host_address(m) for m in workers}
    assert worker_addresses == {h.address for h in bed.fleet.hosts[1:]}
    for machine in [cp_machine, *workers]:
        node_name = machine["status"]["nodeRef"]["name"]
        assert node_name == machine["metadata"]["name"]  # {{ ds.meta_data.local_hostname }}
        node = await workload.get(NODES, None, node_name)
        assert node["spec"]["providerID"] == machine["spec"]["providerID"]
        rm = await bed.get(REMOTE_MACHINES, machine["spec"]["infrastructureRef"]["name"])
        assert rm is not None and rm["spec"]["providerID"] == machine["spec"]["providerID"]
    cp_node = await workload.get(NODES, None, cp_machine["metadata"]["name"])
    assert "node-role.kubernetes.io/control-plane" in cp_node["metadata"]["labels"]

    # The kubeadm cloud-config: jinja header, rendered on the host, files and commands done.
    for machine in [cp_machine, workers[0]]:
        secret = await bed.get(SECRETS, machine["spec"]["bootstrap"]["dataSecretName"])
        assert secret is not None
        data = base64.b64decode(secret["data"]["value"]).decode()
        assert data.startswith("## template: jinja\n#cloud-config\n"), data[:80]
        address = _host_address(machine)
        name = machine["metadata"]["name"]
        rm = await bed.get(REMOTE_MACHINES, machine["spec"]["infrastructureRef"]["name"])
        assert rm is not None
        assert _inside(bed, address, kubeadm.INSTANCE_FILE) == (
            f"local_hostname={name}\nv1_local_hostname={name}\n"
            f"instance_id={rm['metadata']['uid']}\n"
        )
        assert _inside(bed, address, "/run/cluster-api/bootstrap-success.complete") == "success\n"
        assert _inside(bed, address, f"{kubeadm.PKI}/ca.crt").encode() == ca.cert_pem
    init_config = _inside(bed, cp_address, "/run/kubeadm/kubeadm.yaml")
    assert f"  name: '{cp_machine['metadata']['name']}'\n" in init_config
    assert f"controlPlaneEndpoint: {endpoint[0]}:{endpoint[1]}" in init_config
    assert _inside(bed, cp_address, f"{kubeadm.PKI}/ca.key").encode() == ca.key_pem
    assert "client-certificate-data" in _inside(bed, cp_address, "/etc/kubernetes/admin.conf")
    join_config = _inside(bed, _host_address(workers[0]), "/run/kubeadm/kubeadm-join-config.yaml")
    assert f"  name: '{workers[0]['metadata']['name']}'\n" in join_config  # v1.local_hostname

    kubeadm_config = await workload.get(CONFIGMAPS, "kube-system", "kubeadm-config")
    assert "ClusterConfiguration" in kubeadm_config["data"]


async def _delete_and_check(bed: Bed, diagnose: Any) -> None:
    await bed.kube.delete(CLUSTERS, bed.namespace, CLUSTER)

    async def all_gone() -> bool:
        return not any(
            [
                await bed.list(MACHINES),
                await bed.list(REMOTE_MACHINES),
                await bed.list(MACHINE_DEPLOYMENTS),
                (await bed.kube.list(kubeadm.KUBEADM_CONTROL_PLANES, bed.namespace))["items"],
                await bed.get(CLUSTERS, CLUSTER),
            ]
        )

    await bed.wait_for("the Cluster and everything it owns to be gone", all_gone, 300, diagnose)
    assert await bed.free(CP_POOL) == 1
    assert await bed.free(WORKER_POOL) == WORKERS
    for host in bed.fleet.hosts:
        # kubeadm reset ran (the default cleanup for KubeadmConfig machines) and our state went.
        assert host.exec_inside(["test", "-e", f"{kubeadm.PKI}/ca.crt"]).returncode != 0
        assert (
            host.exec_inside(["test", "-e", "/run/cluster-api/bootstrap-success.complete"])
        ).returncode != 0
