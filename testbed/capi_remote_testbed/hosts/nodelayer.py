"""The overlay layer that lets a test host become a real Kubernetes node, prepared the way an
operator prepares a bare machine before Cluster API bootstraps it: containerd and runc (this
machine's Debian packages), kubeadm, kubelet and kubectl (the pinned builds), the CNI plugins,
kubeadm's images as an archive to import, and the node supervisor that stands in for systemd
(``/usr/local/sbin/capi-node-supervisor``, also installed as ``/usr/bin/systemctl``).

Built once into the cache and shared read-only by every node host (an overlay lower layer, like
the rootfs); what differs per host (its Pod subnet's CNI configuration) goes into the host's own
upper layer (:func:`write_host_files`).

Invariant: the layer's name carries a hash of everything in it (the binaries' cache directories,
the packages' versions, the recipe), and it appears atomically under a lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from capi_remote_testbed import kubeadmimages, toolchain
from capi_remote_testbed.containerdconfig import cri_plugin
from capi_remote_testbed.hosts.layers import make_dir, write_file
from capi_remote_testbed.locks import build_once, recipe_hash

#: Bump when the recipe below changes.
RECIPE_VERSION = 1
#: Where the image archive lies inside a node host; imported into containerd after boot.
IMAGES_ARCHIVE = "/usr/share/capi-node/images.oci.tar"
SUPERVISOR = "/usr/local/sbin/capi-node-supervisor"
#: Pod subnet of host ``i`` of a fleet: 10.244.<i>.0/24 (private to the fleet's bridge).
POD_SUBNET_PREFIX = "10.244"
PACKAGE_BINARIES = {
    "usr/bin/containerd": "containerd",
    "usr/bin/containerd-shim-runc-v2": "containerd-shim-runc-v2",
    "usr/bin/ctr": "ctr",
    "usr/sbin/runc": "runc",
}

_CONTAINERD_CONFIG = """\
# containerd of a capi-remote test node (written by capi_remote_testbed/hosts/nodelayer.py).
# Defaults otherwise: root /var/lib/containerd (a tmpfs of the host's own, so the overlayfs
# snapshotter works inside the host's overlay root), socket /run/containerd/containerd.sock.
version = 2

""" + cri_plugin(kubeadmimages.PAUSE_IMAGE, "/opt/cni/bin", "/etc/cni/net.d")


def _package_binaries() -> dict[str, Path]:
    found = {}
    for inside, name in PACKAGE_BINARIES.items():
        path = shutil.which(name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
        if path is None:
            raise FileNotFoundError(
                f"{name} not found: install the Debian packages containerd and runc "
                "(`make system-deps`)"
            )
        found[inside] = Path(path)
    return found


def _package_versions() -> str:
    proc = subprocess.run(
        ["dpkg-query", "-W", "containerd", "runc"], capture_output=True, text=True, check=False
    )
    return proc.stdout


def _contents(log: Callable[[str], None]) -> dict[str, Path]:
    """Path inside the host -> the file on this machine it is a copy of."""
    kubeadm = toolchain.ensure_kubeadm(log)
    control_plane = toolchain.ensure(log)
    node = toolchain.ensure_node(log)
    supervisor = toolchain.ensure_node_supervisor(log)
    files = {
        **_package_binaries(),
        "usr/bin/kubeadm": kubeadm,
        "usr/bin/kubelet": node.kubelet,
        "usr/bin/kubectl": control_plane.kubectl,
        SUPERVISOR.lstrip("/"): supervisor,
        "usr/bin/systemctl": supervisor,
        IMAGES_ARCHIVE.lstrip("/"): kubeadmimages.ensure_archive(log),
    }
    for plugin in sorted(node.cni_bin_dir.iterdir()):
        files[f"opt/cni/bin/{plugin.name}"] = plugin
    return files


def _build(layer: Path, contents: dict[str, Path]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{layer.name}-", dir=layer.parent))
    try:
        staging.chmod(0o755)
        for inside, source in contents.items():
            target = staging / inside
            make_dir(target.parent)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        for directory in ("var/lib/containerd", "etc/cni/net.d", "etc/kubernetes/patches"):
            make_dir(staging / directory)
        make_dir(staging / "etc/containerd")
        write_file(staging / "etc/containerd/config.toml", _CONTAINERD_CONFIG)
        make_dir(staging / "etc/capi-node/enabled")
        write_file(staging / "etc/capi-node/enabled/containerd", "")
        staging.rename(layer)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_node_layer(log: Callable[[str], None] = print) -> Path:
    """The cached node layer (built on a miss, with every binary it needs)."""
    contents = _contents(log)
    digest = recipe_hash(
        str(RECIPE_VERSION),
        _CONTAINERD_CONFIG,
        _package_versions(),
        *(f"{inside}={source}" for inside, source in sorted(contents.items())),
    )
    root = toolchain.cache_root() / "node-layer"
    return build_once(root / f"node-{digest}", lambda layer: _build(layer, contents), log)


def pod_subnet(index: int) -> str:
    return f"{POD_SUBNET_PREFIX}.{index}.0/24"


def write_host_files(upper: Path, index: int, nameserver: str) -> None:
    """Host ``index``'s CNI configuration (a bridge with its own Pod subnet, the gateway on it)
    and its resolver: an operator's machine has one, and kubeadm's CoreDNS forwards to the
    nameservers of the node's /etc/resolv.conf (it refuses to start without one). The fleet passes
    the machine's bridge address, where no DNS server listens: lookups of outside names are
    refused at once (an unanswered address would make the kubelet wait 10 s at start)."""
    conflist = {
        "cniVersion": "1.0.0",
        "name": "capi-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,  # no iptables on the hosts; other hosts route Pod subnets
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_subnet(index)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    make_dir(upper / "etc/cni/net.d")
    write_file(upper / "etc/cni/net.d/10-capi-node.conflist", json.dumps(conflist, indent=2))
    write_file(upper / "etc/resolv.conf", f"nameserver {nameserver}\n")
