"""The images ``kubeadm init``/``join`` runs, made here from the pinned binaries because no
registry is reachable: kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, etcd,
CoreDNS and the sandbox (pause), plus, for tests, a network probe of ours
(:data:`NETPROBE_IMAGE`). Each has one layer holding its static binary at ``/usr/local/bin`` and
is tagged under :data:`IMAGE_REPOSITORY` (the ``imageRepository`` a KubeadmControlPlane names).
kube-proxy's image has a second layer below its binary: Debian's iptables
(:mod:`capi_remote_testbed.iptablestree`), which it runs in iptables mode.

Tags: the Kubernetes images carry :data:`KUBERNETES_VERSION` and CoreDNS :data:`COREDNS_VERSION`
(what kubeadm asks for); etcd and pause carry our own versions (:data:`ETCD_IMAGE_TAG`,
:data:`PAUSE_IMAGE`), never the upstream tags kubeadm defaults to, because they are not those
images: the ClusterConfiguration names the etcd tag and containerd's ``sandbox_image`` names the
pause image. (CoreDNS is CoreDNS at kubeadm's version, with fewer plugins: toolchain/coredns.)

Invariant: like :mod:`capi_remote_testbed.nodeimages`, the archive's name carries a hash of its
recipe and of the binaries' cache directories (their pins) and it appears atomically under a lock.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from capi_remote_testbed import iptablestree, toolchain
from capi_remote_testbed.locks import build_once, recipe_hash
from capi_remote_testbed.nodeimages import write_binary_images
from capi_remote_testbed.toolchain import (
    COREDNS_VERSION,
    ETCD_VERSION,
    KUBERNETES_VERSION,
    cache_root,
)

IMAGE_REPOSITORY = "registry.capi-remote.test/k8s"
ETCD_IMAGE_TAG = ETCD_VERSION
PAUSE_IMAGE = f"{IMAGE_REPOSITORY}/pause:capi-remote-v1"
#: Not kubeadm's: what tests run in a Pod to probe DNS and Services (toolchain/netprobe).
NETPROBE_IMAGE = f"{IMAGE_REPOSITORY}/netprobe:capi-remote-v1"
#: Bump when the recipe below changes.
RECIPE_VERSION = 2


def _binaries(log: Callable[[str], None]) -> dict[str, Path]:
    """Image name (without repository) -> the binary it runs."""
    control_plane = toolchain.ensure(log=log)
    node = toolchain.ensure_node(log=log)
    return {
        "kube-apiserver": control_plane.kube_apiserver,
        "kube-controller-manager": control_plane.kube_controller_manager,
        "kube-scheduler": node.kube_scheduler,
        "kube-proxy": node.kube_proxy,
        "etcd": control_plane.etcd,
        "pause": node.pause,
        "coredns": toolchain.ensure_binary(toolchain.COREDNS, log),
        "netprobe": toolchain.ensure_binary(toolchain.NETPROBE, log),
    }


def image_refs() -> dict[str, str]:
    """Image name -> full reference, as kubeadm (and containerd, for pause) asks for them."""
    refs = {
        name: f"{IMAGE_REPOSITORY}/{name}:{KUBERNETES_VERSION}"
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
    }
    refs["etcd"] = f"{IMAGE_REPOSITORY}/etcd:{ETCD_IMAGE_TAG}"
    refs["coredns"] = f"{IMAGE_REPOSITORY}/coredns:{COREDNS_VERSION}"
    refs["netprobe"] = NETPROBE_IMAGE
    refs["pause"] = PAUSE_IMAGE
    return refs


def build_archive(path: Path, binaries: dict[str, Path]) -> None:
    """An OCI archive with one image per binary (``/usr/local/bin/<binary>``, its entrypoint),
    kube-proxy's over iptables."""
    refs = image_refs()
    work = Path(tempfile.mkdtemp(prefix=".iptables-", dir=path.parent))
    try:
        iptables = iptablestree.build_tree(work / "tree")
        write_binary_images(
            path,
            [
                (refs[name], binary, f"usr/local/bin/{binary.name}")
                for name, binary in sorted(binaries.items())
            ],
            bases={refs["kube-proxy"]: iptables},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_archive(log: Callable[[str], None] = print) -> Path:
    """The cached OCI archive of kubeadm's images (built on a miss)."""
    binaries = _binaries(log)
    recipe = recipe_hash(
        str(RECIPE_VERSION),
        *(f"{n}={p}" for n, p in sorted(binaries.items())),
        *sorted(image_refs().values()),
        iptablestree.package_versions(),
    )
    images = cache_root() / "images"
    return build_once(
        images / f"kubeadm-images-{recipe}.oci.tar", lambda path: build_archive(path, binaries), log
    )
