"""The files a host boots from: PID 1's script, and the overlay layer its fleet shares (users,
authorised key, sshd and sudo configuration).

Invariant: every file and directory written here gets an exact mode and owner, whatever the
caller's umask: an overlay layer shadows the rootfs below it, so a wrong mode would break sshd.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from capi_remote_testbed.hosts.keys import SshKey
from capi_remote_testbed.hosts.names import DEPLOY, OPERATOR, ROOT
from capi_remote_testbed.hosts.system import run

# PID 1 of every host. Runs inside the host's netns and fresh mount/UTS/PID namespaces; builds the
# root filesystem, pivots into it and supervises sshd. Commands arrive on stdin, a pipe the harness
# holds: EOF means the harness died, so the host exits (and the kernel kills all its processes)
# instead of lingering as an orphan.
INIT_SCRIPT = r"""#!/bin/sh
# PID 1 of a capi-remote test host; written by capi_remote_testbed/hosts/layers.py.
set -eu
hostdir=$1 name=$2 lower=$3
m=$hostdir/merged
ip -batch "$hostdir/net.batch"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$hostdir/upper,workdir=$hostdir/work" "$m"
mount -t proc -o nosuid,nodev,noexec proc "$m/proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$m/sys"
mount --rbind /dev "$m/dev"
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs "$m/run"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$m/tmp"
mkdir -m 755 "$m/run/sshd" "$m/run/lock"
if [ -x "$m/usr/local/sbin/capi-node-supervisor" ]; then
  # A node host (hosts/nodelayer.py): the hierarchies of its cgroup namespace (its own subtree,
  # hosts/cgroups.py) and a tmpfs for containerd, whose overlayfs snapshotter needs a real fs.
  mount -t tmpfs -o nosuid,nodev,noexec,mode=755 cgroup "$m/sys/fs/cgroup"
  while read -r dir type opts; do
    mkdir "$m$dir"
    mount -t "$type" -o "$opts" "$type" "$m$dir"
  done < "$hostdir/cgroups"
  mount -t tmpfs -o mode=711 containerd "$m/var/lib/containerd"
fi
printf '%s' "$name" > /proc/sys/kernel/hostname
cd "$m"
pivot_root . .oldroot
cd /
umount -l /.oldroot
set +e
if [ -x /usr/local/sbin/capi-node-supervisor ]; then
  /usr/local/sbin/capi-node-supervisor </dev/null >>/var/log/capi-node-supervisor.log 2>&1 &
fi
sshd=
running() {
  [ -n "$sshd" ] && [ -r "/proc/$sshd/stat" ] || return 1
  read -r _ _ state _ < "/proc/$sshd/stat"
  [ "$state" != Z ]
}
start() {
  if running; then echo "capi-init: sshd already running" >&2; return; fi
  if [ -n "$sshd" ]; then wait "$sshd"; fi
  /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config &
  sshd=$!
}
stop() {
  if [ -n "$sshd" ]; then kill "$sshd" 2>/dev/null; wait "$sshd"; sshd=; fi
  echo "capi-init: sshd stopped" >&2
}
start
while read -r cmd; do
  case $cmd in
    start) start ;;
    stop) stop ;;
    reload) if running; then kill -HUP "$sshd"; else echo "capi-init: sshd not running" >&2; fi ;;
    *) echo "capi-init: unknown command: $cmd" >&2 ;;
  esac
done
echo "capi-init: control pipe closed; host $name exits" >&2
"""

_SSHD_CONFIG = """\
# sshd of a capi-remote test host. Close to Debian's defaults where it matters to clients
# (MaxStartups, MaxSessions, LoginGraceTime); key-only login; no PAM (no login sessions to set up).
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PidFile /run/sshd.pid
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""

_SUDOERS = f"""\
# capi-remote test bed: {DEPLOY} has passwordless sudo, {OPERATOR} must type its password.
Defaults lecture=never
Defaults:{OPERATOR} timestamp_timeout=0
{DEPLOY} ALL=(ALL:ALL) NOPASSWD: ALL
{OPERATOR} ALL=(ALL:ALL) ALL
"""


def sshd_config(extra: Mapping[str, str]) -> str:
    # sshd keeps the first value it reads for most keywords: overrides go first.
    head = "".join(f"{key} {value}\n" for key, value in extra.items())
    return head + _SSHD_CONFIG


def write_host_key(ssh_dir: Path, key: SshKey) -> None:
    private = ssh_dir / "ssh_host_ed25519_key"
    tmp = private.with_name(".ssh_host_ed25519_key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.private_openssh)
    tmp.replace(private)  # sshd never sees a half-written key
    write_file(ssh_dir / "ssh_host_ed25519_key.pub", f"{key.public} root@capi-remote-test\n")


def hash_password(password: str) -> str:
    """SHA-512 crypt hash for /etc/shadow (openssl; the password goes via stdin, not argv)."""
    out = run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n")
    return out.strip()


def write_file(path: Path, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    """Write a file with exact mode/owner: the layers must not depend on the caller's umask."""
    path.write_text(text)
    os.chown(path, uid, gid)
    path.chmod(mode)


def make_dir(path: Path, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    """Create ``path`` (parents 0755) with exact mode/owner: overlay dirs shadow the lower ones."""
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir()
            parent.chmod(0o755)
    path.mkdir(exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)


def write_fleet_layer(
    layer: Path, lower: Path, *, authorized_key: str, password_hash: str, sshd_config: str
) -> None:
    """The overlay layer shared by a fleet's hosts: users, authorised key, sshd and sudo config."""
    etc = layer / "etc"
    make_dir(etc / "ssh")
    make_dir(etc / "sudoers.d", 0o755)
    write_file(etc / "ssh/sshd_config", sshd_config)
    write_file(etc / "sudoers.d/capi-remote", _SUDOERS, 0o440)

    passwd = (lower / "etc/passwd").read_text()
    group = (lower / "etc/group").read_text()
    shadow = (lower / "etc/shadow").read_text()
    gshadow = (lower / "etc/gshadow").read_text()
    groups = {line.split(":")[0]: int(line.split(":")[2]) for line in group.splitlines() if line}
    shadow_gid = groups.get("shadow", 0)
    home_of: dict[str, tuple[Path, int, int]] = {ROOT: (layer / "root", 0, 0)}
    for uid, user, password in ((1000, DEPLOY, "*"), (1001, OPERATOR, password_hash)):
        gid = groups.get(user)
        if gid is None:  # Debian has an "operator" group already; reuse it, like adduser would
            gid = uid
            group += f"{user}:x:{gid}:\n"
            gshadow += f"{user}:!::\n"
        passwd += f"{user}:x:{uid}:{gid}:capi-remote test user:/home/{user}:/bin/bash\n"
        shadow += f"{user}:{password}:19000:0:99999:7:::\n"
        home_of[user] = (layer / "home" / user, uid, gid)
    write_file(etc / "passwd", passwd)
    write_file(etc / "group", group)
    write_file(etc / "shadow", shadow, 0o640, 0, shadow_gid)
    write_file(etc / "gshadow", gshadow, 0o640, 0, shadow_gid)

    skel = lower / "etc/skel"
    for user, (home, uid, gid) in home_of.items():
        make_dir(home, 0o700 if user == ROOT else 0o755, uid, gid)
        if user != ROOT and skel.is_dir():
            for item in skel.iterdir():
                if item.is_file():
                    write_file(home / item.name, item.read_text(), 0o644, uid, gid)
        make_dir(home / ".ssh", 0o700, uid, gid)
        write_file(home / ".ssh/authorized_keys", authorized_key + "\n", 0o600, uid, gid)
