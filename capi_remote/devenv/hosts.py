"""A fleet of namespaced sshd "machines" on this box, for tests that need real SSH targets.

Each host is a network namespace wired into a bridge the fleet owns, plus mount/UTS/PID namespaces
whose root is an overlay over one cached Debian rootfs (see :mod:`capi_remote.devenv.rootfs`). Hosts
are cheap (~2 MB each, 50 start in a few seconds), isolated from each other and from the real
machine, and can be broken on purpose (sshd down, link down, connections refused, new host key, a
slow/lossy proxy in front) so the SSH runner can be tested against the failures real fleets have.

Everything a fleet creates carries the ``crt<k>`` marker (``k`` = its slot, also the third octet of
its subnet 10.250.<k>.0/24), and each slot is owned through an ``flock`` held for the fleet's life,
so :func:`sweep` can tell a crashed run's leftovers from a live fleet in another process.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import errno
import fcntl
import hashlib
import io
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from capi_remote.devenv import rootfs as rootfs_module
from capi_remote.devenv.tcpproxy import DropMode, TcpProxy

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

_READY_LINE = b"Server listening on 0.0.0.0 port 22"
_STOPPED_LINE = b"capi-init: sshd stopped"
_ALREADY_LINE = b"capi-init: sshd already running"
_LINK_RE = re.compile(rf"^{MARKER}(\d{{1,3}})(?:br|v\d{{1,3}})$")
_NETNS_RE = re.compile(rf"^{MARKER}(\d{{1,3}})-h\d{{1,3}}$")
_DIR_RE = re.compile(rf"^{MARKER}(\d{{1,3}})(?:\.lock)?$")
_BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}

# PID 1 of every host. Runs inside the host's netns and fresh mount/UTS/PID namespaces; builds the
# root filesystem, pivots into it and supervises sshd. Commands arrive on stdin, a pipe the harness
# holds: EOF means the harness died, so the host exits (and the kernel kills all its processes)
# instead of lingering as an orphan.
_INIT_SCRIPT = r"""#!/bin/sh
# PID 1 of a capi-remote test host; written by capi_remote/devenv/hosts.py.
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
printf '%s' "$name" > /proc/sys/kernel/hostname
cd "$m"
pivot_root . .oldroot
cd /
umount -l /.oldroot
set +e
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


class HostError(RuntimeError):
    """A host or fleet failed to start or to change state; the message carries the log tail."""


# -- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshKey:
    """An ed25519 key pair in the formats the tools want. ``repr`` never shows the private part."""

    private_openssh: str = field(repr=False)
    private_pem: str = field(repr=False)
    public: str  # "ssh-ed25519 AAAA..."

    @classmethod
    def generate(cls) -> SshKey:
        key = Ed25519PrivateKey.generate()
        return cls(
            private_openssh=key.private_bytes(
                Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
            ).decode(),
            private_pem=key.private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            ).decode(),
            public=key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode(),
        )

    def pkey(self) -> paramiko.PKey:
        """The private key for paramiko (``connect(pkey=...)``)."""
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))

    def public_pkey(self) -> paramiko.PKey:
        """The public half as a paramiko key, e.g. for ``HostKeys.add``."""
        return public_pkey(self.public)

    @property
    def fingerprint(self) -> str:
        """OpenSSH-style ``SHA256:...`` fingerprint of the public key."""
        blob = base64.b64decode(self.public.split()[1])
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"


def public_pkey(public: str) -> paramiko.PKey:
    """Parse an ``ssh-ed25519 AAAA...`` line into a paramiko public key."""
    key_type, b64 = public.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))


def known_hosts_line(address: str, port: int, public: str) -> str:
    """One OpenSSH known_hosts line; non-22 ports use the ``[addr]:port`` form."""
    host = address if port == SSH_PORT else f"[{address}]:{port}"
    return f"{host} {public}"


# -- a host ---------------------------------------------------------------------------------------


