"""What a local environment costs: peak memory and CPU time of each node host (its cgroup subtree
holds every process of the host: kubelet, containerd, the containers) next to each management
process (etcd, kube-apiserver, kube-controller-manager, the Cluster API managers, our
controller). Printed by ``capi-remote dev up`` and the real-kubeadm e2e, row N1 of ``make bench``.

Peak memory of a host is its memory cgroup's ``max_usage_in_bytes`` (cgroup v1, as this VM runs;
it counts page cache too); of a process, its ``VmHWM`` (peak resident set).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import attrs

from capi_remote_testbed.hosts import Host
from capi_remote_testbed.hosts.cgroups import CGROUP_ROOT, PARENT
from capi_remote_testbed.processes import ManagedProcess


@attrs.frozen
class Usage:
    name: str
    peak_bytes: int
    cpu_seconds: float

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


def host_usage(host: Host) -> Usage:
    memory = CGROUP_ROOT / "memory" / PARENT / host.netns / "memory.max_usage_in_bytes"
    cpu = CGROUP_ROOT / "cpuacct" / PARENT / host.netns / "cpuacct.usage"
    return Usage(host.name, int(memory.read_text()), int(cpu.read_text()) / 1e9)


def process_usage(process: ManagedProcess) -> Usage | None:
    """None once the process is gone."""
    if process.pid is None or process.exit_code() is not None:
        return None
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except FileNotFoundError:
        return None
    hwm_kib = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")
    )
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return Usage(process.name, hwm_kib * 1024, cpu)


def total(usages: Iterable[Usage], name: str) -> Usage:
    items = list(usages)
    return Usage(name, sum(u.peak_bytes for u in items), sum(u.cpu_seconds for u in items))


def lines(workload: list[Usage], management: list[Usage]) -> list[str]:
    """One line per host and process, and a total per side."""
    out = []
    for title, usages in (("workload cluster (node hosts)", workload),
                          ("management plane (processes)", management)):  # fmt: skip
        out.append(f"{title}:")
        for usage in [*usages, total(usages, "total")]:
            out.append(
                f"  {usage.name:<28} peak {usage.peak_mib:7.0f} MiB  CPU {usage.cpu_seconds:7.1f} s"
            )
    return out
