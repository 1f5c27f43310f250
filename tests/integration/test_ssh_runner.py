"""The SSH runner against real sshd hosts (namespaced, see docs/test-bed-hosts.md).

Every connection verifies host keys. Assertions look inside hosts out of band (``exec_inside``,
``host.path``) so they do not depend on the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from capi_remote.bootstrap import BootstrapPlan, MakeDirectory, RunCommand, Step, WriteFile
from capi_remote.ssh import (
    AuthenticationFailed,
    ConnectionLost,
    Credentials,
    HostKeyMismatch,
    HostKeyPolicy,
    HostKeyUnknown,
    HostLocked,
    HostUnreachable,
    Job,
    JobDetached,
    JobResult,
    Runner,
    SSHSettings,
    StepTimeout,
    SudoFailed,
    Target,
    probe,
)
from capi_remote.ssh.paramiko_transport import ParamikoConnector
from capi_remote_testbed.hosts import DEPLOY, OPERATOR, ROOT, Host
from tests.fixtures_hosts import HostsFactory
from tests.support.ssh_job import job_from_spec

pytestmark = pytest.mark.integration

SENTINEL = "/run/cluster-api/bootstrap-success.complete"
FINISH = RunCommand(shell=f"mkdir -p /run/cluster-api && touch {SENTINEL}")
COUNTERS = "/var/tmp/counters"
REPO = Path(__file__).resolve().parents[2]
FAST = SSHSettings(connect_timeout=2, banner_timeout=5, kill_grace=1, command_timeout=20)


def target(
    host: Host,
    user: str = ROOT,
    *,
    policy: HostKeyPolicy | None = None,
    sudo_password: str | None = None,
    via: Target | None = None,
) -> Target:
    return Target(
        address=host.address,
        port=host.port,
        credentials=Credentials(
            user=user,
            private_key=host.fleet.client_key.private_openssh,
            sudo_password=sudo_password,
        ),
        host_key=policy or HostKeyPolicy.from_known_hosts(host.fleet.known_hosts()),
        via=via,
    )


def plan(*steps: Step) -> BootstrapPlan:
    return BootstrapPlan(steps=(*steps, FINISH))


def run(
    job_target: Target, steps: BootstrapPlan, *, settings: SSHSettings = FAST, **kw: object
) -> JobResult:
    with Runner(settings) as runner:
        return runner.run(Job(target=job_target, plan=steps, machine_uid="m-1", **kw))  # type: ignore[arg-type]


def count(name: str, then: str = "") -> RunCommand:
    """A step that appends a line to a counter file on the host: proves how often it ran."""
    return RunCommand(shell=f"mkdir -p {COUNTERS} && echo ran >> {COUNTERS}/{name}{then}")


def counter(host: Host, name: str) -> int:
    path = host.path(f"{COUNTERS}/{name}")
    return len(path.read_text().splitlines()) if path.exists() else 0


def inside(host: Host, *argv: str) -> str:
    result = host.exec_inside(argv)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def live_processes(host: Host) -> list[str]:
    """Command lines of processes on the host that are not zombies (the test bed's PID 1 never
    reaps orphans; a real init does)."""
    out = inside(host, "ps", "-eo", "stat=,args=")
    return [
        line.split(None, 1)[1] for line in out.splitlines() if not line.lstrip().startswith("Z")
    ]


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- what steps do on a real host ----------------------------------------------------------------


def test_write_file_attributes(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    tricky = b"quotes ' \" `date` $HOME ${X} \\ \\n\nline 2\n\x00\x01\xfe\xff end"
    steps = plan(
        WriteFile(path="/etc/capi/plain.conf", content=b"a=1\n"),
        WriteFile(
            path="/opt/deep/er/secret.key", content=tricky, mode=0o600, owner="deploy:operator"
        ),
        WriteFile(path="/etc/capi/group-only", content=b"g\n", owner=":operator", mode=0o640),
        WriteFile(path="/etc/capi/setuid-tool", content=b"#!/bin/sh\n", mode=0o4755),
        WriteFile(path="/etc/motd.d/extra", content=b"first\n", append=True),
        WriteFile(path="/etc/motd.d/extra", content=b"second\n", append=True, mode=0o600),
        RunCommand(argv=("useradd", "--system", "appuser")),
        MakeDirectory(path="/srv/app/data", mode=0o2770, owner="appuser:appuser"),
        WriteFile(path="/srv/app/data/owned", content=b"late\n", owner="appuser", deferred=True),
    )
    result = run(target(host), steps)
    assert [s.status for s in result.steps] == ["ran"] * len(steps.steps)

    def stat(path: str) -> str:
        return inside(host, "stat", "-c", "%a %U:%G", path).strip()

    assert host.path("/etc/capi/plain.conf").read_bytes() == b"a=1\n"
    assert stat("/etc/capi/plain.conf") == "644 root:root"
    assert host.path("/opt/deep/er/secret.key").read_bytes() == tricky
    assert stat("/opt/deep/er/secret.key") == "600 deploy:operator"
    assert stat("/opt/deep") == "755 root:root" and stat("/opt/deep/er") == "755 root:root"
    assert stat("/etc/capi/group-only") == "640 root:operator"
    assert stat("/etc/capi/setuid-tool") == "4755 root:root"
    assert host.path("/etc/motd.d/extra").read_bytes() == b"first\nsecond\n"
    assert stat("/etc/motd.d/extra") == "600 root:root"
    assert stat("/srv/app/data") == "2770 appuser:appuser" and stat("/srv/app") == "755 root:root"
    assert stat("/srv/app/data/owned") == "644 appuser:appuser"
    leftovers = inside(host, "find", "/etc", "/opt", "/srv", "-name", ".capi-remote.*")
    assert leftovers == ""


def test_commands_keep_quotes_newlines_and_dollars(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    tricky = 'it\'s "quoted" $HOME ${PATH} `id` \\ a\nnew line; rm -rf /nope'
    steps = plan(
        RunCommand(argv=("sh", "-c", 'printf "%s" "$1" > /tmp/argv.out', "sh", tricky)),
        RunCommand(
            shell=f"cat > /tmp/shell.out <<'EOF'\n{tricky}\nEOF\necho \"$HOME\" > /tmp/home"
        ),
        RunCommand(argv=("sh", "-c", 'printf "%s" "$X" > /tmp/env.out'), env=(("X", tricky),)),
    )
    run(target(host), steps)
    assert host.path("/tmp/argv.out").read_text() == tricky
    assert host.path("/tmp/shell.out").read_text() == tricky + "\n"
    assert host.path("/tmp/env.out").read_text() == tricky


def test_deploy_user_runs_everything_as_root_through_sudo(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    steps = plan(WriteFile(path="/etc/by-deploy", content=b"x"), RunCommand(argv=("id", "-u")))
    result = run(target(host, DEPLOY), steps)
    assert result.steps[1].output_tail == "0\n"
    assert inside(host, "stat", "-c", "%U %a", "/etc/by-deploy").strip() == "root 644"
    assert inside(host, "stat", "-c", "%U %a", "/var/lib/capi-remote/m-1").strip() == "root 700"


def test_operator_with_sudo_password(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    password = host.fleet.operator_password
    content = b"first line\nsecond line\n"
    steps = plan(WriteFile(path="/etc/by-operator", content=content), RunCommand(argv=("id", "-u")))
    result = run(target(host, OPERATOR, sudo_password=password), steps)
    assert result.steps[1].output_tail == "0\n"
    assert host.path("/etc/by-operator").read_bytes() == content, "password not mixed into data"
    found = host.exec_inside(["grep", "-rl", password, "/var/lib/capi-remote", "/etc", "/tmp"])
    assert found.stdout == b"", "the sudo password was written somewhere on the host"

    with pytest.raises(SudoFailed, match="not accepted"):
        run(target(host, OPERATOR, sudo_password="wrong"), plan(count("never")), settings=FAST)
    assert counter(host, "never") == 0


def test_operator_without_password_fails_fast(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    start = time.monotonic()
    with pytest.raises(SudoFailed) as failed:
        run(target(host, OPERATOR), plan(count("never")))
    assert time.monotonic() - start < 5
    assert failed.value.reason == "SudoFailed" and not failed.value.retryable
    assert "password" in str(failed.value)
    assert counter(host, "never") == 0 and not host.path("/var/lib/capi-remote").exists()


def test_password_login_and_other_key_types(hosts: HostsFactory) -> None:
    (host,) = hosts(1, sshd_config_extra={"PasswordAuthentication": "yes"})
    password = host.fleet.operator_password
    by_password = attrs.evolve(
        target(host, OPERATOR),
        credentials=Credentials(user=OPERATOR, password=password, sudo_password=password),
    )
    assert run(by_password, plan(RunCommand(argv=("id", "-u")))).steps[0].output_tail == "0\n"

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ecdsa_key = ec.generate_private_key(ec.SECP256R1())
    passphrase = "correct horse"
    for key, private, phrase in (
        (rsa_key, serialization.PrivateFormat.TraditionalOpenSSL, None),
        (ecdsa_key, serialization.PrivateFormat.OpenSSH, passphrase),
    ):
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        host.exec_inside(["sh", "-c", "cat >> /root/.ssh/authorized_keys"], input=public + b"\n")
        encryption = (
            serialization.BestAvailableEncryption(phrase.encode())
            if phrase
            else serialization.NoEncryption()
        )
        text = key.private_bytes(serialization.Encoding.PEM, private, encryption).decode()
        keyed = attrs.evolve(
            target(host), credentials=Credentials(private_key=text, passphrase=phrase)
        )
        facts = probe(keyed, FAST)
        assert facts.hostname == host.name and facts.privilege == "root"
    # rsa-sha2 was used: Debian's sshd refuses SHA-1 RSA signatures (ssh-rsa) by default.
    assert "RSA SHA256:" in host.log_tail(200)

    with pytest.raises(AuthenticationFailed, match="rejected"):
        probe(
            attrs.evolve(by_password, credentials=Credentials(user=OPERATOR, password="nope")), FAST
        )


# -- host keys -----------------------------------------------------------------------------------


def test_host_key_mismatch_is_refused_before_anything_runs(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    old = host.host_key
    host.regenerate_host_key()
    accepted_before = host.log_tail(1000).count("Accepted publickey")
    stale = HostKeyPolicy.from_known_hosts(f"{host.address} {old.public}\n")
    with pytest.raises(HostKeyMismatch) as mismatch:
        run(target(host, policy=stale), plan(count("never")))
    assert mismatch.value.expected == (old.fingerprint,)
    assert mismatch.value.presented == host.host_key.fingerprint
    assert mismatch.value.reason == "HostKeyMismatch" and not mismatch.value.retryable
    assert counter(host, "never") == 0
    assert host.log_tail(1000).count("Accepted publickey") == accepted_before, "we never logged in"

    with pytest.raises(HostKeyMismatch):
        run(target(host, policy=HostKeyPolicy.pinned(old.fingerprint)), plan(count("never")))
    assert counter(host, "never") == 0


def test_trust_on_first_use_pins_then_refuses_a_changed_key(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    first = probe(target(host, policy=HostKeyPolicy.trust_on_first_use()), FAST)
    assert first.host_key_fingerprint == host.host_key.fingerprint
    pinned = HostKeyPolicy.trust_on_first_use(first.host_key_fingerprint)
    result = run(target(host, policy=pinned), plan(count("a")))
    assert result.host_key_fingerprint == first.host_key_fingerprint and counter(host, "a") == 1

    host.regenerate_host_key()
    with pytest.raises(HostKeyMismatch) as mismatch:
        probe(target(host, policy=pinned), FAST)
    assert mismatch.value.presented == host.host_key.fingerprint


def test_unknown_host_key(hosts: HostsFactory) -> None:
    first, second = hosts(2)
    only_second = HostKeyPolicy.from_known_hosts(second.known_hosts_line + "\n")
    with pytest.raises(HostKeyUnknown) as unknown:
        probe(target(first, policy=only_second), FAST)
    assert unknown.value.presented == first.host_key.fingerprint
    hashed = HostKeyPolicy.from_known_hosts(hashed_line(first) + "\n")
    assert probe(target(first, policy=hashed), FAST).hostname == first.name


def hashed_line(host: Host) -> str:
    """A known_hosts line in the hashed form ``ssh-keygen -H`` writes."""
    salt = os.urandom(20)
    digest = hmac.new(salt, host.address.encode(), hashlib.sha1).digest()
    name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return f"{name} {host.host_key.public}"


# -- crashes, deadlines, faults ------------------------------------------------------------------


def test_killed_runner_resumes_and_every_command_runs_exactly_once(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    commands = [
        f"mkdir -p {COUNTERS} && echo ran >> {COUNTERS}/a",
        f"echo ran >> {COUNTERS}/b; sleep 2",
        f"echo ran >> {COUNTERS}/c",
        FINISH.shell,
    ]
    spec = {
        "address": host.address,
        "port": host.port,
        "user": ROOT,
        "private_key": host.fleet.client_key.private_openssh,
        "known_hosts": host.fleet.known_hosts(),
        "machine_uid": "m-1",
        "identity": "controller-0",
        "shell": commands,
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.ssh_job"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps(spec))
    child.stdin.close()
    for line in child.stdout:
        if line.startswith("progress 1 "):
            break
    wait_for(lambda: counter(host, "b") == 1)
    os.kill(child.pid, signal.SIGKILL)  # mid-step: no cleanup, lock and markers stay
    child.wait()
    assert counter(host, "c") == 0
    assert any("sleep 2" in p for p in live_processes(host)), "the step survived its runner"

    with Runner(FAST, identity="controller-0") as runner:
        result = runner.run(job_from_spec(spec))
    assert [s.status for s in result.steps] == ["skipped", "resumed", "ran", "ran"]
    assert (counter(host, "a"), counter(host, "b"), counter(host, "c")) == (1, 1, 1)
    with Runner(FAST, identity="controller-0") as runner:
        assert runner.run(job_from_spec(spec)).already_bootstrapped


def test_a_hung_command_hits_its_deadline_and_is_gone(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    steps = plan(RunCommand(shell="echo going to hang; sleep 1000; echo never"))
    start = time.monotonic()
    with pytest.raises(StepTimeout) as timeout:
        run(target(host), steps, step_timeout=1.5)
    assert time.monotonic() - start < 8
    assert timeout.value.retryable and timeout.value.output_tail == "going to hang\n"
    assert not any("sleep 1000" in p for p in live_processes(host))


def test_large_output_does_not_deadlock_and_the_tail_is_bounded(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    five_mib = "head -c 5242880 /dev/zero | tr '\\0' o"
    steps = plan(RunCommand(shell=f"{five_mib}; {five_mib} >&2; echo; echo done"))
    result = run(target(host), steps)
    tail = result.steps[0].output_tail
    assert len(tail) == FAST.output_tail_bytes and tail.endswith("o\ndone\n")

    # The transport itself, both streams at once, far past the 2 MiB window.
    connection = ParamikoConnector(FAST).connect(target(host))
    try:
        both = f"( {five_mib} >&2 & {five_mib}; wait )"
        out = connection.exec(both, timeout=60, tail_bytes=1024)
    finally:
        connection.close()
    assert out.exit_status == 0
    assert (out.stdout_total, out.stderr_total) == (5242880, 5242880)
    assert len(out.stdout) == len(out.stderr) == 1024


def test_sshd_going_away_mid_job_is_retryable_and_resumes(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    steps = plan(count("a", "; sleep 2"), count("b"))

    def cut() -> None:
        wait_for(lambda: counter(host, "a") == 1)
        host.stop_sshd()
        host.exec_inside(["pkill", "-x", "sshd"])  # drop established sessions too

    async def scenario() -> None:
        with Runner(FAST) as runner:
            future = runner.submit(Job(target=target(host), plan=steps, machine_uid="m-1"))
            await asyncio.to_thread(cut)
            with pytest.raises(ConnectionLost) as lost:
                await future
            assert lost.value.retryable

    asyncio.run(scenario())
    with pytest.raises(HostUnreachable) as unreachable:
        run(target(host), steps)
    assert unreachable.value.retryable and "refused" in str(unreachable.value)
    host.start_sshd()
    result = run(target(host), steps)
    assert [s.status for s in result.steps][1:] == ["ran", "ran"]
    assert (counter(host, "a"), counter(host, "b")) == (1, 1)


def test_link_down_and_refused_are_unreachable_quickly(hosts: HostsFactory) -> None:
    down, refusing = hosts(2)
    settings = attrs.evolve(FAST, connect_timeout=1.0)
    down.link_down()
    start = time.monotonic()
    with pytest.raises(HostUnreachable, match="timed out") as unreachable:
        run(target(down), plan(), settings=settings)
    assert time.monotonic() - start < 3 and unreachable.value.retryable
    down.link_up()

    refusing.refuse_connections()
    start = time.monotonic()
    with pytest.raises(HostUnreachable, match="refused"):
        run(target(refusing), plan(), settings=settings)
    assert time.monotonic() - start < 1


def test_a_cable_pulled_during_a_quiet_command_ends_it_as_connection_lost(
    hosts: HostsFactory,
) -> None:
    """Nothing flows while the command sleeps, so only unanswered keepalives show the link is
    gone: the connection must be given up (TCP_USER_TIMEOUT), not waited on until the command's
    own deadline (or, for waits paramiko does not bound, the kernel's 15 minutes)."""
    (host,) = hosts(1)
    settings = attrs.evolve(FAST, keepalive_interval=2, dead_link_timeout=3.0)
    connection = ParamikoConnector(settings).connect(target(host))
    pulled = threading.Timer(1.0, host.link_down)
    try:
        pulled.start()
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            connection.exec("sleep 100", timeout=90)
        assert time.monotonic() - start < 30
    finally:
        pulled.join()
        connection.close()
        host.link_up()


def test_a_targets_connect_deadline_overrides_the_runners(hosts: HostsFactory) -> None:
    """spec.timeouts.connect: a short deadline for one host, whatever the runner's defaults."""
    (host,) = hosts(1)
    patient = attrs.evolve(FAST, connect_timeout=30.0, banner_timeout=30.0, handshake_attempts=1)
    host.link_down()
    try:
        start = time.monotonic()
        with pytest.raises(HostUnreachable, match=r"timed out after 1 s"):
            run(attrs.evolve(target(host), connect_timeout=1.0), plan(), settings=patient)
        assert time.monotonic() - start < 5
    finally:
        host.link_up()
    # A TCP peer that never sends an SSH banner: the banner wait is bounded the same way.
    with host.proxy(drop_rate=1.0, drop_mode="blackhole") as proxy:
        address, port = proxy.address
        silent = attrs.evolve(target(host), address=address, port=port, connect_timeout=1.0)
        start = time.monotonic()
        with pytest.raises(HostUnreachable):
            run(silent, plan(), settings=patient)
        assert time.monotonic() - start < 5


def test_resets_during_the_handshake_are_retried(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    pinned = HostKeyPolicy.pinned(host.host_key.fingerprint)
    quick = attrs.evolve(FAST, handshake_backoff=0.05, handshake_backoff_max=0.5)
    with host.proxy(latency_ms=20, drop_rate=0.5, drop_mode="reset", seed=3) as proxy:
        address, port = proxy.address
        via_proxy = attrs.evolve(target(host, policy=pinned), address=address, port=port)
        for _ in range(5):
            assert probe(via_proxy, quick).hostname == host.name
        assert proxy.stats.dropped > 0, "some handshakes were reset and retried"
        result = run(via_proxy, plan(count("a")), settings=quick)
    assert [s.status for s in result.steps] == ["ran", "ran"]


def test_bastion(hosts: HostsFactory) -> None:
    bastion, inner = hosts(2)
    result = run(
        target(inner, DEPLOY, via=target(bastion, OPERATOR)), plan(count("a")), gather_facts=True
    )
    assert result.facts is not None and result.facts.hostname == inner.name  # same connection
    assert result.facts.privilege == "sudo"
    assert result.host_key_fingerprint == inner.host_key.fingerprint
    assert result.bastion_host_key_fingerprint == bastion.host_key.fingerprint  # for TOFU pins
    assert counter(inner, "a") == 1 and counter(bastion, "a") == 0
    assert "via" in result.host
    assert probe(target(bastion), FAST).bastion_host_key_fingerprint is None
    # The inner host's key is checked too (through the tunnel), and so is the bastion's.
    wrong_inner = HostKeyPolicy.pinned(bastion.host_key.fingerprint)
    with pytest.raises(HostKeyMismatch):
        probe(target(inner, policy=wrong_inner, via=target(bastion)), FAST)
    wrong_bastion = HostKeyPolicy.pinned(inner.host_key.fingerprint)
    with pytest.raises(HostKeyMismatch):
        probe(target(inner, via=target(bastion, policy=wrong_bastion)), FAST)
    inner.refuse_connections()
    with pytest.raises(HostUnreachable, match="bastion could not connect"):
        probe(target(inner, via=target(bastion)), FAST)


# -- concurrency ---------------------------------------------------------------------------------


def test_a_hundred_hosts_in_parallel(hosts: HostsFactory) -> None:
    fleet = hosts(100)
    steps = plan(count("a"))

    async def all_jobs() -> list[JobResult]:
        with Runner(FAST) as runner:
            jobs = [Job(target=target(h), plan=steps, machine_uid="m-1") for h in fleet]
            return await asyncio.gather(*(runner.submit(job) for job in jobs))

    start = time.monotonic()
    results = asyncio.run(all_jobs())
    elapsed = time.monotonic() - start
    print(f"100 hosts bootstrapped in {elapsed:.1f} s")
    assert all(not r.already_bootstrapped for r in results)
    assert all(counter(h, "a") == 1 for h in fleet)


def test_many_connections_to_one_host_stay_within_max_startups(hosts: HostsFactory) -> None:
    (host,) = hosts(1)

    async def probes() -> list[str]:
        with Runner(FAST) as runner:
            found = await asyncio.gather(*(runner.probe(target(host)) for _ in range(24)))
        return [facts.hostname for facts in found]

    assert asyncio.run(probes()) == [host.name] * 24
    assert "beginning MaxStartups throttling" not in host.log_tail(500)


def test_two_jobs_on_one_host_never_both_run(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    steps = plan(count("a", "; sleep 2"))

    async def race() -> list[JobResult | BaseException]:
        with Runner(FAST, identity="one") as first, Runner(FAST, identity="two") as second:
            jobs = [
                runner.submit(Job(target=target(host), plan=steps, machine_uid="m-1"))
                for runner in (first, second)
            ]
            return await asyncio.gather(*jobs, return_exceptions=True)

    outcomes = asyncio.run(race())
    assert sorted(type(o).__name__ for o in outcomes) == ["HostLocked", "JobResult"]
    assert counter(host, "a") == 1

    async def same_runner() -> list[JobResult | BaseException]:
        with Runner(FAST) as runner:
            jobs = [
                runner.submit(Job(target=target(host), plan=steps, machine_uid=uid))
                for uid in ("m-2", "m-3")
            ]
            return await asyncio.gather(*jobs, return_exceptions=True)

    outcomes = asyncio.run(same_runner())
    assert any(isinstance(o, HostLocked) for o in outcomes)


def test_a_cancelled_job_kills_its_remote_process(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    steps = plan(count("a", "; sleep 1000"), count("b"))

    async def scenario() -> None:
        with Runner(FAST) as runner:
            future = runner.submit(Job(target=target(host), plan=steps, machine_uid="m-1"))
            await asyncio.to_thread(wait_for, lambda: counter(host, "a") == 1)
            future.cancel()
            with pytest.raises(asyncio.CancelledError):
                await future
            await asyncio.to_thread(
                wait_for, lambda: not any("sleep 1000" in p for p in live_processes(host))
            )

    asyncio.run(scenario())
    assert counter(host, "b") == 0
    assert not host.path("/run/capi-remote/host.lock").exists(), "the lock was released"


def test_a_detached_job_keeps_running_and_the_next_controller_resumes_it(
    hosts: HostsFactory,
) -> None:
    (host,) = hosts(1)
    steps = plan(count("a", "; sleep 3"), count("b"))
    job = Job(target=target(host), plan=steps, machine_uid="m-1")

    async def shutdown_mid_step() -> float:
        runner = Runner(FAST, identity="controller-old")
        future = runner.submit(job)
        await asyncio.to_thread(wait_for, lambda: counter(host, "a") == 1)
        start = time.monotonic()
        runner.detach()
        with pytest.raises(JobDetached) as detached:
            await future
        elapsed = time.monotonic() - start
        await runner.aclose()  # kills nothing after detach
        assert detached.value.retryable
        return elapsed

    assert asyncio.run(shutdown_mid_step()) < 1.5, "the job stopped waiting promptly"
    assert any("sleep 3" in p for p in live_processes(host)), "the step survived the shutdown"
    assert not host.path("/run/capi-remote/host.lock").exists(), "the lock was released"

    with Runner(FAST, identity="controller-new") as successor:
        result = successor.run(job)
    assert [s.status for s in result.steps] == ["resumed", "ran", "ran"]
    assert result.lock_taken_over_from is None, "no stale lock to wait for"
    assert (counter(host, "a"), counter(host, "b")) == (1, 1)


def test_probe(hosts: HostsFactory) -> None:
    (host,) = hosts(1)
    facts = probe(target(host, OPERATOR, sudo_password=host.fleet.operator_password), FAST)
    assert facts.hostname == host.name
    assert facts.os_id == "debian" and facts.os_version_id == "12"
    assert facts.kernel == os.uname().release and facts.arch == os.uname().machine
    assert facts.cpus == os.cpu_count() and facts.memory_bytes > 0
    assert host.address in [a.address for a in facts.addresses]
    assert facts.privilege == "sudo-password"
    assert facts.host_key_fingerprint == host.host_key.fingerprint


def test_cleanup_runs_once_then_forgets_the_machine_on_the_host(hosts: HostsFactory) -> None:
    host = hosts(1)[0]
    bootstrap = plan(count("bootstrap"))
    assert run(target(host), bootstrap).already_bootstrapped is False
    teardown = BootstrapPlan(steps=(count("cleanup"),), format="script")
    run(target(host), teardown, cleanup=True)
    assert counter(host, "cleanup") == 1
    assert not host.path(SENTINEL).exists()
    assert not host.path("/var/lib/capi-remote/m-1").exists()
    assert not host.path("/var/lib/capi-remote/m-1.cleanup").exists()
    # The host is fresh: the same plan runs again for the next machine, not "already done".
    again = run(target(host), bootstrap)
    assert again.already_bootstrapped is False
    assert counter(host, "bootstrap") == 2


def test_black_hole_hosts_of_one_tenant_do_not_hold_up_another_tenants_host(
    hosts: HostsFactory,
) -> None:
    """Issue 15: a tenant's hosts that accept TCP and never speak SSH, or take forever over the
    key exchange, must not keep another tenant's healthy host waiting for a CPU slot (one slot
    here): it is provisioned while every black hole is still pending."""
    (host,) = hosts(1)
    settings = attrs.evolve(
        FAST,
        cpu_slots=1,
        admission_hold=0.5,
        banner_timeout=15,
        handshake_timeout=5,
        handshake_attempts=1,
    )
    silent = [host.proxy(drop_rate=1.0, drop_mode="blackhole") for _ in range(3)]
    slow = [host.proxy(latency_ms=3000) for _ in range(3)]  # a round trip of the kex takes 6 s

    def job(address: str, port: int, tenant: str, uid: str) -> Job:
        hop = attrs.evolve(target(host), address=address, port=port, tenant=tenant)
        return Job(target=hop, plan=plan(count(uid)), machine_uid=uid)

    async def scenario() -> tuple[list[bool], list[BaseException | JobResult]]:
        runner = Runner(settings)
        try:
            evil = [
                runner.submit(job(*proxy.address, "evil", f"evil-{i}"))
                for i, proxy in enumerate(slow + silent)
            ]
            await asyncio.sleep(4)  # the slow hosts' banners arrived: their key exchanges run
            await runner.submit(job(host.address, host.port, "good", "good"))
            pending = [not future.done() for future in evil]
            return pending, await asyncio.gather(*evil, return_exceptions=True)
        finally:
            await runner.aclose()

    pending, outcomes = asyncio.run(scenario())
    assert counter(host, "good") == 1
    assert all(pending), "the healthy host did not wait for any black hole's timeout"
    # Each ends in its own error: a deadline, or (a slow host done at last) its unknown address.
    assert all(isinstance(outcome, HostUnreachable | HostKeyUnknown) for outcome in outcomes)