class Host:
    """One namespaced sshd host of a :class:`HostFleet`, with its fault knobs."""

    def __init__(self, fleet: HostFleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.name = f"host-{index}"
        self.address = str(fleet.subnet.network_address + index + 2)
        self.port = SSH_PORT
        self.netns = f"{fleet.prefix}-h{index}"
        self.veth = f"{fleet.prefix}v{index}"
        self.dir = fleet.dir / "hosts" / self.name
        self.log_path = self.dir / "sshd.log"
        self.host_key = SshKey.generate()
        #: Keys this host had before :meth:`regenerate_host_key`, oldest first.
        self.previous_host_keys: list[SshKey] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None
        self._sshd_running = False
        self._refusing = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Host({self.name} {self.address}:{self.port} netns={self.netns})"

    # -- identity ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """PID (root namespace) of the host's ``unshare`` process; killing it kills the host."""
        if self._proc is None:
            raise HostError(f"{self.name} is not running")
        return self._proc.pid

    @property
    def init_pid(self) -> int:
        """PID (root namespace) of the host's PID 1, the target for ``nsenter -t``."""
        if self._init_pid is None:
            raise HostError(f"{self.name} is not running")
        return self._init_pid

    @property
    def sshd_running(self) -> bool:
        """False between :meth:`stop_sshd` and :meth:`start_sshd`."""
        return self._sshd_running

    @property
    def host_public_key(self) -> str:
        """The host's current ``ssh-ed25519 AAAA...`` key."""
        return self.host_key.public

    @property
    def known_hosts_line(self) -> str:
        """``<ip> ssh-ed25519 AAAA...`` for the current host key."""
        return known_hosts_line(self.address, self.port, self.host_key.public)

    def path(self, inside: str | Path) -> Path:
        """A path inside the host, reachable from the root namespace (via /proc/<pid>/root)."""
        return Path(f"/proc/{self.init_pid}/root") / Path(inside).relative_to("/")

    # -- running things ---------------------------------------------------------------------------

    def connect(
        self,
        user: str = ROOT,
        *,
        timeout: float = 10.0,
        via: TcpProxy | tuple[str, int] | None = None,
        host_key: str | None = None,
    ) -> paramiko.SSHClient:
        """An SSH client logged in with the fleet's key, verifying the host key (RejectPolicy).

        ``via`` connects through a proxy address instead of the host's own; ``host_key`` trusts
        that public key instead of the current one (e.g. a previous key, to test mismatches).
        """
        address: tuple[str, int]
        if via is None:
            address = (self.address, self.port)
        elif isinstance(via, TcpProxy):
            address = via.address
        else:
            address = via
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        trusted = public_pkey(host_key or self.host_key.public)
        lookup = address[0] if address[1] == SSH_PORT else f"[{address[0]}]:{address[1]}"
        client.get_host_keys().add(lookup, trusted.get_name(), trusted)
        try:
            client.connect(
                address[0],
                port=address[1],
                username=user,
                pkey=self.fleet.client_key.pkey(),
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                look_for_keys=False,
                allow_agent=False,
            )
        except BaseException:
            client.close()
            raise
        return client

    def exec_inside(
        self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the host's namespaces without SSH (out-of-band inspection)."""
        return subprocess.run(
            [
                "nsenter",
                f"--target={self.init_pid}",
                "--mount",
                "--uts",
                "--net",
                "--pid",
                "--root",
                "--wd",
                "--",
                *argv,
            ],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=_BASE_ENV,
            check=False,
        )

    def log_tail(self, lines: int = 20) -> str:
        """The end of the host's init/sshd log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    # -- fault knobs ------------------------------------------------------------------------------

    def stop_sshd(self, timeout: float = 10.0) -> None:
        """Stop sshd (new connections are refused); the namespaces and open sessions stay."""
        with self._lock:
            offset = self._log_size()
            self._command("stop")
            self._wait_log((_STOPPED_LINE,), offset, timeout, "sshd to stop")
            self._sshd_running = False

    def start_sshd(self, timeout: float = 10.0) -> None:
        """Start sshd again after :meth:`stop_sshd` and wait until it listens."""
        with self._lock:
            offset = self._log_size()
            self._command("start")
            self._wait_log((_READY_LINE, _ALREADY_LINE), offset, timeout, "sshd to listen")
            self._sshd_running = True

    def link_down(self) -> None:
        """Cut the host's cable (its veth): connects time out; short cuts keep sessions alive."""
        _run(["ip", "link", "set", "dev", self.veth, "down"])

    def link_up(self) -> None:
        """Plug the cable back in."""
        _run(["ip", "link", "set", "dev", self.veth, "up"])

    def refuse_connections(self) -> None:
        """Answer SYNs to port 22 with a TCP reset (instant "connection refused"), via iptables."""
        with self._lock:
            if not self._refusing:
                _run(["ip", "netns", "exec", self.netns, "iptables", "-w", "-I", *self._reject])
                self._refusing = True

    def accept_connections(self) -> None:
        """Undo :meth:`refuse_connections`."""
        with self._lock:
            if self._refusing:
                _run(["ip", "netns", "exec", self.netns, "iptables", "-w", "-D", *self._reject])
                self._refusing = False

    @property
    def _reject(self) -> list[str]:
        return ["INPUT", "-p", "tcp", "--dport", str(self.port), "-j", "REJECT",
                "--reject-with", "tcp-reset"]  # fmt: skip

    def regenerate_host_key(self, timeout: float = 10.0) -> SshKey:
        """Give the host a new host key (as after a reinstall) and make sshd use it.

        The harness's known key is updated; the old one moves to :attr:`previous_host_keys` so a
        test can show that a client still trusting it is refused.
        """
        with self._lock:
            new = SshKey.generate()
            _write_host_key(self.path("/etc/ssh"), new)
            offset = self._log_size()
            self._command("reload")  # SIGHUP: sshd re-execs and rereads its keys
            self._wait_log((_READY_LINE,), offset, timeout, "sshd to reload")
            self.previous_host_keys.append(self.host_key)
            self.host_key = new
            self.fleet.write_known_hosts()
            return new

    def proxy(
        self,
        latency_ms: float = 0.0,
        drop_rate: float = 0.0,
        *,
        drop_mode: DropMode = "blackhole",
        seed: int | None = None,
    ) -> TcpProxy:
        """A started TCP proxy on 127.0.0.1 forwarding to this host's sshd.

        Its ``.address`` is the ``(host, port)`` to connect to; ``.close()`` (or the fleet's
        teardown) stops it. ``latency_ms`` is added to each direction; ``drop_rate`` is the share of
        new connections dropped (see :class:`~capi_remote.devenv.tcpproxy.TcpProxy`).
        """
        proxy = TcpProxy(
            (self.address, self.port),
            latency_ms=latency_ms,
            drop_rate=drop_rate,
            drop_mode=drop_mode,
            seed=seed,
        )
        self.fleet._proxies.append(proxy)
        proxy.start()
        return proxy

    # -- internals --------------------------------------------------------------------------------

    def _command(self, cmd: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise HostError(f"{self.name} is not running; log:\n{self.log_tail()}")
        try:
            proc.stdin.write(cmd.encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError as exc:
            raise HostError(f"{self.name} is not running; log:\n{self.log_tail()}") from exc

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_has(self, lines: Sequence[bytes], offset: int) -> bool:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return False
        return any(line in data for line in lines)

    def _wait_log(self, lines: Sequence[bytes], offset: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self._log_has(lines, offset):
            if self._proc is not None and self._proc.poll() is not None:
                raise HostError(
                    f"{self.name} exited (code {self._proc.returncode}) while waiting for {what};"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise HostError(
                    f"{self.name}: timed out after {timeout:.0f} s waiting for {what};"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.01)


# -- the fleet ------------------------------------------------------------------------------------

_LIVE_FLEETS: weakref.WeakSet[HostFleet] = weakref.WeakSet()


class HostFleet:
    """N namespaced sshd hosts on a private bridge; a context manager that cleans up after itself.

    Users on every host: ``root`` and ``deploy`` (passwordless sudo) and ``operator`` (sudo needs
    :attr:`operator_password`), all authorised for :attr:`client_key`.
    """

    def __init__(
        self,
        count: int,
        *,
        rootfs: Path | None = None,
        operator_password: str | None = None,
        state_dir: Path | None = None,
        ready_timeout: float = 30.0,
        sshd_config_extra: Mapping[str, str] | None = None,
    ) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"a fleet has 1..{MAX_HOSTS} hosts, not {count}")
        self.count = count
        self.rootfs = rootfs
        self.operator_password = operator_password or secrets.token_urlsafe(12)
        self.state_dir = state_dir or _state_dir()
        self.ready_timeout = ready_timeout
        self.sshd_config_extra = dict(sshd_config_extra or {})
        self.client_key = SshKey.generate()
        self.hosts: list[Host] = []
        self.slot = -1
        self._lock_fd: int | None = None
        self._proxies: list[TcpProxy] = []
        self._closed = False

    # -- naming -----------------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """``crt<k>``: the start of every name this fleet owns."""
        self._require_slot()
        return f"{MARKER}{self.slot}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        self._require_slot()
        return ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{self.slot}.0/24")

    @property
    def gateway(self) -> str:
        """The bridge's address: how hosts reach services on the real machine."""
        return str(self.subnet.network_address + 1)

    @property
    def dir(self) -> Path:
        return self.state_dir / self.prefix

    @property
    def client_key_path(self) -> Path:
        """The client private key (OpenSSH format, mode 0600), for ``ssh -i``."""
        return self.dir / "client_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        """A known_hosts file for every host (rewritten when a host key changes)."""
        return self.dir / "known_hosts"

    def known_hosts(self) -> str:
        """known_hosts text with every host's current key."""
        return "".join(f"{host.known_hosts_line}\n" for host in self.hosts)

    def write_known_hosts(self, path: Path | None = None) -> Path:
        target = path or self.known_hosts_path
        target.write_text(self.known_hosts())
        return target

    def host_keys(self) -> paramiko.HostKeys:
        """paramiko ``HostKeys`` with every host's current key."""
        keys = paramiko.HostKeys()
        for host in self.hosts:
            pkey = host.host_key.public_pkey()
            keys.add(host.address, pkey.get_name(), pkey)
        return keys

    def _require_slot(self) -> None:
        if self.slot < 0:
            raise HostError("fleet not started")

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> HostFleet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> HostFleet:
        """Bring every host up concurrently and wait until each sshd listens."""
        if self.hosts:
            raise HostError("fleet already started")
        if os.geteuid() != 0:
            raise PermissionError("namespaced test hosts need root (netns, mounts, pivot_root)")
        lower = self.rootfs or rootfs_module.ensure_rootfs()
        _LIVE_FLEETS.add(self)
        try:
            self._allocate_slot()
            self.hosts = [Host(self, i) for i in range(self.count)]
            self._write_files(lower)
            self._create_network()
            for host in self.hosts:
                self._spawn(host, lower)
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every host and remove all it created (idempotent, safe after a failed start)."""
        if self._closed:
            return
        self._closed = True
        _LIVE_FLEETS.discard(self)
        for proxy in self._proxies:
            proxy.close()
        if self.slot < 0:
            return
        try:
            _kill_hosts([h._proc for h in self.hosts if h._proc is not None])
            _destroy_slot(self.slot, self.state_dir, netns_count=self.count)
        finally:
            if self._lock_fd is not None:
                _release_slot(self.slot, self._lock_fd)
                self._lock_fd = None

    # -- start steps ------------------------------------------------------------------------------

    def _allocate_slot(self) -> None:
        """Take the first free slot: its lock, then its leftovers from a crashed run, if any."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        for slot in range(MAX_FLEETS):
            fd = _try_lock_slot(slot)
            if fd is None:
                continue
            if _slot_leftovers(slot, self.state_dir):
                _destroy_slot(slot, self.state_dir)
            if _subnet_taken(ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{slot}.0/24")):
                _release_slot(slot, fd)
                continue
            self.slot, self._lock_fd = slot, fd
            return
        raise HostError(f"no free fleet slot ({MAX_FLEETS} in use?); try `make clean-devenv`")

    def _write_files(self, lower: Path) -> None:
        """The shared layer (users, keys, sshd/sudo config) and each host's upper layer."""
        self.dir.mkdir(mode=0o700)
        _write(self.dir / "init.sh", _INIT_SCRIPT, 0o755)
        self.client_key_path.write_text(self.client_key.private_openssh)
        self.client_key_path.chmod(0o600)
        self.client_key_path.with_suffix(".pub").write_text(self.client_key.public + "\n")
        _write_fleet_layer(
            self.dir / "layer",
            lower,
            authorized_key=self.client_key.public,
            password_hash=_hash_password(self.operator_password),
            sshd_config=_sshd_config(self.sshd_config_extra),
        )
        etc_hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
            f"{h.address}\t{h.name}\n" for h in self.hosts
        )
        for host in self.hosts:
            upper = host.dir / "upper"
            for sub in ("upper/etc/ssh", "work", "merged"):
                _mkdir(host.dir / sub)
            _write_host_key(upper / "etc/ssh", host.host_key)
            _write(upper / "etc/hostname", f"{host.name}\n")
            _write(upper / "etc/hosts", etc_hosts)
            (host.dir / "net.batch").write_text(
                "link set lo up\n"
                f"addr add {host.address}/{self.subnet.prefixlen} dev eth0\n"
                "link set eth0 up\n"
            )
        self.write_known_hosts()

    def _create_network(self) -> None:
        """Bridge + one netns and veth per host, in a single `ip -batch` (one fork, not 4N)."""
        lines = [
            f"link add {self.bridge} type bridge forward_delay 0",
            f"addr add {self.gateway}/{self.subnet.prefixlen} dev {self.bridge}",
            f"link set {self.bridge} up",
        ]
        for host in self.hosts:
            lines += [
                f"netns add {host.netns}",
                f"link add {host.veth} type veth peer name eth0 netns {host.netns}",
                f"link set {host.veth} master {self.bridge} up",
            ]
        _run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")

    def _spawn(self, host: Host, lower: Path) -> None:
        lowerdir = f"{self.dir / 'layer'}:{lower}"
        argv = [
            "ip", "netns", "exec", host.netns,
            "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
            "--propagation", "private",
            "/bin/sh", str(self.dir / "init.sh"), str(host.dir), host.name, lowerdir,
        ]  # fmt: skip
        with open(host.log_path, "ab") as log:
            host._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_BASE_ENV,
                start_new_session=True,  # Ctrl-C reaches the harness, which then tears down
            )
        host._sshd_running = True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        pending = list(self.hosts)
        while pending:
            still = []
            for host in pending:
                if host._log_has((_READY_LINE,), 0):
                    continue
                proc = host._proc
                if proc is not None and proc.poll() is not None:
                    raise HostError(
                        f"{host.name} exited with code {proc.returncode} during start;"
                        f" log {host.log_path}:\n{host.log_tail()}"
                    )
                still.append(host)
            pending = still
            if not pending:
                break
            if time.monotonic() > deadline:
                host = pending[0]
                raise HostError(
                    f"{len(pending)} of {self.count} hosts not listening after"
                    f" {self.ready_timeout:.0f} s; {host.name}'s log {host.log_path}:\n"
                    f"{host.log_tail()}"
                )
            time.sleep(0.01)
        for host in self.hosts:
            assert host._proc is not None
            host._init_pid = _child_pid(host._proc.pid)


# -- files ----------------------------------------------------------------------------------------


def _state_dir() -> Path:
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


def _sshd_config(extra: Mapping[str, str]) -> str:
    # sshd keeps the first value it reads for most keywords: overrides go first.
    head = "".join(f"{key} {value}\n" for key, value in extra.items())
    return head + _SSHD_CONFIG


def _write_host_key(ssh_dir: Path, key: SshKey) -> None:
    private = ssh_dir / "ssh_host_ed25519_key"
    tmp = private.with_name(".ssh_host_ed25519_key.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.private_openssh)
    tmp.replace(private)  # sshd never sees a half-written key
    _write(ssh_dir / "ssh_host_ed25519_key.pub", f"{key.public} root@capi-remote-test\n")


def _hash_password(password: str) -> str:
    """SHA-512 crypt hash for /etc/shadow (openssl; the password goes via stdin, not argv)."""
    out = _run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n")
    return out.strip()


def _write(path: Path, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    """Write a file with exact mode/owner: the layers must not depend on the caller's umask."""
    path.write_text(text)
    os.chown(path, uid, gid)
    path.chmod(mode)


def _mkdir(path: Path, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    """Create ``path`` (parents 0755) with exact mode/owner: overlay dirs shadow the lower ones."""
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir()
            parent.chmod(0o755)
    path.mkdir(exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)


def _write_fleet_layer(
    layer: Path, lower: Path, *, authorized_key: str, password_hash: str, sshd_config: str
) -> None:
    """The overlay layer shared by a fleet's hosts: users, authorised key, sshd and sudo config."""
    etc = layer / "etc"
    _mkdir(etc / "ssh")
    _mkdir(etc / "sudoers.d", 0o755)
    _write(etc / "ssh/sshd_config", sshd_config)
    _write(etc / "sudoers.d/capi-remote", _SUDOERS, 0o440)

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
    _write(etc / "passwd", passwd)
    _write(etc / "group", group)
    _write(etc / "shadow", shadow, 0o640, 0, shadow_gid)
    _write(etc / "gshadow", gshadow, 0o640, 0, shadow_gid)

    skel = lower / "etc/skel"
    for user, (home, uid, gid) in home_of.items():
        _mkdir(home, 0o700 if user == ROOT else 0o755, uid, gid)
        if user != ROOT and skel.is_dir():
            for item in skel.iterdir():
                if item.is_file():
                    _write(home / item.name, item.read_text(), 0o644, uid, gid)
        _mkdir(home / ".ssh", 0o700, uid, gid)
        _write(home / ".ssh/authorized_keys", authorized_key + "\n", 0o600, uid, gid)


# -- processes, network, slots --------------------------------------------------------------------


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, env=_BASE_ENV, check=False
    )
    if check and proc.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _child_pid(pid: int) -> int | None:
    """The first child of ``pid`` (unshare's forked child = the host's PID 1)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    if children:
        return int(children[0])
    for stat in Path("/proc").glob("[0-9]*/stat"):  # kernels without CONFIG_PROC_CHILDREN
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                return int(stat.parent.name)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill_hosts(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGKILL each host's PID 1 (the kernel then kills its whole PID namespace) and its unshare.

    Waiting for unshare means waiting until PID 1 is reaped, which the kernel only allows once
    every process of the namespace is gone: nothing of the host survives this.
    """
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            child = _child_pid(proc.pid)
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()  # --kill-child makes the kernel SIGKILL PID 1 when unshare dies
            proc.wait()


def _subnet_taken(subnet: ipaddress.IPv4Network) -> bool:
    """True if something else on this machine already uses addresses of ``subnet``.

    A broader route (say 10.0.0.0/8) does not count: our /24 is more specific and wins, unless an
    address of this machine lies inside it.
    """
    for line in _run(["ip", "-o", "-4", "addr", "show"], check=False).splitlines():
        parts = line.split()
        if "inet" in parts and not _LINK_RE.match(parts[1]):  # our leftovers get swept instead
            iface = ipaddress.IPv4Interface(parts[parts.index("inet") + 1])
            if iface.ip in subnet or (
                iface.network.prefixlen >= 24 and iface.network.overlaps(subnet)
            ):
                return True
    for line in _run(["ip", "-4", "route", "show"], check=False).splitlines():
        parts = line.split()
        if not parts or parts[0] == "default" or "dev" not in parts:
            continue
        if _LINK_RE.match(parts[parts.index("dev") + 1]):
            continue
        with contextlib.suppress(ValueError):
            net = ipaddress.IPv4Network(parts[0], strict=False)
            if net.prefixlen >= 24 and net.overlaps(subnet):
                return True
    return False


def _lock_path(slot: int) -> Path:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    return LOCK_DIR / f"{MARKER}{slot}.lock"


def _try_lock_slot(slot: int) -> int | None:
    """flock the slot's lock file without waiting; None if a live process owns it.

    The lock file is unlinked on release, so after locking we check that the path still names the
    inode we locked (otherwise two processes could each "own" a different file of the same name).
    """
    path = _lock_path(slot)
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


def _release_slot(slot: int, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        _lock_path(slot).unlink()
    os.close(fd)


def _names() -> tuple[list[str], list[str]]:
    """(links, netns) on this machine."""
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in _run(["ip", "-o", "link", "show"], check=False).splitlines()
        if ":" in line
    ]
    netns = [line.split()[0] for line in _run(["ip", "netns", "list"], check=False).splitlines()]
    return links, netns


def _slot_processes(slot: int, state_dir: Path) -> list[int]:
    """PIDs whose command line points into the slot's state dir (unshare and PID 1 of hosts)."""
    needle = f"{state_dir / f'{MARKER}{slot}'}/".encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if needle in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return [pid for pid in pids if pid != os.getpid()]


def _slot_mounts(slot: int, state_dir: Path) -> list[str]:
    """Mount points (root mount namespace) under the slot's state dir: should never exist."""
    prefix = f"{state_dir / f'{MARKER}{slot}'}/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith(prefix):
            points.append(point)
    return points


def _slot_leftovers(slot: int, state_dir: Path) -> list[str]:
    """Everything of ``slot`` present on the machine (names, dirs, pids), for sweeps and tests."""
    links, netns = _names()
    found = [n for n in links + netns if _slot_of(n) == slot]
    fleet_dir = state_dir / f"{MARKER}{slot}"
    if fleet_dir.exists():
        found.append(str(fleet_dir))
    found += [f"pid {pid}" for pid in _slot_processes(slot, state_dir)]
    found += [f"mount {point}" for point in _slot_mounts(slot, state_dir)]
    return found


def _slot_of(name: str) -> int | None:
    for regex in (_LINK_RE, _NETNS_RE, _DIR_RE):
        match = regex.match(name)
        if match:
            return int(match.group(1))
    return None


def _destroy_slot(slot: int, state_dir: Path, *, netns_count: int | None = None) -> None:
    """Remove every trace of ``slot``: processes, netns (and with them veths), bridge, dirs.

    The caller holds the slot's lock. ``netns_count`` (a fleet's own close) skips discovery.
    """
    prefix = f"{MARKER}{slot}"
    if netns_count is None:
        links, netns = _names()
        our_netns = [n for n in netns if _slot_of(n) == slot]
        our_links = [n for n in links if _slot_of(n) == slot]
        pids = set(_slot_processes(slot, state_dir))
        for ns in our_netns:
            pids.update(int(p) for p in _run(["ip", "netns", "pids", ns], check=False).split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
    else:
        our_netns = [f"{prefix}-h{i}" for i in range(netns_count)]
        our_links = [f"{prefix}br"]
    for point in sorted(_slot_mounts(slot, state_dir), reverse=True):
        _run(["umount", "-l", point], check=False)
    # Deleting a netns (once its processes are gone) destroys its veth pair asynchronously, and the
    # kernel batches that: ~0.1 s for 50 hosts, against ~1 s for 50 synchronous `link del`s.
    batch = [f"netns del {n}" for n in our_netns]
    batch += [f"link del {n}" for n in our_links if n.endswith("br")]
    if batch:
        # -force: keep going past names that are already gone
        _run(["ip", "-force", "-batch", "-"], input="\n".join(batch) + "\n", check=False)
    deadline = time.monotonic() + 5
    while True:
        remaining = [n for n in _names()[0] if _slot_of(n) == slot]
        if not remaining:
            break
        if time.monotonic() > deadline:  # a veth whose netns was already gone: delete it ourselves
            batch = [f"link del {n}" for n in remaining]
            _run(["ip", "-force", "-batch", "-"], input="\n".join(batch) + "\n", check=False)
            break
        time.sleep(0.02)
    shutil.rmtree(state_dir / prefix, ignore_errors=True)


# -- sweeping -------------------------------------------------------------------------------------


def sweep(*, state_dir: Path | None = None, include_live: bool = False) -> list[str]:
    """Remove leftovers of fleets whose owner process is gone; returns what was removed.

    Live fleets (slot lock held by a running process) are left alone unless ``include_live``,
    which also kills them (for a machine that has nothing else running).
    """
    state_dir = state_dir or _state_dir()
    links, netns = _names()
    candidates = {_slot_of(n) for n in links + netns}
    for directory in (state_dir, LOCK_DIR):
        if directory.is_dir():
            candidates |= {_slot_of(p.name) for p in directory.iterdir()}
    removed: list[str] = []
    for slot in sorted(s for s in candidates if s is not None):
        if not include_live and any(fleet.slot == slot for fleet in list(_LIVE_FLEETS)):
            continue
        fd = _try_lock_slot(slot)
        if fd is None and not include_live:
            continue
        try:
            leftovers = fleet_leftovers(f"{MARKER}{slot}", state_dir)
            _destroy_slot(slot, state_dir)
            removed += leftovers
        finally:
            if fd is not None:
                _release_slot(slot, fd)
    return removed


def fleet_is_live(prefix: str) -> bool:
    """True while a running process owns fleet ``prefix`` (``crt<k>``): sweeps leave it alone."""
    slot = _slot_of(prefix)
    if slot is None:
        raise ValueError(f"not a fleet prefix: {prefix!r}")
    if any(fleet.slot == slot for fleet in list(_LIVE_FLEETS)):
        return True
    fd = _try_lock_slot(slot)
    if fd is None:
        return True
    _release_slot(slot, fd)
    return False


def fleet_leftovers(prefix: str, state_dir: Path | None = None) -> list[str]:
    """What of fleet ``prefix`` (``crt<k>``) still exists; empty after a clean teardown."""
    slot = _slot_of(prefix)
    if slot is None:
        raise ValueError(f"not a fleet prefix: {prefix!r}")
    found = _slot_leftovers(slot, state_dir or _state_dir())
    if _lock_path(slot).exists():
        found.append(str(_lock_path(slot)))
    return found


@atexit.register
def _close_live_fleets() -> None:
    """Last resort for scripts that never closed their fleet (tests use fixtures instead)."""
    for fleet in list(_LIVE_FLEETS):
        with contextlib.suppress(Exception):
            fleet.close()


def iter_live_fleets() -> Iterator[HostFleet]:
    """Fleets of this process that are started and not yet closed."""
    yield from list(_LIVE_FLEETS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capi_remote.devenv.hosts",
        description="Manage the namespaced sshd test hosts.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cleanup = commands.add_parser(
        "cleanup", help="remove leftovers (netns, links, processes, dirs) of crashed runs"
    )
    cleanup.add_argument(
        "--all", action="store_true", help="also tear down fleets of processes still running"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    removed = sweep(include_live=args.all)
    for item in removed:
        print(f"removed {item}")
    print(f"cleanup done ({len(removed)} leftovers removed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
