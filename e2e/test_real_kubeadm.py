"""Real nodes from CABPK's unmodified bootstrap data, through the very code of ``capi-remote dev
up`` (``make run``): its :class:`LocalEnvironment` in its default, real mode (a control plane of
its own, hosts prepared as nodes, the kubeadm providers, our controller) and its
:class:`~capi_remote_testbed.realcluster.RealCluster`: the shipped ClusterClass with a
KubeadmControlPlane of 1 replica runs ``kubeadm init`` on a pooled host (containerd, kubelet under
the node supervisor, images made here), a MachineDeployment of 2 workers runs ``kubeadm join``,
the kubelets register their Nodes and they go Ready; kubeadm's addons run (kube-proxy on every
node, CoreDNS); the sample Deployment's Pod runs on a worker and answers through a ClusterIP
Service, by name from a Pod; the topology, Machines and cloud-config are what the ClusterClass
promises (realtopology.py). Scaling up takes the spare pooled host; scaling down runs ``kubeadm
reset`` and returns hosts to the pool, which join again; deleting the Cluster returns every host
clean. One test function on purpose: a full real run takes minutes on 2 cores, so this is the
ClusterClass e2e too (no kubeadm stand-in is left).

It measures (prints, asserts nothing about) the time from applying the Cluster to every Node
Ready, and each node's and management process's peak memory and CPU time (as ``dev up`` prints).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from capi_remote.kube.client import KubeClient
from capi_remote.resources import CLUSTERS, MACHINES, POOLED_REMOTE_MACHINES
from capi_remote_testbed import budget, environment
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.hosts.nodelayer import pod_subnet
from capi_remote_testbed.realcluster import (
    API_SERVER_PORT,
    CONTROL_PLANE_POOL,
    SAMPLE,
    WORKER_POOL,
    RealCluster,
)
from capi_remote_testbed.toolchain import KUBERNETES_VERSION
from e2e import kubeadm, realtopology, realworkload
from e2e.bed import Bed
from e2e.realtopology import condition

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]
WORKERS = 2
#: ``dev up``'s default layout: a control-plane host, the workers and one spare pooled host.
SETTINGS = environment.Settings(hosts=1 + WORKERS + 1, workers=WORKERS, state_file=None)
#: Processes that must be gone from a host after ``kubeadm reset`` (containerd, prepared by the
#: operator like the supervisor, keeps running, as on a real machine).
NODE_PROCESSES = ("kubelet", "containerd-shim", "kube-apiserver", "etcd", "kube-scheduler",
                  "kube-controller-manager", "kube-proxy", "coredns", "pause")  # fmt: skip


@pytest.fixture
async def env() -> AsyncIterator[environment.LocalEnvironment]:
    """``dev up``'s environment, started as ``dev up`` starts it (without its state file)."""
    local = environment.LocalEnvironment(SETTINGS)
    started = time.monotonic()
    await asyncio.to_thread(local.start, lambda line: print(f"dev up: {line}", flush=True))
    print(f"environment started in {time.monotonic() - started:.0f} s", flush=True)
    try:
        yield local
    finally:
        await asyncio.to_thread(local.stop)


async def _machines(bed: Bed) -> list[JSONDict]:
    return await bed.list(
        MACHINES, label_selector=f"cluster.x-k8s.io/cluster-name={environment.CLUSTER}"
    )


def _ps(host: Host) -> str:
    return host.exec_inside(["ps", "-eo", "args"]).stdout.decode(errors="replace")


def _host_of(node: JSONDict, hosts: list[Host]) -> Host:
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    return next(h for h in hosts if h.address == address)


