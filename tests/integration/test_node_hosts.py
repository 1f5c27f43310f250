"""Hosts prepared as nodes (``HostFleet(nodes=True)``): kubeadm's images are in each host's own
containerd, the node supervisor answers ``systemctl`` as kubeadm expects (start, restart after an
exit, stop, enable, unknown units), each host runs in its own cgroup subtree seen as ``/`` from
inside, and closing the fleet leaves no process, cgroup, netns or directory behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from capi_remote_testbed.hosts import Host, HostFleet, fleet_leftovers
from capi_remote_testbed.hosts.cgroups import PARENT, hierarchies
from capi_remote_testbed.kubeadmimages import image_refs

pytestmark = pytest.mark.integration


def _run(host: Host, *argv: str) -> tuple[int, str]:
    result = host.exec_inside(list(argv))
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def _pids(host: Host, name: str) -> list[str]:
    return _run(host, "pgrep", "-x", name)[1].split()


def _wait(host: Host, probe: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not probe():
        assert time.monotonic() < deadline, f"{host.name}: {what}"
        time.sleep(0.2)


def test_a_node_host_is_supervised_private_and_leaves_nothing(host_rootfs: Path) -> None:
    fleet = HostFleet(2, rootfs=host_rootfs, nodes=True, ready_timeout=120)
    with fleet:
        host, other = fleet.hosts
        code, images = _run(host, "ctr", "-n", "k8s.io", "images", "ls", "-q")
        assert code == 0 and set(image_refs().values()) <= set(images.split())

        assert _run(host, "systemctl", "is-active", "containerd") == (0, "active\n")
        assert _run(host, "systemctl", "is-active", "kubelet") == (3, "inactive\n")
        assert _run(host, "systemctl", "is-enabled", "kubelet") == (1, "disabled\n")
        code, out = _run(host, "systemctl", "status", "nosuch.service")
        assert code == 4 and "could not be found" in out

        # kubeadm's sequence: enable, (re)start; the kubelet has no configuration yet, so it exits
        # and the supervisor starts it again, with the command line of kubeadm's drop-in.
        assert _run(host, "systemctl", "enable", "--now", "kubelet.service")[0] == 0
        assert _run(host, "systemctl", "is-enabled", "kubelet") == (0, "enabled\n")
        log = host.path("/var/log/capi-node/kubelet.log")
        _wait(host, lambda: log.read_text().count("nodesupervisor: starting") >= 2, "restart")
        assert "--config=/var/lib/kubelet/config.yaml" in log.read_text()
        assert _run(host, "systemctl", "stop", "kubelet") == (0, "")  # silent, like systemd
        assert not _pids(host, "kubelet")
        assert not _pids(other, "kubelet")  # nothing leaked into the other host

        # Its own cgroup subtree: '/' from inside, capi-remote-hosts/<netns> from the machine.
        (containerd,) = _pids(host, "containerd")
        code, inside = _run(host, "cat", f"/proc/{containerd}/cgroup")
        assert code == 0 and all(line.endswith(":/") for line in inside.splitlines()), inside
        for hierarchy in hierarchies():
            procs = (hierarchy / PARENT / host.netns / "cgroup.procs").read_text().split()
            assert str(host.init_pid) in procs, hierarchy
        assert _run(host, "ls", "/sys/fs/cgroup/memory/memory.limit_in_bytes")[0] == 0
        prefix = fleet.prefix

    assert fleet_leftovers(prefix) == []
    assert not [p for h in hierarchies() for p in h.glob(f"{PARENT}/{prefix}-*")]
