"""A node host's private cgroup subtree: ``<hierarchy>/capi-remote-hosts/<netns name>`` in every
cgroup hierarchy of this machine, entered before the host's PID 1 starts in a cgroup namespace
rooted there, so the host's kubelet and containers see that subtree as ``/`` and nothing else.

Invariants: every directory made here is named after its host's netns (``crt<k>-h<i>``), so
:func:`slot_cgroups` finds a crashed run's leftovers; :func:`remove` deletes bottom-up, and only
once the host's processes are gone (a cgroup with tasks cannot be removed).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from capi_remote_testbed.hosts.names import slot_of

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "capi-remote-hosts"


def mounts() -> list[tuple[Path, str, str]]:
    """(mount point, type, options) of this machine's cgroup hierarchies (v1 controllers and the
    v2 one); a node host mounts the same inside its cgroup namespace (``ip netns exec`` remounts
    /sys, so the host's PID 1 cannot read them itself)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2") and fields[1].startswith(f"{CGROUP_ROOT}/"):
            found.append((Path(fields[1]), fields[2], fields[3]))
    return found


def mounts_file() -> str:
    """:func:`mounts` as the lines the host's PID 1 reads: ``<point> <type> <options>``."""
    return "".join(f"{point} {kind} {options}\n" for point, kind, options in mounts())


def hierarchies() -> list[Path]:
    return [point for point, _kind, _options in mounts()]


def _make(path: Path) -> None:
    """mkdir a cgroup; a v1 cpuset needs its CPUs and memory nodes before it takes tasks."""
    path.mkdir(exist_ok=True)
    for knob in ("cpuset.cpus", "cpuset.mems"):
        if (path / knob).exists() and not (path / knob).read_text().strip():
            (path / knob).write_text((path.parent / knob).read_text())


def create(name: str) -> list[Path]:
    """The host's subtree in every hierarchy; returns each one's ``cgroup.procs``."""
    procs = []
    for hierarchy in hierarchies():
        _make(hierarchy / PARENT)
        _make(hierarchy / PARENT / name)
        procs.append(hierarchy / PARENT / name / "cgroup.procs")
    return procs


def slot_cgroups(slot: int) -> list[Path]:
    """The subtrees of fleet ``slot``'s hosts that exist on the machine."""
    found = []
    for hierarchy in hierarchies():
        parent = hierarchy / PARENT
        if parent.is_dir():
            found += [p for p in parent.iterdir() if p.is_dir() and slot_of(p.name) == slot]
    return sorted(found)


def remove(subtrees: list[Path]) -> None:
    """rmdir each subtree, its children first (cgroup files cannot be unlinked, only dirs)."""
    for subtree in subtrees:
        for dirpath, _dirnames, _files in sorted(
            os.walk(subtree), key=lambda entry: entry[0].count("/"), reverse=True
        ):
            with contextlib.suppress(OSError):
                Path(dirpath).rmdir()
    for hierarchy in hierarchies():  # the shared parent, once no fleet uses it
        with contextlib.suppress(OSError):
            (hierarchy / PARENT).rmdir()
