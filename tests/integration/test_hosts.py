"""The namespaced sshd hosts behave like separate machines, and each fault knob does what it says.

Every SSH connection here verifies the host key against the harness's known keys (RejectPolicy).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import paramiko
import pytest

from capi_remote_testbed import rootfs
from capi_remote_testbed.hosts import (
    DEPLOY,
    OPERATOR,
    ROOT,
    Host,
    HostFleet,
    fleet_is_live,
    fleet_leftovers,
    known_hosts_line,
    sweep,
)
from tests.fixtures_hosts import FleetFactory, HostsFactory

pytestmark = pytest.mark.integration


def run(
    client: paramiko.SSHClient, command: str, *, stdin: bytes = b"", timeout: float = 15.0
) -> tuple[int, str, str]:
    """Run one command; returns (exit status, stdout, stderr)."""
    channel_in, out, err = client.exec_command(command, timeout=timeout)
    if stdin:
        channel_in.write(stdin)
    channel_in.channel.shutdown_write()
    stdout = out.read().decode()
    stderr = err.read().decode()
    return out.channel.recv_exit_status(), stdout, stderr


def ssh(host: Host, command: str, user: str = ROOT, **kwargs: object) -> tuple[int, str, str]:
    client = host.connect(user)
    try:
        return run(client, command, **kwargs)  # type: ignore[arg-type]
    finally:
        client.close()


def test_each_host_is_its_own_machine(hosts: HostsFactory) -> None:
    fleet_hosts = hosts(3)
    addresses = {h.address for h in fleet_hosts}
    assert len(addresses) == 3
    for host in fleet_hosts:
        code, out, _ = ssh(host, "hostname; cat /etc/hostname; ip -4 -o addr show dev eth0")
        assert code == 0
        lines = out.splitlines()
        assert lines[0] == host.name
        assert lines[1] == host.name
        assert f"{host.address}/24" in lines[2]


def test_hosts_have_no_route_out(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    code, out, _ = ssh(host, "ip route show default; ip -4 route")
    assert code == 0
    assert "default" not in out
    assert out.strip() == f"{host.fleet.subnet} dev eth0 proto kernel scope link src {host.address}"


def test_unknown_host_key_is_rejected(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(
            host.address,
            username=ROOT,
            pkey=host.fleet.client_key.pkey(),
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
        )
    client.close()


def test_known_hosts_file_works_with_paramiko_and_openssh(hosts: HostsFactory) -> None:
    fleet_hosts = hosts(2)
    fleet = fleet_hosts[0].fleet
    text = fleet.known_hosts_path.read_text()
    for host in fleet_hosts:
        assert f"{host.address} {host.host_public_key}" in text.splitlines()
        assert host.known_hosts_line.startswith(f"{host.address} ssh-ed25519 AAAA")

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.load_host_keys(str(fleet.known_hosts_path))
    client.connect(
        fleet_hosts[1].address,
        username=DEPLOY,
        pkey=fleet.client_key.pkey(),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
    )
    assert run(client, "whoami")[1].strip() == DEPLOY
    client.close()

    # The files printed by `make run` work for the OpenSSH client too, with strict checking.
    argv = ["ssh", "-F", "/dev/null", "-i", str(fleet.client_key_path)]
    for option in (
        "IdentitiesOnly=yes",
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={fleet.known_hosts_path}",
        "ConnectTimeout=5",
    ):
        argv += ["-o", option]
    argv += [f"{OPERATOR}@{fleet_hosts[0].address}", "hostname"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == fleet_hosts[0].name


def test_filesystems_are_isolated(hosts: HostsFactory) -> None:
    first, second = hosts(2)
    name = f"/etc/capi-remote-isolation-{secrets.token_hex(4)}"
    token = secrets.token_hex(8)
    assert not Path(name).exists()
    assert ssh(first, f"echo {token} > {name} && cat {name}") == (0, f"{token}\n", "")
    code, _, _ = ssh(second, f"test -e {name}")
    assert code == 1
    assert not Path(name).exists(), "a write on a host reached the real machine"
    # The harness can still look inside a host without SSH.
    assert first.path(name).read_text() == f"{token}\n"
    assert not second.path(name).exists()
    assert first.exec_inside(["cat", name]).stdout == f"{token}\n".encode()


def test_processes_are_isolated(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    code, out, _ = ssh(host, "ps -e -o pid=,comm=")
    assert code == 0
    commands = {line.split()[1] for line in out.splitlines()}
    assert "sshd" in commands
    assert "pytest" not in commands and "python" not in commands
    pids = [int(line.split()[0]) for line in out.splitlines()]
    assert min(pids) == 1  # a PID namespace of its own


def test_sudo_for_deploy_is_passwordless(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    assert ssh(host, "sudo -n true", user=DEPLOY)[0] == 0
    assert ssh(host, "sudo -n id -u", user=DEPLOY)[1].strip() == "0"


def test_sudo_for_operator_needs_the_password(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    password = host.fleet.operator_password
    assert ssh(host, "id -u", user=OPERATOR)[1].strip() != "0"

    start = time.monotonic()
    code, _, err = ssh(host, "sudo -n true", user=OPERATOR)
    assert code != 0
    assert "password is required" in err
    assert time.monotonic() - start < 5, "sudo -n must fail fast, not wait for a password"

    code, out, _ = ssh(host, "sudo -S -p '' id -u", user=OPERATOR, stdin=f"{password}\n".encode())
    assert (code, out.strip()) == (0, "0")

    code, _, err = ssh(host, "sudo -S -p '' true", user=OPERATOR, stdin=b"wrong-password\n")
    assert code != 0


def test_stop_and_start_sshd(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    session = host.connect(DEPLOY)
    pid = host.pid
    host.stop_sshd()
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        host.connect(timeout=5)
    # The host itself stays up, and so do sessions opened before (as with a real sshd restart).
    assert host.pid == pid and host.exec_inside(["true"]).returncode == 0
    assert run(session, "hostname")[1].strip() == host.name
    session.close()
    host.start_sshd()
    assert ssh(host, "hostname")[1].strip() == host.name


def test_link_down_times_out(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    host.link_down()
    start = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout)):
        host.connect(timeout=1.0)
    assert time.monotonic() - start < 5
    host.link_up()
    assert ssh(host, "hostname")[1].strip() == host.name


def test_refused_connections(hosts: HostsFactory) -> None:
    refused, other = hosts(2)
    refused.refuse_connections()
    start = time.monotonic()
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        refused.connect(timeout=5)
    assert time.monotonic() - start < 1, "a TCP reset should fail the connect at once"
    assert ssh(other, "hostname")[1].strip() == other.name  # only that host refuses
    refused.accept_connections()
    assert ssh(refused, "hostname")[1].strip() == refused.name


def test_regenerated_host_key_is_a_mismatch_for_the_old_one(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    old = host.host_key
    new = host.regenerate_host_key()
    assert new.public != old.public
    assert host.host_key == new and host.previous_host_keys == [old]
    with pytest.raises(paramiko.BadHostKeyException):
        host.connect(host_key=old.public)
    assert ssh(host, "hostname")[1].strip() == host.name
    assert host.fleet.known_hosts_path.read_text().count(new.public) == 1
    assert old.public not in host.fleet.known_hosts_path.read_text()


def _timed_exec(host: Host, **connect: object) -> float:
    start = time.monotonic()
    client = host.connect(**connect)  # type: ignore[arg-type]
    try:
        assert run(client, "hostname")[1].strip() == host.name
    finally:
        client.close()
    return time.monotonic() - start


def test_proxy_adds_latency(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    direct = min(_timed_exec(host) for _ in range(3))
    latency_ms = 100
    proxy = host.proxy(latency_ms=latency_ms)
    address, port = proxy.address
    assert address == "127.0.0.1"
    delayed = _timed_exec(host, via=(address, port))
    # An SSH login takes several round trips, each now 2 x latency longer.
    assert delayed - direct > 4 * latency_ms / 1000, (direct, delayed)
    assert proxy.stats.connections == 1 and proxy.stats.bytes_from_target > 0
    proxy.close()
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        host.connect(via=(address, port), timeout=2)


def test_proxy_drops_connections(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    with host.proxy(drop_rate=1.0) as blackhole:
        start = time.monotonic()
        with pytest.raises(paramiko.SSHException):
            host.connect(via=blackhole, timeout=1.0)
        assert time.monotonic() - start >= 0.9
        assert blackhole.stats.dropped == 1
    with (
        host.proxy(drop_rate=1.0, drop_mode="reset") as reset,
        pytest.raises((paramiko.SSHException, ConnectionResetError, EOFError)),
    ):
        host.connect(via=reset, timeout=5)
    with host.proxy(drop_rate=0.5, seed=7) as lossy:
        outcomes = []
        for _ in range(8):
            try:
                host.connect(via=lossy, timeout=0.5).close()
                outcomes.append(True)
            except (paramiko.SSHException, TimeoutError, OSError, EOFError):
                outcomes.append(False)
        assert any(outcomes) and not all(outcomes)
        assert lossy.stats.dropped == outcomes.count(False)


def test_concurrent_fleets_do_not_overlap(hosts: HostsFactory) -> None:
    first = hosts(2)
    second = hosts(2)
    a, b = first[0].fleet, second[0].fleet
    assert a.prefix != b.prefix and not a.subnet.overlaps(b.subnet)
    assert {h.netns for h in first}.isdisjoint({h.netns for h in second})
    for host in first + second:
        assert ssh(host, "hostname")[1].strip() == host.name
    # Hosts of one fleet reach each other, but not the other fleet's subnet (no route).
    code, _, _ = ssh(first[0], f"timeout 3 bash -c '</dev/tcp/{first[1].address}/22'")
    assert code == 0
    code, _, err = ssh(first[0], f"timeout 3 bash -c '</dev/tcp/{second[0].address}/22'")
    assert code != 0 and "unreachable" in err


def _leftovers_of(fleet: HostFleet, pids: list[int]) -> list[str]:
    found = fleet_leftovers(fleet.prefix)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"netns {n}" for n in netns.split() if n.startswith(f"{fleet.prefix}-")]
    found += [f"link {line}" for line in links.splitlines() if f" {fleet.prefix}" in line]
    found += [f"mount {m}" for m in mounts.splitlines() if str(fleet.dir) in m]
    found += [f"pid {p}" for p in pids if Path(f"/proc/{p}").exists()]
    if fleet.dir.exists():
        found.append(f"dir {fleet.dir}")
    return found


def test_teardown_leaves_nothing_behind(host_fleet_factory: FleetFactory) -> None:
    fleet = host_fleet_factory.create(3)
    session = fleet.hosts[0].connect(OPERATOR)
    run(session, "sleep 1000 >/dev/null 2>&1 &")  # a process that would outlive a sloppy teardown
    pids = [h.pid for h in fleet.hosts] + [h.init_pid for h in fleet.hosts]
    proxy = fleet.hosts[1].proxy(latency_ms=10)
    assert fleet.dir.exists() and fleet.hosts[0].netns in subprocess.getoutput("ip netns list")
    host_fleet_factory.release(fleet)
    session.close()
    assert _leftovers_of(fleet, pids) == []
    with pytest.raises(OSError):
        socket.create_connection(proxy.address, timeout=1).close()


def test_fifty_hosts_start_and_stop_quickly(host_fleet_factory: FleetFactory) -> None:
    start = time.monotonic()
    fleet = host_fleet_factory.create(50)
    up = time.monotonic() - start
    try:
        for host in fleet.hosts[::7]:
            assert ssh(host, "hostname")[1].strip() == host.name
    finally:
        pids = [h.pid for h in fleet.hosts]
        start = time.monotonic()
        host_fleet_factory.release(fleet)
        down = time.monotonic() - start
    print(f"50 hosts: up {up:.2f} s, down {down:.2f} s")
    assert up < 15 and down < 15
    assert _leftovers_of(fleet, pids) == []


_CRASHING_RUN = textwrap.dedent(
    """
    import os, sys
    from capi_remote_testbed.hosts import HostFleet
    fleet = HostFleet(2, rootfs=__import__("pathlib").Path(sys.argv[1])).start()
    print(fleet.prefix, *[h.init_pid for h in fleet.hosts], flush=True)
    sys.stdin.read()  # wait to be killed
    """
)


def test_sweep_removes_leftovers_of_a_crashed_run(host_rootfs: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_RUN, str(host_rootfs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    prefix, *init_pids = child.stdout.readline().split()
    os.kill(child.pid, signal.SIGKILL)  # no teardown, no atexit
    child.wait()
    leftovers = fleet_leftovers(prefix)
    assert any(item.startswith(f"{prefix}-h") for item in leftovers), leftovers
    # The hosts notice their harness is gone (control pipe EOF) and exit on their own.
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in init_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in init_pids)
    removed = sweep()
    # Processes may exit on their own between the two looks; everything else must be swept.
    durable = {item for item in leftovers if not item.startswith("pid ")}
    assert durable <= set(removed)
    # Unless a concurrent test session has taken the freed slot meanwhile, nothing is left.
    assert fleet_leftovers(prefix) == [] or fleet_is_live(prefix)


def test_sweep_leaves_live_fleets_alone(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    assert fleet_is_live(host.fleet.prefix)
    sweep()
    assert ssh(host, "hostname")[1].strip() == host.name
    assert fleet_leftovers(host.fleet.prefix) != []
    # Another process (here: the CLI) sees the slot's lock and leaves it alone too.
    result = subprocess.run(
        [sys.executable, "-m", "capi_remote_testbed.hosts", "cleanup"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert host.fleet.prefix not in result.stdout
    assert ssh(host, "hostname")[1].strip() == host.name


def test_known_hosts_line_format() -> None:
    assert known_hosts_line("10.0.0.2", 22, "ssh-ed25519 AAAA") == "10.0.0.2 ssh-ed25519 AAAA"
    assert known_hosts_line("127.0.0.1", 2200, "ssh-ed25519 AAAA") == (
        "[127.0.0.1]:2200 ssh-ed25519 AAAA"
    )


def test_rootfs_is_cached_small_and_keyless(
    host_rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rootfs.is_complete(host_rootfs)
    assert host_rootfs == rootfs.rootfs_path()
    assert list((host_rootfs / "etc/ssh").glob("ssh_host_*")) == []
    assert not any((host_rootfs / "var/lib/apt/lists").iterdir())
    assert not (host_rootfs / "usr/share/doc").exists() or not any(
        (host_rootfs / "usr/share/doc").iterdir()
    )
    monkeypatch.setenv("CAPI_REMOTE_CACHE", "/somewhere/else")
    assert rootfs.rootfs_path() == Path("/somewhere/else/rootfs") / host_rootfs.name
    assert rootfs.rootfs_name(packages=("openssh-server",)) != host_rootfs.name
