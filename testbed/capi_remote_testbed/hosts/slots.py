"""Fleet slots: the flock that owns one, what of it is on the machine, and its destruction.

Invariants: a slot's lock file is unlinked on release and re-checked after locking, so two
processes never both own a slot; :func:`destroy_slot` runs only under the slot's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import shutil
import signal
import time
from pathlib import Path

from capi_remote_testbed.hosts import cgroups
from capi_remote_testbed.hosts.names import LINK_RE, LOCK_DIR, MARKER, slot_of
from capi_remote_testbed.hosts.system import pid_alive, run


def subnet_taken(subnet: ipaddress.IPv4Network) -> bool:
    """True if something else on this machine already uses addresses of ``subnet``.

    A broader route (say 10.0.0.0/8) does not count: our /24 is more specific and wins, unless an
    address of this machine lies inside it.
    """
    for line in run(["ip", "-o", "-4", "addr", "show"], check=False).splitlines():
        parts = line.split()
        if "inet" in parts and not LINK_RE.match(parts[1]):  # our leftovers get swept instead
            iface = ipaddress.IPv4Interface(parts[parts.index("inet") + 1])
            if iface.ip in subnet or (
                iface.network.prefixlen >= 24 and iface.network.overlaps(subnet)
            ):
                return True
    for line in run(["ip", "-4", "route", "show"], check=False).splitlines():
        parts = line.split()
        if not parts or parts[0] == "default" or "dev" not in parts:
            continue
        if LINK_RE.match(parts[parts.index("dev") + 1]):
            continue
        with contextlib.suppress(ValueError):
            net = ipaddress.IPv4Network(parts[0], strict=False)
            if net.prefixlen >= 24 and net.overlaps(subnet):
                return True
    return False


def lock_path(slot: int, marker: str = MARKER) -> Path:
    """The lock of slot ``slot`` of the fleets (or, with another ``marker``, of another owner of
    machine-wide names: the test bed's node network)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    return LOCK_DIR / f"{marker}{slot}.lock"


def try_lock_slot(slot: int, marker: str = MARKER) -> int | None:
    """flock the slot's lock file without waiting; None if a live process owns it.

    The lock file is unlinked on release, so after locking we check that the path still names the
    inode we locked (otherwise two processes could each "own" a different file of the same name).
    """
    path = lock_path(slot, marker)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            same = path.stat().st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # for humans; the flock is what counts
            return fd
        os.close(fd)


def release_slot(slot: int, fd: int, marker: str = MARKER) -> None:
    with contextlib.suppress(FileNotFoundError):
        lock_path(slot, marker).unlink()
    os.close(fd)


def machine_names() -> tuple[list[str], list[str]]:
    """(links, netns) on this machine."""
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in run(["ip", "-o", "link", "show"], check=False).splitlines()
        if ":" in line
    ]
    netns = [line.split()[0] for line in run(["ip", "netns", "list"], check=False).splitlines()]
    return links, netns


def slot_processes(slot: int, state_dir: Path) -> list[int]:
    """PIDs whose command line points into the slot's state dir (unshare and PID 1 of hosts)."""
    needle = f"{state_dir / f'{MARKER}{slot}'}/".encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if needle in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return [pid for pid in pids if pid != os.getpid()]


def slot_mounts(slot: int, state_dir: Path) -> list[str]:
    """Mount points (root mount namespace) under the slot's state dir: should never exist."""
    prefix = f"{state_dir / f'{MARKER}{slot}'}/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith(prefix):
            points.append(point)
    return points


def slot_leftovers(slot: int, state_dir: Path) -> list[str]:
    """Everything of ``slot`` present on the machine (names, dirs, pids), for sweeps and tests."""
    links, netns = machine_names()
    found = [n for n in links + netns if slot_of(n) == slot]
    fleet_dir = state_dir / f"{MARKER}{slot}"
    if fleet_dir.exists():
        found.append(str(fleet_dir))
    found += [f"pid {pid}" for pid in slot_processes(slot, state_dir)]
    found += [f"mount {point}" for point in slot_mounts(slot, state_dir)]
    found += [f"cgroup {path}" for path in cgroups.slot_cgroups(slot)]
    return found


def destroy_slot(slot: int, state_dir: Path, *, netns_count: int | None = None) -> None:
    """Remove every trace of ``slot``: processes, netns (and with them veths), bridge, cgroups,
    dirs.

    The caller holds the slot's lock. ``netns_count`` (a fleet's own close) skips discovery.
    """
    prefix = f"{MARKER}{slot}"
    if netns_count is None:
        links, netns = machine_names()
        our_netns = [n for n in netns if slot_of(n) == slot]
        our_links = [n for n in links if slot_of(n) == slot]
        pids = set(slot_processes(slot, state_dir))
        for ns in our_netns:
            pids.update(int(p) for p in run(["ip", "netns", "pids", ns], check=False).split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
    else:
        our_netns = [f"{prefix}-h{i}" for i in range(netns_count)]
        our_links = [f"{prefix}br"]
    for point in sorted(slot_mounts(slot, state_dir), reverse=True):
        run(["umount", "-l", point], check=False)
    # Deleting a netns (once its processes are gone) destroys its veth pair asynchronously, and the
    # kernel batches that: ~0.1 s for 50 hosts, against ~1 s for 50 synchronous `link del`s.
    batch = [f"netns del {n}" for n in our_netns]
    batch += [f"link del {n}" for n in our_links if n.endswith("br")]
    if batch:
        # -force: keep going past names that are already gone
        run(["ip", "-force", "-batch", "-"], input="\n".join(batch) + "\n", check=False)
    deadline = time.monotonic() + 5
    while True:
        remaining = [n for n in machine_names()[0] if slot_of(n) == slot]
        if not remaining:
            break
        if time.monotonic() > deadline:  # a veth whose netns was already gone: delete it ourselves
            batch = [f"link del {n}" for n in remaining]
            run(["ip", "-force", "-batch", "-"], input="\n".join(batch) + "\n", check=False)
            break
        time.sleep(0.02)
    cgroups.remove(cgroups.slot_cgroups(slot))  # node hosts' subtrees, empty now
    shutil.rmtree(state_dir / prefix, ignore_errors=True)