async def _sample_on_a_worker(bed: Bed, real: RealCluster, diagnose: Any) -> str:
    """The sample Deployment's Pod runs on a worker, in its Pod subnet; the control plane's API
    server reaches that kubelet for ``kubectl logs`` and ``exec``; the control-plane host reaches
    the Pod through the route to the worker's Pod subnet. Returns the Pod's IP."""
    pod = await asyncio.to_thread(real.deploy_sample)
    nodes = json.loads(await asyncio.to_thread(real.workload, "get", "nodes", "-o", "json"))
    node = next(n for n in nodes["items"] if n["metadata"]["name"] == pod["spec"]["nodeName"])
    worker = _host_of(node, real.worker_hosts)  # not the control plane: kubeadm tainted it
    pod_ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(pod_subnet(worker.index))

    async def logs() -> str:
        out = await asyncio.to_thread(
            real.workload, "logs", "-n", "default", f"deployment/{SAMPLE}"
        )
        return out if "serving client traffic" in out else ""

    await bed.wait_for("the sample's log", logs, 60, diagnose)
    version = await asyncio.to_thread(
        real.workload, "exec", "-n", "default", f"deployment/{SAMPLE}", "--",
        "/usr/local/bin/etcd", "--version",
    )  # fmt: skip
    assert "etcd Version: 3.6.10" in version, version
    code, out = await asyncio.to_thread(
        realworkload.curl, real.control_plane_host, f"http://{pod_ip}:2379/version"
    )
    assert code == 0 and realworkload.ETCD_ANSWER in out, out
    return str(pod_ip)


@pytest.mark.timeout(1800)
async def test_dev_up_makes_a_real_cluster(env: environment.LocalEnvironment) -> None:
    real, plane, fleet = env.real, env.plane, env.fleet
    assert real is not None and plane is not None and fleet is not None and env.providers
    kube = await KubeClient.from_kubeconfig(str(plane.kubeconfig))
    bed = Bed(kube, plane, environment.NAMESPACE, fleet, 0)
    providers = env.providers

    def diagnose() -> str:
        return real.diagnose() + "\n" + providers.log_tails()

    try:
        nodes = await asyncio.to_thread(real.wait_ready, lambda line: print(line, flush=True))
        print(f"all {len(nodes)} Nodes Ready {time.monotonic() - real.applied_at:.0f} s after "
              "the Cluster was applied")  # fmt: skip
        print("\n".join(budget.lines(*env.usage())))
        cp_node = await _check_nodes(bed, real, nodes)
        node_names = [n["metadata"]["name"] for n in nodes]
        await realworkload.addons_running(bed, real.workload, node_names, diagnose)
        pod_ip = await _sample_on_a_worker(bed, real, diagnose)
        await realworkload.service_and_dns(
            bed, real.workload, real.control_plane_host, cp_node, pod_ip, diagnose
        )
        await _check_cluster_api(bed, real, diagnose)
        await _scale(bed, real, diagnose)
        await _delete(bed, real, diagnose)
    finally:
        await kube.close()


async def _check_nodes(bed: Bed, real: RealCluster, nodes: list[JSONDict]) -> str:
    """Real kubelets registered them: the kubelet's version, the node's own address, a Machine
    each, the control plane's static Pods. Returns the control-plane Node's name."""
    machines = {m["metadata"]["name"] for m in await _machines(bed)}
    for node in nodes:
        assert node["status"]["nodeInfo"]["kubeletVersion"] == KUBERNETES_VERSION
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        _host_of(node, bed.fleet.hosts)
        assert node["metadata"]["name"] in machines
    cp_node = next(n for n in nodes if _host_of(n, bed.fleet.hosts) is real.control_plane_host)
    assert "node-role.kubernetes.io/control-plane" in cp_node["metadata"]["labels"]
    pods = json.loads(
        await asyncio.to_thread(real.workload, "get", "pods", "-n", "kube-system", "-o", "json")
    )
    static = {(p["metadata"].get("labels") or {}).get("component") for p in pods["items"]}
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} <= static
    return str(cp_node["metadata"]["name"])


