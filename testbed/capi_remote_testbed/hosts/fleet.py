"""A fleet: N hosts on a private bridge in one slot, started together and torn down together.

Invariants: a started fleet holds its slot's flock until :meth:`HostFleet.close`; ``close`` is
idempotent and removes everything the fleet created, also after a failed start; fleets a script
never closed are closed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import subprocess
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import paramiko

from capi_remote_testbed import rootfs as rootfs_module
from capi_remote_testbed.hosts import cgroups, nodelayer
from capi_remote_testbed.hosts.host import READY_LINE, Host
from capi_remote_testbed.hosts.keys import SshKey
from capi_remote_testbed.hosts.layers import (
    INIT_SCRIPT,
    hash_password,
    make_dir,
    sshd_config,
    write_file,
    write_fleet_layer,
    write_host_key,
)
from capi_remote_testbed.hosts.names import (
    MARKER,
    MAX_FLEETS,
    MAX_HOSTS,
    SUBNET_PREFIX,
    default_state_dir,
)
from capi_remote_testbed.hosts.nodes import import_images
from capi_remote_testbed.hosts.slots import (
    destroy_slot,
    release_slot,
    slot_leftovers,
    subnet_taken,
    try_lock_slot,
)
from capi_remote_testbed.hosts.system import BASE_ENV, HostError, child_pid, kill_hosts, run
from capi_remote_testbed.tcpproxy import TcpProxy

LIVE_FLEETS: weakref.WeakSet[HostFleet] = weakref.WeakSet()


class HostFleet:
    """N namespaced sshd hosts on a private bridge; a context manager that cleans up after itself.

    Users on every host: ``root`` and ``deploy`` (passwordless sudo) and ``operator`` (sudo needs
    :attr:`operator_password`), all authorised for :attr:`client_key`. With ``nodes=True`` each
    host is prepared as a Kubernetes node (docs/test-bed-hosts.md): containerd running with
    kubeadm's images, kubeadm/kubelet/kubectl, CNI, the node supervisor, its own cgroup subtree.
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
        nodes: bool = False,
    ) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"a fleet has 1..{MAX_HOSTS} hosts, not {count}")
        self.count = count
        self.rootfs = rootfs
        self.operator_password = operator_password or secrets.token_urlsafe(12)
        self.state_dir = state_dir or default_state_dir()
        self.ready_timeout = ready_timeout
        self.sshd_config_extra = dict(sshd_config_extra or {})
        #: Hosts that can become Kubernetes nodes (hosts/nodelayer.py, hosts/cgroups.py).
        self.nodes = nodes
        self._node_layer: Path | None = None
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
        if self.nodes:
            self._node_layer = nodelayer.ensure_node_layer(log=lambda _: None)
        LIVE_FLEETS.add(self)
        try:
            self._allocate_slot()
            self.hosts = [Host(self, i) for i in range(self.count)]
            self._write_files(lower)
            self._create_network()
            for host in self.hosts:
                self._spawn(host, lower)
            self._wait_ready()
            if self.nodes:
                for host in self.hosts:
                    import_images(host)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every host and remove all it created (idempotent, safe after a failed start)."""
        if self._closed:
            return
        self._closed = True
        LIVE_FLEETS.discard(self)
        for proxy in self._proxies:
            proxy.close()
        if self.slot < 0:
            return
        try:
            kill_hosts([h._proc for h in self.hosts if h._proc is not None])
            destroy_slot(self.slot, self.state_dir, netns_count=self.count)
        finally:
            if self._lock_fd is not None:
                release_slot(self.slot, self._lock_fd)
                self._lock_fd = None

    # -- start steps ------------------------------------------------------------------------------

    def _allocate_slot(self) -> None:
        """Take the first free slot: its lock, then its leftovers from a crashed run, if any."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        for slot in range(MAX_FLEETS):
            fd = try_lock_slot(slot)
            if fd is None:
                continue
            if slot_leftovers(slot, self.state_dir):
                destroy_slot(slot, self.state_dir)
            if subnet_taken(ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{slot}.0/24")):
                release_slot(slot, fd)
                continue
            self.slot, self._lock_fd = slot, fd
            return
        raise HostError(f"no free fleet slot ({MAX_FLEETS} in use?); try `make clean-devenv`")

    def _write_files(self, lower: Path) -> None:
        """The shared layer (users, keys, sshd/sudo config) and each host's upper layer."""
        self.dir.mkdir(mode=0o700)
        write_file(self.dir / "init.sh", INIT_SCRIPT, 0o755)
        self.client_key_path.write_text(self.client_key.private_openssh)
        self.client_key_path.chmod(0o600)
        self.client_key_path.with_suffix(".pub").write_text(self.client_key.public + "\n")
        write_fleet_layer(
            self.dir / "layer",
            lower,
            authorized_key=self.client_key.public,
            password_hash=hash_password(self.operator_password),
            sshd_config=sshd_config(self.sshd_config_extra),
        )
        etc_hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
            f"{h.address}\t{h.name}\n" for h in self.hosts
        )
        for host in self.hosts:
            upper = host.dir / "upper"
            for sub in ("upper/etc/ssh", "work", "merged"):
                make_dir(host.dir / sub)
            write_host_key(upper / "etc/ssh", host.host_key)
            write_file(upper / "etc/hostname", f"{host.name}\n")
            write_file(upper / "etc/hosts", etc_hosts)
            (host.dir / "net.batch").write_text(
                "link set lo up\n"
                f"addr add {host.address}/{self.subnet.prefixlen} dev eth0\n"
                "link set eth0 up\n" + (self._pod_routes(host) if self.nodes else "")
            )
            if self.nodes:
                nodelayer.write_host_files(upper, host.index, self.gateway)
                (host.dir / "cgroups").write_text(cgroups.mounts_file())
        self.write_known_hosts()

    def _pod_routes(self, host: Host) -> str:
        """Routes to the other node hosts' Pod subnets, via those hosts (Pods talk directly), and
        a default route on the host's link, as a machine has (kubeadm picks its advertise address
        from it), without a gateway: nothing leaves the bridge."""
        return "route add default dev eth0\n" + "".join(
            f"route add {nodelayer.pod_subnet(other.index)} via {other.address}\n"
            for other in self.hosts
            if other is not host
        )

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
        run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")

    def _spawn(self, host: Host, lower: Path) -> None:
        lowerdir = f"{self.dir / 'layer'}:{lower}"
        prefix: list[str] = []
        env = BASE_ENV
        if self._node_layer is not None:
            lowerdir = f"{self.dir / 'layer'}:{self._node_layer}:{lower}"
            # Enter the host's cgroup subtree, then unshare a cgroup namespace rooted there.
            procs = cgroups.create(host.netns)
            env = {**BASE_ENV, "CGROUP_PROCS": " ".join(map(str, procs))}
            prefix = ["sh", "-c", 'for p in $CGROUP_PROCS; do echo $$ > "$p"; done; exec "$@"',
                      "cgroup-enter"]  # fmt: skip
        argv = [
            *prefix,
            "ip", "netns", "exec", host.netns,
            "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
            *(["--cgroup"] if prefix else []),
            "--propagation", "private",
            "/bin/sh", str(self.dir / "init.sh"), str(host.dir), host.name, lowerdir,
        ]  # fmt: skip
        with open(host.log_path, "ab") as log:
            host._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the harness, which then tears down
            )
        host._sshd_running = True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        pending = list(self.hosts)
        while pending:
            still = []
            for host in pending:
                if host._log_has((READY_LINE,), 0):
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
            host._init_pid = child_pid(host._proc.pid)


@atexit.register
def _close_live_fleets() -> None:
    """Last resort for scripts that never closed their fleet (tests use fixtures instead)."""
    for fleet in list(LIVE_FLEETS):
        with contextlib.suppress(Exception):
            fleet.close()
