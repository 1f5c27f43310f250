"""What the real-kubeadm e2e checks inside the workload cluster it made: kubeadm's addons running
(kube-proxy on every node, CoreDNS Ready), a Deployment on a worker reached from the control
plane (``kubectl logs``/``exec``, its Pod IP), and the same Pod through a ClusterIP Service, from
the control-plane host (kube-proxy's rules for local traffic) and from a Pod on the control-plane
node that finds it by name (CoreDNS, then kube-proxy's rules for Pod traffic).

Every image is one made here (``capi_remote_testbed.kubeadmimages``): etcd serves HTTP as the
workload, the network probe (``toolchain/netprobe``) resolves names and fetches URLs from a Pod.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
from collections.abc import Callable
from typing import Any, Protocol

from capi_remote_testbed import kubeadmimages
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.hosts.nodelayer import pod_subnet
from capi_remote_testbed.toolchain import ETCD_VERSION
from e2e.bed import Bed

JSONDict = dict[str, Any]
APP = "etcd-on-worker"
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
        return status.get("readyReplicas", 0) == deployment["spec"]["replicas"] > 0

    await bed.wait_for("a kube-proxy Pod Running on every node", kube_proxies, 180, diagnose)
    await bed.wait_for("CoreDNS Ready", coredns, 180, diagnose)


async def deployment_on_worker(
    bed: Bed, workload: Workload, worker: Host, worker_node: str, control_plane_host: Host,
    diagnose: Callable[[], str],
) -> str:  # fmt: skip
    """A Deployment's Pod runs on the worker, in its Pod subnet; the control plane's API server
    reaches that kubelet for ``kubectl logs`` and ``exec``; the control-plane host reaches the
    Pod. Returns the Pod's IP."""
    labels = {"app": APP}
    container = {
        "name": "etcd",
        "image": kubeadmimages.image_refs()["etcd"],
        "imagePullPolicy": "Never",
        "command": [
            "/usr/local/bin/etcd",
            "--data-dir=/var/etcd",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://$(POD_IP):2379",
        ],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"containerPort": 2379}],
    }
    await _apply(workload, {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": worker_node},
                    "containers": [container],
                },
            },
        },
    })  # fmt: skip

    async def running() -> JSONDict | None:
        pods = await _get(workload, "pods", "-n", "default", "-l", f"app={APP}")
        return next((p for p in pods["items"] if p["status"].get("phase") == "Running"), None)

    pod = await bed.wait_for("the Deployment's Pod Running on the worker", running, 180, diagnose)
    assert pod["spec"]["nodeName"] == worker_node
    pod_ip = str(pod["status"]["podIP"])
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(pod_subnet(worker.index))
    logs = await asyncio.to_thread(workload, "logs", "-n", "default", f"deployment/{APP}")
    assert "etcd" in logs, logs
    version = await asyncio.to_thread(
        workload, "exec", "-n", "default", f"deployment/{APP}", "--",
        "/usr/local/bin/etcd", "--version",
    )  # fmt: skip
    assert f"etcd Version: {ETCD_VERSION.lstrip('v')}" in version, version
    # Pod traffic between nodes: the control-plane host routes to the worker's Pod subnet.
    code, out = await asyncio.to_thread(curl, control_plane_host, f"http://{pod_ip}:2379/version")
    assert code == 0 and ETCD_ANSWER in out, out
    return pod_ip


async def service_and_dns(
    bed: Bed, workload: Workload, control_plane_host: Host, control_plane_node: str,
    pod_ip: str, diagnose: Callable[[], str],
) -> None:  # fmt: skip
    """A ClusterIP Service in front of the worker's Pod, reached from the control-plane node:
    from its host (kube-proxy's rules for local traffic), and by name from a Pod (CoreDNS
    resolves the Service and ``kubernetes.default``, kube-proxy's rules carry Pod traffic)."""
    await _apply(workload, {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": "default"},
        "spec": {"selector": {"app": APP}, "ports": [{"port": 2379, "targetPort": 2379}]},
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
