"""One real Kubernetes node for the local control plane: containerd + runc, kubelet,
kube-scheduler and kube-proxy, so Jobs (provisionJob mode) and Pods behind Services really run.

Why it looks the way it does:

- No container registry is reachable. The images a Pod needs are made here and imported into
  containerd (:mod:`capi_remote_testbed.nodeimages`); Pods must use ``imagePullPolicy: Never``
  or ``IfNotPresent``.
- Pod networking (:mod:`capi_remote_testbed.nodenet`): the CNI plugins bridge, host-local,
  loopback and portmap give each Pod an IP of the node's own subnet, in a network namespace of the
  node's own, where kube-proxy (iptables mode) makes Service IPs work for Pods. The machine (so the
  API server) reaches Pod IPs. ``hostNetwork: true`` Pods still share the machine's network (they
  reach the namespaced test hosts on their bridge like the controller does).
- The sandbox image is our own ``pause`` binary (``toolchain/pause``), nothing is pulled.
- This VM runs cgroup v1, which kubelet 1.35 refuses unless ``failCgroupV1: false``; QoS cgroups
  and node allocatable enforcement are off (``cgroupsPerQOS: false``), nothing is evicted.
- Everything is private to one instance: containerd's root, state and socket, kubelet's root
  directory, its pod logs and ports, its network namespace, bridge, Pod subnet and iptables rules,
  so parallel test sessions do not meet. :meth:`Node.stop` leaves no process, mount, network
  namespace or link behind. The kubelet authenticates with a client certificate in
  ``system:masters`` (the apiserver runs RBAC only, without the Node authorizer); the API server
  reaches the kubelet on its node IP with its kubelet client certificate (logs, exec).

``start_node(plane)`` starts one against a :class:`ControlPlane`; ``python -m
capi_remote_testbed.node images`` builds (or finds) the image archive and prints its path.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import yaml

from capi_remote_testbed import toolchain
from capi_remote_testbed.containerdconfig import cri_plugin
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.net import free_port, http_ok
from capi_remote_testbed.nodeimages import PAUSE_IMAGE, ensure_image_archive, image_identity
from capi_remote_testbed.nodenet import NodeNetwork, allocate, kube_proxy_config
from capi_remote_testbed.processes import ManagedProcess
from capi_remote_testbed.tcpproxy import TcpProxy
from capi_remote_testbed.toolchain import NodeBinaries

NODE_NAME = "capi-remote-node"
APT_PACKAGES = ("containerd", "runc")
# Where containerd 1.6 mounts the Pods' network namespaces (machine-wide; ours are found through
# our containers' specs).
_SANDBOX_NETNS_DIRS = ("/var/run/netns/", "/run/netns/")


#: What the kubelet needs on this VM (cgroup v1, cgroupfs, no QoS cgroups, evictions and image GC
#: effectively off): the kubelets of the hosts prepared as nodes get the same through kubeadm.
KUBELET_ON_THIS_VM: dict[str, object] = {
    "failCgroupV1": False,
    "cgroupDriver": "cgroupfs",
    "cgroupsPerQOS": False,
    "enforceNodeAllocatable": [],
    "failSwapOn": False,
    "localStorageCapacityIsolation": False,
    "evictionHard": {
        "memory.available": "1Mi",
        "nodefs.available": "1%",
        "imagefs.available": "1%",
        "nodefs.inodesFree": "1%",
    },
    "imageGCHighThresholdPercent": 100,
    "imageGCLowThresholdPercent": 99,
}


class NodeError(RuntimeError):
    """containerd, kubelet or the scheduler failed to start; the message carries a log tail."""


# -- the node ----------------------------------------------------------------------------------


def _missing_packages() -> list[str]:
    return [tool for tool in ("containerd", "runc", "ctr") if shutil.which(tool) is None]


@attrs.define
class Node:
    """containerd, kube-scheduler and kubelet against one control plane; :meth:`stop` removes
    every container and mount it made."""

    binaries: NodeBinaries
    kubeconfig: Path  # the control plane's admin kubeconfig (scheduler, readiness checks)
    kubectl: Path
    kubelet_kubeconfig: Path  # a system:masters client identity for the kubelet
    ca_file: Path
    workdir: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="capi-remote-node-")))
    name: str = NODE_NAME
    ready_timeout: float = 120.0
    network: NodeNetwork | None = attrs.field(default=None, init=False)
    #: The public key of the tsh image's own identity (``nodeimages.TSH_IMAGE``), once started.
    image_identity: str = attrs.field(default="", init=False)
    _processes: list[ManagedProcess] = attrs.field(factory=list, init=False)
    _apiserver_proxy: TcpProxy | None = attrs.field(default=None, init=False)

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def apiserver_endpoint(self) -> tuple[str, int]:
        """Where the node's network namespace reaches the API server (a forwarder on the
        machine's end of the node's link): kube-proxy's, and the ``kubernetes`` Service's
        endpoint for Pods (:mod:`capi_remote_testbed.incluster`)."""
        if self._apiserver_proxy is None:
            raise NodeError("the node is not started")
        return self._apiserver_proxy.address

    def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        missing = _missing_packages()
        if missing:
            raise NodeError(
                f"{', '.join(missing)} not found: install the Debian packages "
                f"{' '.join(APT_PACKAGES)} (`make system-deps`)"
            )
        try:
            progress("node network")
            self.network = allocate()
            progress("containerd")
            self._start_containerd(self.network)
            progress("node images")
            archive = ensure_image_archive(self.binaries.pause, progress)
            self._import_images(archive)
            self.image_identity = image_identity(archive)
            progress("kube-scheduler")
            self._start_scheduler()
            progress("kubelet")
            self._start_kubelet(self.network)
            progress("kube-proxy")
            self._start_kube_proxy(self.network)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in ("kube-proxy", "kubelet"):
            process = next((p for p in self._processes if p.name == name), None)
            if process is not None:
                process.stop()
        sandbox_netns: list[str] = []
        if self.containerd_socket.exists():
            sandbox_netns = self._remove_all_containers()
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        for path in sandbox_netns:
            subprocess.run(["umount", path], capture_output=True, check=False)
            Path(path).unlink(missing_ok=True)
        if self._apiserver_proxy is not None:
            self._apiserver_proxy.close()
            self._apiserver_proxy = None
        if self.network is not None:
            self.network.close()
            self.network = None
        self._unmount_below(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- containerd ------------------------------------------------------------------------

    def _containerd_config(self, network: NodeNetwork) -> str:
        base = self.workdir / "containerd"
        cni = self.workdir / "cni"
        network.write_cni(self.binaries.cni_bin_dir, cni / "bin", cni / "net.d", cni / "ipam")
        return f"""\
