"""The Pod network of the test bed's node: a network namespace of its own behind one veth.

Why a namespace: kube-proxy owns fixed iptables chains (``KUBE-SERVICES``, ...) and every control
plane of the test bed uses the same Service range, so two nodes in one network namespace (parallel
test sessions) would overwrite each other's rules. So the CNI bridge, the Pods' host-side veths,
kube-proxy and its iptables rules live in the namespace ``crn<k>``; containerd and the kubelet stay
in the machine's (``hostNetwork`` Pods keep reaching the test hosts' bridges, the API server keeps
reaching the kubelet on 127.0.0.1). containerd runs the ``bridge`` and ``portmap`` plugins through
``ip netns exec crn<k>`` wrappers, so their host side is in the node's namespace.

Invariants: slot ``k`` (a flock in the fleets' lock directory, see :mod:`.hosts.slots`) owns the
names ``crn<k>`` (namespace), ``crn<k>h`` (the machine's end of the veth), the Pod subnet
10.251.<k>.0/24 (the bridge is .1) and the link 10.252.<k>.0/30 (.1 the machine, .2 the node). The
machine routes only the Pod subnet to the node, so the API server and tests reach Pod IPs; Service
IPs are reached from Pods (the namespace's kube-proxy rules), not from the machine. Pods reach the
test hosts' bridges (a controller in a Pod provisions them): the machine masquerades what leaves
the Pod subnet for any other network (one ``nat POSTROUTING`` rule of the machine, commented
``crn<k>``), since the hosts route only their own /24. Deleting the namespace removes the bridge,
the veths, the routes and every iptables rule inside it; :meth:`NodeNetwork.close` removes the
machine's rule; namespaces and rules left by dead owners are swept whenever a node network is
allocated.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import attrs

from capi_remote_testbed.hosts.slots import release_slot, subnet_taken, try_lock_slot

MARKER = "crn"
MAX_SLOTS = 256
BRIDGE = "crnbr"  # inside the node's namespace, so one name serves every slot
NETWORK_NAME = "capi-remote-pods"
_NETNS_RE = re.compile(rf"^{MARKER}(\d{{1,3}})$")
# The plugins whose host side must be in the node's namespace; host-local only writes its own
# files, loopback only touches the Pod's namespace.
_NAMESPACED_PLUGINS = ("bridge", "portmap")
_PLAIN_PLUGINS = ("host-local", "loopback")


class NodeNetworkError(RuntimeError):
    """The node's network could not be set up; the message names the command and its error."""


