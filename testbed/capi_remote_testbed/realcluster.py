"""A real workload cluster from the shipped ClusterClass on hosts prepared as nodes
(``HostFleet(nodes=True)``, docs/test-bed-hosts.md): ``kubeadm init`` on a host of the control-plane
pool (KubeadmControlPlane, 1 replica), ``kubeadm join`` on hosts of the worker pool (a
MachineDeployment), real kubelets registering their Nodes. One implementation, used by
``capi-remote dev up`` (its default) and by ``e2e/test_real_kubeadm.py`` through the same
:class:`~capi_remote_testbed.environment.LocalEnvironment`.

What is added to the shipped ClusterClass, expressed as a user would in the
KubeadmControlPlaneTemplate and KubeadmConfigTemplate (the bootstrap data stays CABPK's output):

- ``imageRepository`` and the etcd tag name the images made here (no registry is reachable).
- A kubelet configuration patch (a ``files`` entry, read through kubeadm's ``patches``): this VM
  runs cgroup v1, which kubelet 1.35 refuses unless ``failCgroupV1: false``; the kubelet uses the
  cgroupfs driver (no systemd) without QoS cgroups, and evicts nothing.
- ``imagePullPolicy: Never``: the images are preloaded (no registry is reachable), so kubeadm's
  ``ImagePull`` check, which would pull its upstream-tagged pause image, does not run.
- :data:`IGNORE_PREFLIGHT_ERRORS`: only ``SystemVerification`` (kubelet 1.35 on cgroup v1, which
  this VM runs: kubeadm fails it even with ``failCgroupV1: false``); docs/troubleshooting.md.
- No ``skipPhases``: kube-proxy and CoreDNS run from images made here. kube-proxy gets a
  KubeProxyConfiguration with ``conntrack.maxPerCore: 0`` (keep the kernel's ``nf_conntrack_max``:
  a host's network namespace may not write it, and kube-proxy would exit on the attempt). CABPK
  has no field for it: a ``files`` entry holds the document and a ``preKubeadmCommands`` line
  appends it to the config CABPK wrote for ``kubeadm init``, as CAPI users do.

Invariant: nothing here edits a bootstrap Secret or creates a Node; every Node comes from a kubelet.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import yaml

from capi_remote_testbed import samples
from capi_remote_testbed.clustertemplates import shipped_cluster_class, topology_cluster
from capi_remote_testbed.controlplane import ControlPlane, ControlPlaneError
from capi_remote_testbed.hosts import Host, HostFleet
from capi_remote_testbed.kubeadmimages import ETCD_IMAGE_TAG, IMAGE_REPOSITORY, image_refs
from capi_remote_testbed.node import KUBELET_ON_THIS_VM
from capi_remote_testbed.waits import poll

JSONDict = dict[str, Any]
PATCHES_DIR = "/etc/kubernetes/patches"
KUBELET_PATCH: JSONDict = dict(KUBELET_ON_THIS_VM)
IGNORE_PREFLIGHT_ERRORS = ["SystemVerification"]
INIT_CONFIG = "/run/kubeadm/kubeadm.yaml"  # where CABPK writes kubeadm init's configuration
KUBE_PROXY_CONFIG = "/etc/kubernetes/kube-proxy-config.yaml"
KUBE_PROXY: JSONDict = {
    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
    "kind": "KubeProxyConfiguration",
    "conntrack": {"maxPerCore": 0},
}
CONTROL_PLANE_POOL, WORKER_POOL = "control-plane", "workers"
API_SERVER_PORT = 6443
#: The sample Deployment in the workload cluster's ``default`` namespace: one Pod (etcd, from an
#: image made here) that the scheduler places on a worker (kubeadm taints the control plane).
SAMPLE = "sample"


class RealClusterError(RuntimeError):
    """A stage did not complete in time; the message says which, and what the objects show."""


_WAIT: dict[str, Any] = {"interval": 1.0, "error": RealClusterError}


def _registration(name: str) -> JSONDict:
    return {
        "name": name,
        "criSocket": "unix:///run/containerd/containerd.sock",
        "ignorePreflightErrors": IGNORE_PREFLIGHT_ERRORS,
        "imagePullPolicy": "Never",
    }


def _file(path: str, content: str) -> JSONDict:
    return {
        "path": path,
        "owner": "root:root",
        "permissions": "0644",
        "encoding": "base64",
        "content": base64.b64encode(content.encode()).decode(),
    }


def _files() -> list[JSONDict]:
    return [_file(f"{PATCHES_DIR}/kubeletconfiguration+merge.yaml", yaml.safe_dump(KUBELET_PATCH))]


def cluster_class(namespace: str) -> list[JSONDict]:
    """``clusterclass-remote.yaml`` as shipped, plus the node settings above."""
    documents = shipped_cluster_class(namespace)
    for document in documents:
        if document["kind"] == "KubeadmControlPlaneTemplate":
            spec = document["spec"]["template"]["spec"]["kubeadmConfigSpec"]
            spec["clusterConfiguration"] = {
                "imageRepository": IMAGE_REPOSITORY,
                "etcd": {"local": {"imageTag": ETCD_IMAGE_TAG}},
            }
            name = spec["initConfiguration"]["nodeRegistration"]["name"]
            spec["initConfiguration"] = {
                "nodeRegistration": _registration(name),
                "patches": {"directory": PATCHES_DIR},
            }
            spec["joinConfiguration"] = {
                "nodeRegistration": _registration(name),
                "patches": {"directory": PATCHES_DIR},
            }
            spec["files"] = [
                *_files(),
                _file(KUBE_PROXY_CONFIG, "\n" + yaml.safe_dump(KUBE_PROXY, explicit_start=True)),
            ]
            # Only ``kubeadm init`` reads it (kube-proxy's configuration is the cluster's).
            spec["preKubeadmCommands"] = [
                f"if [ -f {INIT_CONFIG} ]; then cat {KUBE_PROXY_CONFIG} >> {INIT_CONFIG}; fi"
            ]
        elif document["kind"] == "KubeadmConfigTemplate":
            spec = document["spec"]["template"]["spec"]
            name = spec["joinConfiguration"]["nodeRegistration"]["name"]
            spec["joinConfiguration"] = {
                "nodeRegistration": _registration(name),
                "patches": {"directory": PATCHES_DIR},
            }
            spec["files"] = _files()
    return documents


def sample_deployment() -> JSONDict:
    """:data:`SAMPLE`: etcd serving on its Pod IP, so its log (``kubectl logs``) and its port
    (reached from another node through the Pod routes) show a working Pod network."""
    labels = {"app": SAMPLE}
    container = {
        "name": SAMPLE,
        "image": image_refs()["etcd"],
        "imagePullPolicy": "Never",
        "command": [
            "/usr/local/bin/etcd",
            f"--name={SAMPLE}",
            "--data-dir=/var/lib/sample",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://$(POD_IP):2379",
        ],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/sample"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": SAMPLE, "namespace": "default", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "volumes": [{"name": "data", "emptyDir": {}}]},
            },
        },
    }


def is_ready(node: JSONDict) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def describe_objects(kubectl: Callable[..., str], namespace: str) -> str:
    """``kubectl describe`` of the Cluster API objects of ``namespace``: what a failed wait
    prints."""
    parts = []
    for kind in ("cluster", "kubeadmcontrolplane", "machine", "remotemachine"):
        try:
            parts.append(kubectl("describe", kind, "-n", namespace))
        except Exception as error:  # a diagnosis must not hide the real failure
            parts.append(f"(describe {kind}: {error})")
    return "\n".join(parts)


@attrs.define
class RealCluster:
    """The Cluster ``name`` in ``namespace``: the first host of ``fleet`` is the control-plane
    pool, the others the worker pool (``workers`` of them in the MachineDeployment, the rest
    spare for scaling up)."""

    plane: ControlPlane
    fleet: HostFleet
    namespace: str
    name: str
    workers: int
    #: ``time.monotonic()`` when the Cluster was applied.
    applied_at: float = 0.0

    @property
    def control_plane_host(self) -> Host:
        return self.fleet.hosts[0]

    @property
    def worker_hosts(self) -> list[Host]:
        return self.fleet.hosts[1:]

    @property
    def kubeconfig(self) -> Path:
        """Where the workload cluster's admin kubeconfig is written (from ``<name>-kubeconfig``)."""
        return self.plane.workdir / f"{self.name}-workload.kubeconfig"

    def host_spec(self, host: Host) -> JSONDict:
        return samples.host_spec(host.address, host.port)

    def objects(self) -> list[JSONDict]:
        """The pooled hosts and the topology Cluster (:meth:`apply` puts the ClusterClass first)."""
        pooled = [
            samples.pooled(host.name, self.namespace, pool, self.host_spec(host))
            for host, pool in [(self.control_plane_host, CONTROL_PLANE_POOL)]
            + [(host, WORKER_POOL) for host in self.worker_hosts]
        ]
        cluster = topology_cluster(
            self.name, self.namespace, (self.control_plane_host.address, API_SERVER_PORT),
            control_plane_pool=CONTROL_PLANE_POOL, worker_pool=WORKER_POOL, workers=self.workers,
        )  # fmt: skip
        # Without replicas in the topology, the MachineDeployment's replicas are not the
        # Cluster's: ``kubectl scale machinedeployment`` owns them (as an autoscaler would), and
        # the topology controller never reverts it. :meth:`apply` scales it to ``workers``.
        for deployment in cluster["spec"]["topology"]["workers"]["machineDeployments"]:
            deployment.pop("replicas", None)
        return [*pooled, cluster]

    def apply(self, progress: Callable[[str], None]) -> None:
        progress("applying the ClusterClass 'remote' (shipped, plus the node settings)")
        self.plane.apply(cluster_class(self.namespace))
        self.plane.kubectl(
            "wait", "-n", self.namespace, "clusterclass/remote", "--timeout=60s",
            "--for=condition=VariablesReady",
        )  # fmt: skip
        progress(f"applying the pooled hosts and the Cluster {self.name}")
        self.plane.apply(self.objects())
        self.applied_at = time.monotonic()
        progress(f"scaling the workers' MachineDeployment to {self.workers}")

        def deployment_exists() -> bool:
            return bool(self.plane.kubectl("get", "machinedeployments", *self._workers_selector))

        poll("the workers' MachineDeployment", deployment_exists, 60.0, self.diagnose, **_WAIT)
        self.scale(self.workers)

    @property
    def _workers_selector(self) -> tuple[str, ...]:
        return ("-n", self.namespace, "-l", f"cluster.x-k8s.io/cluster-name={self.name}",
                "-o", "name")  # fmt: skip

    def scale(self, replicas: int) -> None:
        """``kubectl scale machinedeployment``, as a user scales the workers."""
        self.plane.kubectl("scale", "machinedeployments", *self._workers_selector,
                           f"--replicas={replicas}")  # fmt: skip

    # -- the workload cluster ------------------------------------------------------------------

    def workload(self, *args: str, input_text: str | None = None) -> str:
        """kubectl against the workload cluster."""
        return self.plane.kubectl(f"--kubeconfig={self.kubeconfig}", *args, input_text=input_text)

    def diagnose(self) -> str:
        """The Cluster API objects of the namespace and each host's kubelet log tail."""
        parts = [describe_objects(self.plane.kubectl, self.namespace)]
        for host in self.fleet.hosts:
            log = host.exec_inside(["tail", "-n", "15", "/var/log/capi-node/kubelet.log"])
            parts.append(f"{host.name} kubelet:\n{log.stdout.decode(errors='replace')}")
        return "\n".join(parts)

    def _fetch_kubeconfig(self) -> bool:
        try:
            value = self.plane.kubectl(
                "get", "secret", "-n", self.namespace, f"{self.name}-kubeconfig",
                "-o", "jsonpath={.data.value}",
            )  # fmt: skip
        except ControlPlaneError:  # not created yet
            return False
        self.kubeconfig.touch(mode=0o600)  # an admin credential: never readable by others
        self.kubeconfig.write_bytes(base64.b64decode(value))
        return True

    def ready_nodes(self) -> list[JSONDict]:
        try:
            out = self.workload("get", "nodes", "-o", "json")
        except ControlPlaneError:  # the API server is not up yet
            return []
        return [n for n in json.loads(out)["items"] if is_ready(n)]

    def wait_ready(self, progress: Callable[[str], None], within: float = 600.0) -> list[JSONDict]:
        """The workload kubeconfig written, then every Node Ready (1 + ``workers``)."""
        started = self.applied_at or time.monotonic()

        def remaining() -> float:
            return max(1.0, within - (time.monotonic() - started))

        progress("waiting for the workload cluster's kubeconfig (kubeadm init on the first host)")
        poll("the workload kubeconfig", self._fetch_kubeconfig, remaining(), self.diagnose, **_WAIT)
        expected = 1 + self.workers

        def all_ready() -> list[JSONDict]:
            nodes = self.ready_nodes()
            progress(f"{len(nodes)} of {expected} Nodes Ready ({time.monotonic() - started:.0f} s)")
            return nodes if len(nodes) >= expected else []

        return poll(f"{expected} Nodes Ready", all_ready, remaining(), self.diagnose, **_WAIT)

    def deploy_sample(self, within: float = 180.0) -> JSONDict:
        """Apply :func:`sample_deployment`; its Pod once Running."""
        self.workload("apply", "-f", "-", input_text=json.dumps(sample_deployment()))

        def running() -> JSONDict | None:
            pods = json.loads(
                self.workload("get", "pods", "-n", "default", "-l", f"app={SAMPLE}", "-o", "json")
            )["items"]
            return next(
                (p for p in pods if (p.get("status") or {}).get("phase") == "Running"), None
            )

        return poll(f"the {SAMPLE} Pod Running", running, within, self.diagnose, **_WAIT)


def scale_command(kubeconfig: str, namespace: str, cluster: str, replicas: int) -> str:
    """The command a user scales the workers with (the MachineDeployment's name is the
    topology controller's, so it is selected by the Cluster's label)."""
    return (
        f"kubectl --kubeconfig {kubeconfig} scale machinedeployment -n {namespace} "
        f"-l cluster.x-k8s.io/cluster-name={cluster} --replicas={replicas}"
    )