version = 2
root = "{base / "root"}"
state = "{base / "state"}"

[grpc]
  address = "{self.containerd_socket}"

""" + cri_plugin(PAUSE_IMAGE, str(cni / "bin"), str(cni / "net.d"))

    def _start_containerd(self, network: NodeNetwork) -> None:
        config = self.workdir / "containerd.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(self._containerd_config(network))
        process = self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait(process, lambda: self._ctr("version", check=False).returncode == 0, "containerd")

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args[:2])} failed: {proc.stderr.strip()[-2000:]}")
        return proc

    def _import_images(self, archive: Path) -> None:
        self._ctr("images", "import", "--no-unpack", "--all-platforms", str(archive))

    def import_images(self, archive: Path) -> None:
        """Import an image archive (OCI layout or ``podman save`` output) for Pods to run."""
        self._ctr("images", "import", str(archive))

    def _remove_all_containers(self) -> list[str]:
        """Kill and delete every task and container the kubelet left, so no shim, overlay mount
        or process outlives the node; returns the Pods' network namespaces (their mount points),
        which containerd no longer removes once its sandboxes are gone this way."""
        sandbox_netns = self.pod_network_namespaces()
        tasks = self._ctr("tasks", "list", "-q", check=False).stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 10
        for task in tasks:
            while time.monotonic() < deadline:
                if self._ctr("tasks", "delete", "-f", task, check=False).returncode == 0:
                    break
                time.sleep(0.2)
        for container in self._ctr("containers", "list", "-q", check=False).stdout.split():
            self._ctr("containers", "delete", container, check=False)
        return sandbox_netns

    def pod_network_namespaces(self) -> list[str]:
        """The mount points of this node's Pods' network namespaces (from its containers' specs)."""
        containers = self._ctr("containers", "list", "-q", check=False).stdout.split()
        return sorted({path for c in containers for path in self._netns_of(c)})

    def _netns_of(self, container: str) -> list[str]:
        info = self._ctr("containers", "info", container, check=False).stdout
        try:
            namespaces = json.loads(info)["Spec"]["linux"]["namespaces"]
        except (ValueError, KeyError, TypeError):
            return []
        return [
            ns["path"]
            for ns in namespaces
            if ns.get("type") == "network"
            and str(ns.get("path", "")).startswith(_SANDBOX_NETNS_DIRS)
        ]

    @staticmethod
    def _unmount_below(directory: Path) -> None:
        prefix = str(directory) + "/"
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
        for target in sorted(targets, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)

    # -- kube-scheduler and kubelet ----------------------------------------------------------

    def _start_scheduler(self) -> None:
        port = free_port()
        config = self.workdir / "scheduler.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.kubeconfig)},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        process = self._spawn(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--config={config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
            ],
        )
        # The scheduler serves /healthz with a self-signed certificate of its own.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            process,
            lambda: http_ok(f"https://127.0.0.1:{port}/healthz", context=insecure),
            "kube-scheduler",
        )

    def _start_kubelet(self, network: NodeNetwork) -> None:
        """The kubelet listens on the machine's end of the node's link, its node IP: the API
        server reaches it there (logs, exec) with its kubelet client certificate."""
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            **KUBELET_ON_THIS_VM,
            "address": network.host_address,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "podLogsDir": str(self.workdir / "pod-logs"),
            "staticPodPath": "",
            "registerNode": True,
            "imageMinimumGCAge": "876000h",
            "serializeImagePulls": False,
            "makeIPTablesUtilChains": False,
            "resolvConf": "/etc/resolv.conf",
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
        }
        config_path = self.workdir / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        process = self._spawn(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={config_path}",
                f"--kubeconfig={self.kubelet_kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={network.host_address}",
                "--v=2",
            ],
        )
        self._wait(process, self._node_ready, f"node {self.name} Ready")
        # The kubelet registers with this taint and kube-controller-manager's node lifecycle
        # controller (not run by the test bed) would lift it once the node is Ready.
        subprocess.run(
            [
                str(self.kubectl),
                f"--kubeconfig={self.kubeconfig}",
                "taint",
                "node",
                self.name,
                "node.kubernetes.io/not-ready:NoSchedule-",
            ],
            capture_output=True,
            check=False,
        )

    def _start_kube_proxy(self, network: NodeNetwork) -> None:
        """kube-proxy inside the node's namespace; it reaches the API server (127.0.0.1 of the
        machine) through a forwarder on the machine's end of the node's link."""
        kubeconfig = yaml.safe_load(self.kubelet_kubeconfig.read_text())
        cluster = kubeconfig["clusters"][0]["cluster"]
        apiserver = cluster["server"].removeprefix("https://").rsplit(":", 1)
        self._apiserver_proxy = TcpProxy(
            (apiserver[0], int(apiserver[1])), listen_host=network.host_address
        )
        host, port = self._apiserver_proxy.start()
        cluster["server"] = f"https://{host}:{port}"
        cluster["tls-server-name"] = "localhost"  # a name of the API server's certificate
        proxy_kubeconfig = self.workdir / "kube-proxy.kubeconfig"
        proxy_kubeconfig.touch(mode=0o600)
        proxy_kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(kube_proxy_config(network, proxy_kubeconfig, self.name)))
        process = self._spawn(
            "kube-proxy",
            network.exec_argv(str(self.binaries.kube_proxy), f"--config={config}", "--v=2"),
        )
        # Its first full sync creates the chain.
        probe = ("iptables", "-t", "nat", "-S", "KUBE-SERVICES")
        self._wait(process, lambda: network.run(*probe, check=False).returncode == 0, "kube-proxy")

    def _node_ready(self) -> bool:
        proc = subprocess.run(
            [
                str(self.kubectl),
                f"--kubeconfig={self.kubeconfig}",
                "get",
                "node",
                self.name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.stdout.strip() == "True"

    # -- plumbing --------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log")
        process.start()
        self._processes.append(process)
        return process

    def _wait(self, process: ManagedProcess, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        delay = 0.05
        while True:
            if process.exit_code() is not None:
                raise NodeError(f"{what} did not start: {process.describe_failure()}")
            if probe():
                return
            if time.monotonic() > deadline:
                raise NodeError(
                    f"{what} not ready after {self.ready_timeout:.0f}s: "
                    f"{process.describe_failure()}"
                )
            time.sleep(delay)
            delay = min(1.0, delay * 2)


def start_node(
    plane: ControlPlane,
    progress: Callable[[str], None] = lambda _: None,
    *,
    ready_timeout: float = 120.0,
    name: str = NODE_NAME,
) -> Node:
    """Build (or find) the node's binaries and start a node called ``name`` for ``plane``
    (a second node on one plane also brings a second scheduler: bind its Pods with ``nodeName``)."""
    binaries = toolchain.ensure_node(log=progress)
    workdir = Path(tempfile.mkdtemp(prefix="capi-remote-node-"))
    identity = plane.ca.issue(f"system:node:{name}", organizations=("system:masters",), client=True)
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"][0]["user"] = {
        "client-certificate-data": base64.b64encode(identity.cert_pem).decode(),
        "client-key-data": base64.b64encode(identity.key_pem).decode(),
    }
    kubeconfig = workdir / "kubelet.kubeconfig"
    kubeconfig.touch(mode=0o600)
    kubeconfig.write_text(yaml.safe_dump(config))
    ca_file = workdir / "ca.crt"
    ca_file.write_bytes(plane.ca.cert_pem)
    node = Node(
        binaries,
        plane.kubeconfig,
        plane.toolchain.kubectl,
        kubeconfig,
        ca_file,
        workdir=workdir,
        name=name,
        ready_timeout=ready_timeout,
    )
    node.start(progress)
    return node


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["images"]:
        print("usage: python -m capi_remote_testbed.node images", file=sys.stderr)
        return 2
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    print(ensure_image_archive(toolchain.ensure_node(log).pause, log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