def _ip(*args: str, netns: str | None = None) -> str:
    argv = ["ip", *(("netns", "exec", netns, "ip") if netns else ()), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeNetworkError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def netns_list() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


@attrs.define
class NodeNetwork:
    """One slot's namespace, veth and routes; :meth:`close` removes them and frees the slot."""

    slot: int
    _lock_fd: int | None

    @property
    def netns(self) -> str:
        return f"{MARKER}{self.slot}"

    @property
    def host_link(self) -> str:
        return f"{MARKER}{self.slot}h"

    @property
    def pod_subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.251.{self.slot}.0/24")

    @property
    def link_subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.252.{self.slot}.0/30")

    @property
    def host_address(self) -> str:
        """The machine's end of the link: what processes in the namespace connect to."""
        return str(self.link_subnet.network_address + 1)

    @property
    def node_address(self) -> str:
        return str(self.link_subnet.network_address + 2)

    def create(self) -> None:
        _remove_netns(self.netns)  # a dead owner's leftover
        node_link = f"{MARKER}{self.slot}n"
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", node_link)
        _ip("link", "set", node_link, "netns", self.netns)
        _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        _ip("addr", "add", f"{self.node_address}/30", "dev", node_link, netns=self.netns)
        _ip("link", "set", node_link, "up", netns=self.netns)
        _ip("link", "set", "lo", "up", netns=self.netns)
        _ip("route", "add", "default", "via", self.host_address, netns=self.netns)
        _ip("route", "add", str(self.pod_subnet), "via", self.node_address)
        # Per-namespace sysctl: the node forwards between its veth and the Pods' bridge.
        self.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        _iptables("-A", *self._masquerade_rule)

    @property
    def _masquerade_rule(self) -> tuple[str, ...]:
        subnet = str(self.pod_subnet)
        return ("POSTROUTING", "-s", subnet, "!", "-d", subnet, *_comment(self.netns))

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the node's namespace."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise NodeNetworkError(f"`{' '.join(argv)}` in {self.netns}: {proc.stderr.strip()}")
        return proc

    def exec_argv(self, *argv: str) -> list[str]:
        """``argv`` as a command line that runs inside the node's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def write_cni(self, cni_bin_dir: Path, bin_dir: Path, conf_dir: Path, ipam_dir: Path) -> None:
        """containerd's CNI directories: the wrappers (or links) of the plugins and one network,
        bridge + host-local + portmap (containerd adds loopback itself)."""
        bin_dir.mkdir(parents=True, exist_ok=True)
        conf_dir.mkdir(parents=True, exist_ok=True)
        for plugin in _NAMESPACED_PLUGINS:
            wrapper = bin_dir / plugin
            wrapper.write_text(
                f'#!/bin/sh\nexec ip netns exec {self.netns} "{cni_bin_dir / plugin}" "$@"\n'
            )
            wrapper.chmod(0o755)
        for plugin in _PLAIN_PLUGINS:
            (bin_dir / plugin).symlink_to(cni_bin_dir / plugin)
        gateway = str(self.pod_subnet.network_address + 1)
        network = {
            "cniVersion": "1.0.0",
            "name": NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(ipam_dir),
                        "ranges": [[{"subnet": str(self.pod_subnet), "gateway": gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (conf_dir / "10-capi-remote-pods.conflist").write_text(json.dumps(network, indent=2))

    def close(self) -> None:
        _remove_netns(self.netns)
        _remove_masquerade(self.netns)
        if self._lock_fd is not None:
            release_slot(self.slot, self._lock_fd, MARKER)
            self._lock_fd = None


def _remove_netns(name: str) -> None:
    """Kill what still runs in the namespace ``name``, then delete it (and with it its links,
    routes and iptables rules)."""
    if name not in netns_list():
        return
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name)


def _comment(netns: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", netns, "-j", "MASQUERADE")


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["iptables", "-w", "-t", "nat", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeNetworkError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc


def _masquerade_rules() -> dict[str, list[list[str]]]:
    """The machine's masquerade rules of node networks, by the namespace their comment names."""
    rules: dict[str, list[list[str]]] = {}
    for line in _iptables("-S", "POSTROUTING", check=False).stdout.splitlines():
        words = line.split()
        if words[:1] != ["-A"] or "--comment" not in words:
            continue
        owner = words[words.index("--comment") + 1]
        if _NETNS_RE.match(owner):
            rules.setdefault(owner, []).append(words[1:])
    return rules


def _remove_masquerade(netns: str) -> None:
    for rule in _masquerade_rules().get(netns, []):
        _iptables("-D", *rule, check=False)


def sweep() -> list[str]:
    """Delete the namespaces and the machine's masquerade rules of node networks whose owner died
    (no live process holds their slot's lock); returns their names."""
    removed = []
    for name in sorted({*netns_list(), *_masquerade_rules()}):
        match = _NETNS_RE.match(name)
        if match is None:
            continue
        slot = int(match.group(1))
        fd = try_lock_slot(slot, MARKER)
        if fd is None:
            continue
        try:
            _remove_netns(name)
            _remove_masquerade(name)
            removed.append(name)
        finally:
            release_slot(slot, fd, MARKER)
    return removed


def allocate() -> NodeNetwork:
    """Take a free slot (its lock held until :meth:`NodeNetwork.close`) and create its network,
    after sweeping what crashed runs left."""
    sweep()
    for slot in range(MAX_SLOTS):
        fd = try_lock_slot(slot, MARKER)
        if fd is None:
            continue
        network = NodeNetwork(slot, fd)
        taken = subnet_taken(network.pod_subnet) or subnet_taken(network.link_subnet)
        if taken and f"{MARKER}{slot}" not in netns_list():
            release_slot(slot, fd, MARKER)
            continue
        try:
            network.create()
        except BaseException:
            network.close()
            raise
        return network
    raise NodeNetworkError(f"no free node network slot among {MAX_SLOTS}")


def kube_proxy_config(network: NodeNetwork, kubeconfig: Path, hostname: str) -> dict[str, object]:
    """kube-proxy in iptables mode, inside the node's namespace. Every Service connection is
    masqueraded (a Pod reaching itself through its Service, hairpin, needs no br_netfilter);
    nothing machine-wide is touched: no conntrack table sizing, no ``route_localnet``."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": hostname,
        "clusterCIDR": str(network.pod_subnet),
        "healthzBindAddress": "127.0.0.1:10256",  # the namespace's loopback: private
        "metricsBindAddress": "127.0.0.1:10249",
        "oomScoreAdj": 0,
        "iptables": {
            "masqueradeAll": True,
            "localhostNodePorts": False,
            "syncPeriod": "30s",
            "minSyncPeriod": "0s",
        },
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
