"""The shipped ClusterClass on real nodes, from CABPK's unmodified bootstrap data: its
KubeadmControlPlane of 1 replica runs ``kubeadm init`` on a pooled host prepared as a node
(containerd, kubelet under the node supervisor, images made here), its MachineDeployment's workers
run ``kubeadm join``, the kubelets register their Nodes and they go Ready; kubeadm's addons run
(kube-proxy on every node, CoreDNS); a Deployment on a worker answers through a ClusterIP Service
by name; the workers scale to 0 and back (``kubeadm reset``, the hosts join again); deleting the
Cluster returns each host to its pool with no kubelet or container left.

One test function on purpose: a full real run takes minutes on 2 cores, so it checks everything
the ClusterClass flow promises (realtopology.py) and the workload cluster's network
(realworkload.py) in one run. It measures (prints, asserts nothing about) the time from applying
the Cluster to every Node Ready and each node's peak memory and CPU time (its cgroup subtree:
every process of the host).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from capi_remote.resources import CLUSTERS, MACHINES, POOLED_REMOTE_MACHINES, SECRETS
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.hosts.cgroups import PARENT as CGROUP_PARENT
from capi_remote_testbed.kubeadm_providers import RunningProviders
from capi_remote_testbed.toolchain import KUBERNETES_VERSION
from e2e import kubeadm, realtopology, realworkload
from e2e.bed import Bed, BedFactory
from e2e.realtopology import condition

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]
CLUSTER = "real"
CP_POOL, WORKER_POOL = "real-control-plane", "real-workers"
WORKERS = 2
#: Processes that must be gone from a host after ``kubeadm reset`` (containerd, prepared by the
#: operator like the supervisor, keeps running, as on a real machine).
NODE_PROCESSES = ("kubelet", "containerd-shim", "kube-apiserver", "etcd", "kube-scheduler",
                  "kube-controller-manager", "kube-proxy", "coredns", "pause")  # fmt: skip


def _diagnose(bed: Bed, managers: RunningProviders) -> str:
    parts = [kubeadm.describe(bed, managers)]
    for host in bed.fleet.hosts:
        log = host.exec_inside(["tail", "-n", "15", "/var/log/capi-node/kubelet.log"])
        parts.append(f"{host.name} kubelet:\n{log.stdout.decode(errors='replace')}")
    return "\n".join(parts)


async def _machines(bed: Bed) -> list[JSONDict]:
    return await bed.list(MACHINES, label_selector=f"cluster.x-k8s.io/cluster-name={CLUSTER}")


def _ready(node: JSONDict) -> bool:
    conditions = node["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _address(node: JSONDict) -> str:
    return str(next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"))


def _ps(host: Host) -> str:
    return host.exec_inside(["ps", "-eo", "args"]).stdout.decode(errors="replace")


def _scale_workers(bed: Bed, replicas: int) -> None:
    patch = [{"op": "replace", "path": "/spec/topology/workers/machineDeployments/0/replicas",
              "value": replicas}]  # fmt: skip
    bed.plane.kubectl("patch", "cluster", CLUSTER, "-n", bed.namespace, "--type=json",
                      "-p", json.dumps(patch))  # fmt: skip


def _usage(host: Host) -> tuple[int, float]:
    """(peak memory bytes, CPU seconds) of the host's cgroup subtree: all its processes."""
    base = Path("/sys/fs/cgroup")
    memory = base / "memory" / CGROUP_PARENT / host.netns / "memory.max_usage_in_bytes"
    cpu = base / "cpuacct" / CGROUP_PARENT / host.netns / "cpuacct.usage"
    return int(memory.read_text()), int(cpu.read_text()) / 1e9


