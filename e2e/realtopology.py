"""What the real-kubeadm e2e checks on the management side of the shipped ClusterClass: the
topology it made (RemoteCluster from the RemoteClusterTemplate, conditions, the KCP's version),
each Machine on the host of its pool with its Node linked, and CABPK's cloud-config as it ran on
the hosts (jinja rendered, kubeadm's configs and PKI, the sentinel); after the Cluster is
deleted, nothing it owned is left and the hosts hold none of it.
"""

from __future__ import annotations

import base64
from typing import Any

from capi_remote.resources import (
    CLUSTERS,
    MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.toolchain import KUBERNETES_VERSION
from e2e import kubeadm
from e2e.bed import MACHINE_DEPLOYMENTS, Bed

JSONDict = dict[str, Any]
PKI = "/etc/kubernetes/pki"
SENTINEL = "/run/cluster-api/bootstrap-success.complete"


def condition(obj: JSONDict | None, type_: str) -> str:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return str(next((c["status"] for c in conditions if c["type"] == type_), ""))


def host_address(machine: JSONDict) -> str:
    provider_id = machine["spec"]["providerID"]
    assert provider_id.startswith("remote-machine://"), provider_id
    return str(provider_id.removeprefix("remote-machine://").rsplit(":", 1)[0])


def _inside(host: Host, path: str) -> str:
    result = host.exec_inside(["cat", path])
    assert result.returncode == 0, f"{path} missing on {host.name}: {result.stderr.decode()}"
    return result.stdout.decode()


async def check_topology(bed: Bed, cluster: str, endpoint: tuple[str, int]) -> None:
    """The RemoteCluster came from the RemoteClusterTemplate with the endpoint variable; the
    topology (server-side-apply dry-runs, ours included) reconciled; KCP at the Cluster's
    version."""
    cluster_obj = await bed.get(CLUSTERS, cluster)
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
    assert condition(remote, "Ready") == "True"
    assert condition(cluster_obj, "TopologyReconciled") == "True", cluster_obj["status"]
    assert condition(cluster_obj, "ControlPlaneInitialized") == "True"
    (kcp,) = (await bed.kube.list(kubeadm.KUBEADM_CONTROL_PLANES, bed.namespace))["items"]
    assert kcp["status"]["version"] == KUBERNETES_VERSION


async def check_machines(
    bed: Bed, cluster: str, machines: list[JSONDict], nodes: list[JSONDict]
) -> None:
    """Each Machine on a host of its pool, its Node named after it and linked; CABPK's
    cloud-config (jinja header) rendered and run on the hosts, kubeadm's files in place."""
    hosts = {h.address: h for h in bed.fleet.hosts}
    cp_host, *worker_hosts = bed.fleet.hosts
    by_name = {n["metadata"]["name"]: n for n in nodes}
    control_plane = "cluster.x-k8s.io/control-plane"
    (cp_machine,) = [m for m in machines if control_plane in m["metadata"]["labels"]]
    workers = [m for m in machines if m is not cp_machine]
    assert host_address(cp_machine) == cp_host.address
    assert {host_address(m) for m in workers} <= {h.address for h in worker_hosts}
    ca = await bed.get(SECRETS, f"{cluster}-ca")
    assert ca is not None
    for machine in machines:
        name = machine["metadata"]["name"]
        assert machine["status"]["nodeRef"]["name"] == name  # {{ ds.meta_data.local_hostname }}
        assert by_name[name]["spec"]["providerID"] == machine["spec"]["providerID"]
        remote = await bed.get(REMOTE_MACHINES, machine["spec"]["infrastructureRef"]["name"])
        assert remote is not None and remote["spec"]["providerID"] == machine["spec"]["providerID"]
        secret = await bed.get(SECRETS, machine["spec"]["bootstrap"]["dataSecretName"])
        assert secret is not None
        data = base64.b64decode(secret["data"]["value"]).decode()
        assert data.startswith("## template: jinja\n#cloud-config\n"), data[:80]
        host = hosts[host_address(machine)]
        assert _inside(host, SENTINEL) == "success\n"
        assert _inside(host, f"{PKI}/ca.crt").encode() == base64.b64decode(ca["data"]["tls.crt"])
    init_config = _inside(cp_host, "/run/kubeadm/kubeadm.yaml")
    assert f"  name: '{cp_machine['metadata']['name']}'\n" in init_config
    assert f"controlPlaneEndpoint: {cp_host.address}:6443" in init_config
    assert _inside(cp_host, f"{PKI}/ca.key").encode() == base64.b64decode(ca["data"]["tls.key"])
    worker_host = hosts[host_address(workers[0])]
    join_config = _inside(worker_host, "/run/kubeadm/kubeadm-join-config.yaml")
    assert f"  name: '{workers[0]['metadata']['name']}'\n" in join_config  # the jinja rendered


async def check_deleted(bed: Bed, cluster: str, pools: dict[str, int]) -> None:
    """Nothing the Cluster owned is left, its hosts are free in their pools and hold neither
    kubeadm's PKI nor the sentinel."""
    assert not any(
        [
            await bed.list(MACHINES),
            await bed.list(REMOTE_MACHINES),
            await bed.list(MACHINE_DEPLOYMENTS),
            (await bed.kube.list(kubeadm.KUBEADM_CONTROL_PLANES, bed.namespace))["items"],
            await bed.get(CLUSTERS, cluster),
        ]
    )
    for pool, size in pools.items():
        assert await bed.free(pool) == size
    for host in bed.fleet.hosts:
        assert host.exec_inside(["test", "-e", f"{PKI}/ca.crt"]).returncode != 0
        assert host.exec_inside(["test", "-e", SENTINEL]).returncode != 0
