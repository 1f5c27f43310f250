"""What a node host needs once it runs: kubeadm's images in its containerd (no registry is
reachable), imported from the archive its node layer carries, as an operator preloads images.

Invariant: a node host is handed out only after its containerd answers and holds every image.
"""

from __future__ import annotations

import time

from capi_remote_testbed.hosts.host import Host
from capi_remote_testbed.hosts.nodelayer import IMAGES_ARCHIVE
from capi_remote_testbed.hosts.system import HostError

CTR = ("ctr", "--namespace", "k8s.io")


def wait_containerd(host: Host, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = host.exec_inside([*CTR, "version"], timeout=10)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            log = host.exec_inside(["tail", "-n", "20", "/var/log/capi-node/containerd.log"])
            raise HostError(
                f"{host.name}: containerd not answering after {timeout:.0f} s: "
                f"{result.stderr.decode(errors='replace')}\n{log.stdout.decode(errors='replace')}"
            )
        time.sleep(0.1)


def import_images(host: Host) -> None:
    """Import kubeadm's images (unpacked on first use by the CRI plugin)."""
    wait_containerd(host)
    result = host.exec_inside(
        [*CTR, "images", "import", "--no-unpack", IMAGES_ARCHIVE], timeout=300
    )
    if result.returncode != 0:
        raise HostError(
            f"{host.name}: importing {IMAGES_ARCHIVE} failed: "
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