@pytest.mark.timeout(1500)
async def test_cluster_class_on_real_kubeadm(
    make_node_bed: BedFactory, kubeadm_managers: RunningProviders, tmp_path: Path
) -> None:
    bed = await make_node_bed(1 + WORKERS)
    plane = bed.plane
    assert isinstance(plane, ControlPlane)
    cp_host, *worker_hosts = bed.fleet.hosts
    await bed.pooled(cp_host.name, CP_POOL, cp_host)
    for host in worker_hosts:
        await bed.pooled(host.name, WORKER_POOL, host)

    def diagnose() -> str:
        return _diagnose(bed, kubeadm_managers)

    await asyncio.to_thread(plane.apply, realtopology.cluster_class(bed.namespace))
    for class_condition in ("VariablesReady", "RefVersionsUpToDate"):
        await asyncio.to_thread(
            plane.kubectl, "wait", "-n", bed.namespace, "clusterclass/remote",
            "--timeout=60s", f"--for=condition={class_condition}",
        )  # fmt: skip
    endpoint = (cp_host.address, 6443)
    cluster = kubeadm.topology_cluster(
        CLUSTER, bed.namespace, endpoint,
        control_plane_pool=CP_POOL, worker_pool=WORKER_POOL, workers=WORKERS,
    )  # fmt: skip
    started = time.monotonic()
    await asyncio.to_thread(plane.apply, [cluster])

    async def kubeconfig() -> bytes | None:
        secret = await bed.get(SECRETS, f"{CLUSTER}-kubeconfig")
        return base64.b64decode(secret["data"]["value"]) if secret else None

    print("stage: waiting for the workload kubeconfig", flush=True)
    workload_kubeconfig = tmp_path / "workload.kubeconfig"
    workload_kubeconfig.write_bytes(await bed.wait_for("the kubeconfig", kubeconfig, 120))

    def workload(*args: str, input_text: str | None = None) -> str:
        return plane.kubectl(f"--kubeconfig={workload_kubeconfig}", *args, input_text=input_text)

    async def nodes_ready() -> list[JSONDict]:
        try:
            out = await asyncio.to_thread(workload, "get", "nodes", "-o", "json")
        except Exception:  # the API server is not up yet
            return []
        nodes = json.loads(out)["items"]
        ready = [n for n in nodes if _ready(n)]
        return ready if len(ready) == 1 + WORKERS else []

    print("stage: waiting for Nodes Ready", flush=True)
    nodes = await bed.wait_for(f"{1 + WORKERS} Nodes Ready", nodes_ready, 600, diagnose)
    ready_after = time.monotonic() - started
    for host in bed.fleet.hosts:
        memory, cpu = _usage(host)
        print(f"{host.name}: peak memory {memory / 2**20:.0f} MiB, CPU {cpu:.1f} s")
    print(f"all {len(nodes)} Nodes Ready {ready_after:.0f} s after the Cluster was applied")

    # Real kubelets registered them: the kubelet's version and the node's own address.
    machines = {m["metadata"]["name"]: m for m in await _machines(bed)}
    by_address = {h.address: h for h in bed.fleet.hosts}
    for node in nodes:
        assert node["status"]["nodeInfo"]["kubeletVersion"] == KUBERNETES_VERSION
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        assert _address(node) in by_address
        assert node["metadata"]["name"] in machines
    cp_node = next(n for n in nodes if _address(n) == cp_host.address)
    assert "node-role.kubernetes.io/control-plane" in cp_node["metadata"]["labels"]
    pods = json.loads(
        await asyncio.to_thread(workload, "get", "pods", "-n", "kube-system", "-o", "json")
    )
    static = {(p["metadata"].get("labels") or {}).get("component") for p in pods["items"]}
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} <= static
    assert "kubelet" in _ps(worker_hosts[0])
    kubeadm_config = json.loads(await asyncio.to_thread(
        workload, "get", "configmap", "-n", "kube-system", "kubeadm-config", "-o", "json"
    ))  # fmt: skip
    assert "ClusterConfiguration" in kubeadm_config["data"]

    node_names = [n["metadata"]["name"] for n in nodes]
    await realworkload.addons_running(bed, workload, node_names, diagnose)
    worker_node = next(n for n in nodes if n is not cp_node)
    pod_ip = await realworkload.deployment_on_worker(
        bed, workload, by_address[_address(worker_node)], worker_node["metadata"]["name"],
        cp_host, diagnose,
    )  # fmt: skip
    await realworkload.service_and_dns(
        bed, workload, cp_host, cp_node["metadata"]["name"], pod_ip, diagnose
    )

    async def machines_have_nodes() -> bool:
        return all(
            ((m.get("status") or {}).get("nodeRef") or {}).get("name") for m in await _machines(bed)
        )

    await bed.wait_for("every Machine linked to its Node", machines_have_nodes, 180, diagnose)

    async def kcp_available() -> bool:
        kcps = (await bed.kube.list(kubeadm.KUBEADM_CONTROL_PLANES, bed.namespace))["items"]
        return bool(kcps) and condition(kcps[0], "Available") == "True"

    async def machines_ready() -> bool:
        machines = await _machines(bed)
        return len(machines) == 1 + WORKERS and all(
            condition(m, "Ready") == "True" and condition(m, "Available") == "True"
            for m in machines
        )

    await bed.wait_for("KubeadmControlPlane Available", kcp_available, 300, diagnose)
    await bed.wait_for("every Machine Ready and Available", machines_ready, 300, diagnose)
    await realtopology.check_topology(bed, CLUSTER, endpoint)
    await realtopology.check_machines(bed, CLUSTER, await _machines(bed), nodes)

    # Scale the workers to 0 and back: the worker's Node is deleted, its host runs kubeadm reset
    # and returns to its pool, clean enough to join again.
    await asyncio.to_thread(_scale_workers, bed, 0)

    async def worker_released() -> bool:
        out = await asyncio.to_thread(workload, "get", "nodes", "-o", "name")
        return len(out.split()) == 1 and await bed.free(WORKER_POOL) == WORKERS

    await bed.wait_for("the worker's Node gone, its host free", worker_released, 300, diagnose)
    assert not [h for h in worker_hosts if "kubelet" in _ps(h)]
    await asyncio.to_thread(_scale_workers, bed, WORKERS)
    await bed.wait_for("the worker joined again, Ready", nodes_ready, 300, diagnose)

    # Delete: kubeadm reset on every host, hosts back in their pools, nothing of the node left.
    await bed.kube.delete(CLUSTERS, bed.namespace, CLUSTER)

    async def all_gone() -> bool:
        return not await _machines(bed) and not await bed.get(CLUSTERS, CLUSTER)

    await bed.wait_for("the Cluster and its Machines to be gone", all_gone, 300, diagnose)
    await realtopology.check_deleted(bed, CLUSTER, {CP_POOL: 1, WORKER_POOL: WORKERS})
    pooled = await bed.list(POOLED_REMOTE_MACHINES)
    assert all(not p["spec"].get("claim") for p in pooled), pooled
    for host in bed.fleet.hosts:
        processes = _ps(host)
        assert not [p for p in NODE_PROCESSES if p in processes], processes
        assert host.exec_inside(["test", "-e", "/etc/kubernetes/admin.conf"]).returncode != 0
        assert host.exec_inside(["test", "-e", "/etc/kubernetes/kubelet.conf"]).returncode != 0
        active = host.exec_inside(["systemctl", "is-active", "kubelet"]).stdout.decode().strip()
        assert active == "inactive"
