"""What the real-kubeadm e2e checks of kubeadm's addons in the workload cluster it made:
kube-proxy on every node, CoreDNS Ready, and the sample Deployment (etcd serving HTTP on a
worker) through a ClusterIP Service, from the control-plane host (kube-proxy's rules for local
traffic) and from a Pod on the control-plane node that finds it by name (CoreDNS, then
kube-proxy's rules for Pod traffic). The Pod runs the network probe made here
(``toolchain/netprobe``): the images have no shell, curl or nslookup.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any, Protocol

from capi_remote_testbed import kubeadmimages
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.realcluster import SAMPLE
from capi_remote_testbed.toolchain import ETCD_VERSION
from e2e.bed import Bed

JSONDict = dict[str, Any]
SERVICE = "etcd"
PROBE = "netprobe"
ETCD_ANSWER = f'"etcdserver":"{ETCD_VERSION.lstrip("v")}"'


class Workload(Protocol):
    def __call__(self, *args: str, input_text: str | None = None) -> str: ...


async def _get(workload: Workload, *args: str) -> JSONDict:
    out = await asyncio.to_thread(workload, "get", *args, "-o", "json")
    obj: JSONDict = json.loads(out)
    return obj


async def _apply(workload: Workload, obj: JSONDict) -> None:
    await asyncio.to_thread(functools.partial(workload, "apply", "-f", "-",
                                              input_text=json.dumps(obj)))  # fmt: skip


def curl(host: Host, url: str) -> tuple[int, str]:
    result = host.exec_inside(["curl", "-sS", "--max-time", "10", url], timeout=30)
    return result.returncode, result.stdout.decode() + result.stderr.decode()


async def addons_running(
    bed: Bed, workload: Workload, nodes: list[str], diagnose: Callable[[], str]
) -> None:
    """kubeadm's addon phases ran: a kube-proxy Pod Running on every node, CoreDNS Ready."""

    async def kube_proxies() -> bool:
        pods = await _get(workload, "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy")
        running = {
            p["spec"].get("nodeName")
            for p in pods["items"]
            if (p.get("status") or {}).get("phase") == "Running"
        }
        return running == set(nodes)

    async def coredns() -> bool:
        deployment = await _get(workload, "deployment", "-n", "kube-system", "coredns")
        status = deployment.get("status") or {}
        return bool(status.get("readyReplicas", 0) == deployment["spec"]["replicas"] > 0)

    await bed.wait_for("a kube-proxy Pod Running on every node", kube_proxies, 180, diagnose)
    await bed.wait_for("CoreDNS Ready", coredns, 180, diagnose)


async def service_and_dns(
    bed: Bed, workload: Workload, control_plane_host: Host, control_plane_node: str,
    pod_ip: str, diagnose: Callable[[], str],
) -> None:  # fmt: skip
    """A ClusterIP Service in front of the sample's Pod (on a worker), reached from the
    control-plane node: from its host (kube-proxy's rules for local traffic), and by name from a
    Pod (CoreDNS resolves the Service and ``kubernetes.default``, kube-proxy's rules carry Pod
    traffic)."""
    await _apply(workload, {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": "default"},
        "spec": {"selector": {"app": SAMPLE}, "ports": [{"port": 2379, "targetPort": 2379}]},
    })  # fmt: skip
    service = await _get(workload, "service", "-n", "default", SERVICE)
    cluster_ip = service["spec"]["clusterIP"]
    assert cluster_ip != pod_ip

    async def through_service() -> str | None:
        code, out = await asyncio.to_thread(
            curl, control_plane_host, f"http://{cluster_ip}:2379/version"
        )
        return out if code == 0 and ETCD_ANSWER in out else None

    await bed.wait_for("the Service's ClusterIP from the control-plane host", through_service,
                       60, diagnose)  # fmt: skip
    kubernetes = await _get(workload, "service", "-n", "default", "kubernetes")
    await _apply(workload, {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": PROBE, "namespace": "default"},
        "spec": {
            "nodeName": control_plane_node,
            "tolerations": [{"operator": "Exists"}],
            "restartPolicy": "Never",
            "containers": [{
                "name": PROBE,
                "image": kubeadmimages.NETPROBE_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["kubernetes.default", f"http://{SERVICE}.default:2379/version"],
            }],
        },
    })  # fmt: skip

    async def probed() -> str | None:
        pod = await _get(workload, "pod", "-n", "default", PROBE)
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Succeeded", "Failed"):
            return None
        logs = await asyncio.to_thread(workload, "logs", "-n", "default", PROBE)
        assert phase == "Succeeded", logs
        return logs

    logs = await bed.wait_for("the probe Pod done", probed, 180, diagnose)
    assert f"kubernetes.default: {kubernetes['spec']['clusterIP']}\n" in logs, logs
    assert ETCD_ANSWER in logs, logs
    await asyncio.to_thread(workload, "delete", "pod", "-n", "default", PROBE, "--timeout=60s")