async def _check_cluster_api(bed: Bed, real: RealCluster, diagnose: Any) -> None:
    """Every Machine linked to its Node, READY and AVAILABLE; the KubeadmControlPlane Available;
    the ClusterClass's topology, Machines and cloud-config as realtopology.py checks them."""

    async def machines_have_nodes() -> bool:
        return all(
            ((m.get("status") or {}).get("nodeRef") or {}).get("name") for m in await _machines(bed)
        )

    async def kcp_available() -> bool:
        kcps = (await bed.kube.list(kubeadm.KUBEADM_CONTROL_PLANES, bed.namespace))["items"]
        return bool(kcps) and condition(kcps[0], "Available") == "True"

    async def machines_ready() -> bool:
        machines = await _machines(bed)
        return len(machines) == 1 + WORKERS and all(
            condition(m, "Ready") == "True" and condition(m, "Available") == "True"
            for m in machines
        )

    await bed.wait_for("every Machine linked to its Node", machines_have_nodes, 180, diagnose)
    await bed.wait_for("KubeadmControlPlane Available", kcp_available, 300, diagnose)
    await bed.wait_for("every Machine Ready and Available", machines_ready, 300, diagnose)
    await asyncio.to_thread(
        real.plane.kubectl, "wait", "-n", bed.namespace, "clusterclass/remote",
        "--timeout=60s", "--for=condition=RefVersionsUpToDate",
    )  # fmt: skip
    endpoint = (real.control_plane_host.address, API_SERVER_PORT)
    await realtopology.check_topology(bed, real.name, endpoint)
    nodes = json.loads(await asyncio.to_thread(real.workload, "get", "nodes", "-o", "json"))
    await realtopology.check_machines(bed, real.name, await _machines(bed), nodes["items"])


async def _scale(bed: Bed, real: RealCluster, diagnose: Any) -> None:
    """Up to 3 takes the spare pooled host; down to 1 drains, deletes Nodes, runs ``kubeadm
    reset`` and frees two hosts; up to 2 joins one of those reset hosts again."""

    async def nodes_ready(count: int) -> list[JSONDict] | None:
        nodes = await asyncio.to_thread(real.ready_nodes)
        return nodes if len(nodes) == count else None

    await asyncio.to_thread(real.scale, WORKERS + 1)
    await bed.wait_for("the spare host joined, Ready", lambda: nodes_ready(WORKERS + 2), 300,
                       diagnose)  # fmt: skip

    await asyncio.to_thread(real.scale, 1)

    async def released() -> bool:
        out = await asyncio.to_thread(real.workload, "get", "nodes", "-o", "name")
        return len(out.split()) == 2 and await bed.free(WORKER_POOL) == WORKERS

    await bed.wait_for("two workers' Nodes gone, their hosts free", released, 300, diagnose)
    nodes = await asyncio.to_thread(real.ready_nodes)
    in_use = {_host_of(n, bed.fleet.hosts).name for n in nodes}
    for host in real.worker_hosts:
        if host.name not in in_use:
            assert "kubelet" not in _ps(host), _ps(host)
    await asyncio.to_thread(real.scale, 2)
    await bed.wait_for("a reset host joined again, Ready", lambda: nodes_ready(3), 300, diagnose)


async def _delete(bed: Bed, real: RealCluster, diagnose: Any) -> None:
    """``kubeadm reset`` on every host, hosts back in their pools, nothing of the node left."""
    await bed.kube.delete(CLUSTERS, bed.namespace, real.name)

    async def all_gone() -> bool:
        return not await _machines(bed) and not await bed.get(CLUSTERS, real.name)

    await bed.wait_for("the Cluster and its Machines to be gone", all_gone, 300, diagnose)
    pooled = await bed.list(POOLED_REMOTE_MACHINES)
    assert all(not p["spec"].get("claim") for p in pooled), pooled
    for host in bed.fleet.hosts:
        processes = _ps(host)
        assert not [p for p in NODE_PROCESSES if p in processes], processes
        assert host.exec_inside(["test", "-e", "/etc/kubernetes/admin.conf"]).returncode != 0
        assert host.exec_inside(["test", "-e", "/etc/kubernetes/kubelet.conf"]).returncode != 0
        active = host.exec_inside(["systemctl", "is-active", "kubelet"]).stdout.decode().strip()
        assert active == "inactive"
    pools = {CONTROL_PLANE_POOL: 1, WORKER_POOL: len(real.worker_hosts)}
    await realtopology.check_deleted(bed, real.name, pools)
