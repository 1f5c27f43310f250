"""The names a fleet owns on this machine, and where its state lives.

Invariants: every netns, link, state dir and lock file of fleet slot ``k`` starts with
``crt<k>`` and its subnet is 10.250.<k>.0/24, so :func:`slot_of` maps any leftover back to its
slot; nothing else on the machine matches :data:`LINK_RE`, :data:`NETNS_RE` or :data:`DIR_RE`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Every netns, link, state dir and lock file of a fleet starts with this.
MARKER = "crt"
#: Fleet state (overlay upper/work dirs, logs, lock files): on tmpfs when there is one, because
#: deleting files on this machine's disk (mounted with ``discard``) costs ~1 ms each, which made
#: teardown slow. Files written on hosts therefore use RAM. ``$CAPI_REMOTE_HOSTS_DIR`` overrides.
TMPFS_STATE_DIR = Path("/dev/shm/capi-remote-hosts")
DISK_STATE_DIR = Path("/var/tmp/capi-remote-hosts")
#: Slot locks live in one fixed place whatever the state dir, because the names they guard (netns,
#: links, subnets) are machine-wide.
LOCK_DIR = Path("/run/lock/capi-remote-hosts")
#: Fleet ``k`` gets 10.250.<k>.0/24: the bridge is .1, hosts are .2, .3, ...
SUBNET_PREFIX = "10.250"
MAX_FLEETS = 256
MAX_HOSTS = 253
SSH_PORT = 22
ROOT = "root"
DEPLOY = "deploy"  # passwordless sudo
OPERATOR = "operator"  # sudo with a password
USERS = (ROOT, DEPLOY, OPERATOR)

LINK_RE = re.compile(rf"^{MARKER}(\d{{1,3}})(?:br|v\d{{1,3}})$")
NETNS_RE = re.compile(rf"^{MARKER}(\d{{1,3}})-h\d{{1,3}}$")
DIR_RE = re.compile(rf"^{MARKER}(\d{{1,3}})(?:\.lock)?$")


def default_state_dir() -> Path:
    env = os.environ.get("CAPI_REMOTE_HOSTS_DIR")
    if env:
        return Path(env)
    return TMPFS_STATE_DIR if _is_tmpfs(TMPFS_STATE_DIR.parent) else DISK_STATE_DIR


def _is_tmpfs(path: Path) -> bool:
    target = str(path)
    fstype = ""
    best = -1
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4]
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > best:
            best = len(point)
            fstype = fields[fields.index("-") + 1]
    return fstype == "tmpfs"


def slot_of(name: str) -> int | None:
    for regex in (LINK_RE, NETNS_RE, DIR_RE):
        match = regex.match(name)
        if match:
            return int(match.group(1))
    return None
