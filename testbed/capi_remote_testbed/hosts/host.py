"""One namespaced sshd host and its fault knobs (sshd down, link down, refused, new host key,
a proxy in front).

Invariant: a host's state changes only under its lock, and each change waits until sshd's log
shows it took effect, so a test that breaks a host then connects sees the broken host.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from capi_remote_testbed.hosts.keys import SshKey, known_hosts_line, public_pkey
from capi_remote_testbed.hosts.layers import write_host_key
from capi_remote_testbed.hosts.names import ROOT, SSH_PORT
from capi_remote_testbed.hosts.system import BASE_ENV, HostError, run
from capi_remote_testbed.tcpproxy import DropMode, TcpProxy

if TYPE_CHECKING:
    from capi_remote_testbed.hosts.fleet import HostFleet

READY_LINE = b"Server listening on 0.0.0.0 port 22"
STOPPED_LINE = b"capi-init: sshd stopped"
ALREADY_LINE = b"capi-init: sshd already running"


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
                "--cgroup",  # a node host's own cgroup namespace (the machine's for the others)
                "--root",
                "--wd",
                "--",
                *argv,
            ],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=BASE_ENV,
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
            self._wait_log((STOPPED_LINE,), offset, timeout, "sshd to stop")
            self._sshd_running = False

    def start_sshd(self, timeout: float = 10.0) -> None:
        """Start sshd again after :meth:`stop_sshd` and wait until it listens."""
        with self._lock:
            offset = self._log_size()
            self._command("start")
            self._wait_log((READY_LINE, ALREADY_LINE), offset, timeout, "sshd to listen")
            self._sshd_running = True

    def link_down(self) -> None:
        """Cut the host's cable (its veth): connects time out; short cuts keep sessions alive."""
        run(["ip", "link", "set", "dev", self.veth, "down"])

    def link_up(self) -> None:
        """Plug the cable back in."""
        run(["ip", "link", "set", "dev", self.veth, "up"])

    def refuse_connections(self) -> None:
        """Answer SYNs to port 22 with a TCP reset (instant "connection refused"), via iptables."""
        with self._lock:
            if not self._refusing:
                run(["ip", "netns", "exec", self.netns, "iptables", "-w", "-I", *self._reject])
                self._refusing = True

    def accept_connections(self) -> None:
        """Undo :meth:`refuse_connections`."""
        with self._lock:
            if self._refusing:
                run(["ip", "netns", "exec", self.netns, "iptables", "-w", "-D", *self._reject])
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
            write_host_key(self.path("/etc/ssh"), new)
            offset = self._log_size()
            self._command("reload")  # SIGHUP: sshd re-execs and rereads its keys
            self._wait_log((READY_LINE,), offset, timeout, "sshd to reload")
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
        new connections dropped (see :class:`~capi_remote_testbed.tcpproxy.TcpProxy`).
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
