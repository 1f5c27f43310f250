"""R3: the host or its network fails in the middle of provisioning.

Faults hit hosts while their bootstrap runs (a bootstrap of a few ``sleep`` steps, so there is a
"middle" to hit; for sshd and link faults its first step waits until the fault is in, so that a
slow test bed cannot make the fault miss the job), all at once under one controller, each fault
on hosts of its own:

- ``sshd-killed``: sshd is stopped and its per-connection processes are SIGKILLed (the job's
  session breaks, new connections are refused), then started again after a while;
- ``link-down``: the host's cable is pulled for longer than the SSH keepalive and lock heartbeat
  intervals, then plugged back in;
- ``slow-lossy``: the machine is reached through a proxy adding 200 ms each way and dropping
  connections (TCP resets on some hosts, blackholes that never answer on others);
- ``hung-command``: a step sleeps for a day, longer than the machine's ``spec.timeouts.command``;
- ``hung-job``: the same step with no command deadline, longer than ``spec.timeouts.job``;
- ``sshd-gone``: as ``sshd-killed``, but sshd never comes back (``maxAttempts: 2``);
- ``link-gone``: as ``link-down``, but the cable stays out (only with
  ``CAPI_REMOTE_CHAOS_SCALE`` > 1: it takes the 60 s helper deadline, then 3 failed cleanups).

A machine whose host comes back must recover: provisioned, every step exactly once per the
host-side counters. The others must end ``Failed`` with a clear condition: their reason
(``StepTimeout``, ``JobTimeout``, ``HostUnreachable``, ``ConnectionLost``) and a message saying
what and that it gave up, with nothing after the fault run on the host and no process of a hung
step left behind. Then deleting the Cluster must leave no stuck finalizer: every RemoteMachine,
Machine and the Cluster are gone within a bound.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from capi_remote.resources import CLUSTERS, MACHINES, REMOTE_MACHINES
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.tcpproxy import DropMode, TcpProxy
from e2e.bed import Bed
from tests.chaos.conftest import (
    COUNT_START,
    SCALE,
    ChaosBedFactory,
    Controllers,
    counted,
    counts,
    log_errors,
    scaled,
)

pytestmark = pytest.mark.integration

#: The bootstrap: this many ``sleep`` steps between the counters (about 2 s each).
SLEEP_STEPS = 4
SLEEP_SECONDS = 2
#: The hung step sleeps this long (a day); the deadlines that end it (the smallest allowed job
#: deadline is a minute).
HANG_SECONDS = 86_399
COMMAND_TIMEOUT = "5s"
JOB_TIMEOUT = "1m"
#: How long sshd stays down, and the cable unplugged (longer than the 15 s keepalive and the
#: 10 s lock heartbeat, shorter than the 60 s helper deadline).
SSHD_DOWN = 8.0
LINK_DOWN = 16.0
LATENCY_MS = 200.0
GATE = "/var/tmp/chaos-gate"
DROP_RATE = 0.3


def slow_script(*, hang: bool = False, gated: bool = False) -> str:
    """A counted bootstrap of a few seconds; ``hang`` adds a step that never ends in time,
    ``gated`` a first step that waits until the test opens the host's gate (:func:`_open_gate`):
    however slow the test bed, the job is surely in the middle when the fault hits."""
    gate = f"- while [ ! -e {GATE} ]; do sleep 0.2; done\n" if gated else ""
    sleeps = f"- sleep {SLEEP_SECONDS}\n" * SLEEP_STEPS
    hung = f"- sleep {HANG_SECONDS}\n" if hang else ""
    return counted(
        "#cloud-config\nruncmd:\n"
        + gate
        + sleeps
        + hung
        + "- mkdir -p /run/cluster-api\n"
        + "- touch /run/cluster-api/bootstrap-success.complete\n"
    )


def lossy_seed(rate: float) -> int:
    """A proxy seed whose first connection is dropped and whose second one is not, so every
    lossy host really loses a connection, and the handshake retries get through."""
    rng = random.Random()
    while True:
        seed = rng.randrange(1 << 30)
        draws = random.Random(seed)
        if draws.random() < rate <= draws.random():
            return seed


def kill_sshd_sessions(host: Host) -> int:
    """SIGKILL, by pid, the sshd processes still alive in ``host`` after ``stop_sshd`` (the
    per-connection ones: stopping sshd leaves established sessions alone). Returns how many."""
    namespace = Path(f"/proc/{host.init_pid}/ns/pid").readlink()
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "pid").readlink() != namespace:
                continue
            if not (entry / "comm").read_text().startswith("sshd"):
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except OSError:  # gone meanwhile (ProcessLookupError included)
            continue
    return killed


def processes_matching(host: Host, needle: str) -> int:
    """How many processes in ``host`` have ``needle`` in their command line (out of band)."""
    script = 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f"; echo; done 2>/dev/null'
    result = host.exec_inside(["sh", "-c", script])
    return sum(1 for line in result.stdout.decode(errors="replace").splitlines() if needle in line)


@attrs.define
class Case:
    """One fault on its own hosts; ``expect`` is the Ready reason each machine must end with,
    ``message`` what a failure's message must contain."""

    name: str
    hosts: list[Host]
    expect: str
    message: str = ""
    spec: dict[str, Any] = attrs.field(factory=dict)
    hang: bool = False
    machines: dict[str, Host] = attrs.field(factory=dict)
    proxies: dict[str, TcpProxy] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)


class ReasonLog:
    """Lists the RemoteMachines every 0.5 s and records each machine's sequence of Ready
    reasons, and when it first showed the reason it must end with."""

    def __init__(self, bed: Bed, final: dict[str, str]) -> None:
        self.bed = bed
        self.final = final
        self.started = time.monotonic()
        self.reasons: dict[str, list[str]] = {}
        self.reached: dict[str, float] = {}
        self.objects: dict[str, dict[str, Any]] = {}

    def observe(self, items: list[dict[str, Any]]) -> None:
        for rm in items:
            name = rm["metadata"]["name"]
            self.objects[name] = rm
            reason = str(_condition(rm, "Ready").get("reason") or "")
            attempts = ((rm.get("status") or {}).get("bootstrap") or {}).get("attempts")
            shown = f"{reason}({attempts})" if attempts else reason
            seen = self.reasons.setdefault(name, [])
            if reason and (not seen or seen[-1] != shown):
                seen.append(shown)
            if name not in self.reached and _ended(rm, self.final.get(name, "")):
                self.reached[name] = time.monotonic() - self.started

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.observe(await self.bed.list(REMOTE_MACHINES))
            await asyncio.sleep(0.5)


def _condition(rm: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in (rm.get("status") or {}).get("conditions", []):
        if condition.get("type") == type_:
            return dict(condition)
    return {}


def _ended(rm: dict[str, Any], expect: str) -> bool:
    """Has ``rm`` reached its final state: provisioned, or failed for good with ``expect``?"""
    ready = _condition(rm, "Ready")
    status = rm.get("status") or {}
    if expect == "Provisioned":
        return ready.get("status") == "True" and bool(
            (status.get("initialization") or {}).get("provisioned")
        )
    return ready.get("reason") == expect and status.get("phase") == "Failed"


async def _when_started(host: Host, within: float) -> None:
    """Wait until the first bootstrap step ran on ``host`` (its start counter), out of band."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(host.exec_inside, ["cat", COUNT_START])
        if result.returncode == 0 and result.stdout.strip():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no bootstrap step ran on {host.name} within {within:.0f}s")


async def _open_gate(host: Host) -> None:
    """Let the gated step finish (out of band: works with the cable pulled too)."""
    result = await asyncio.to_thread(host.exec_inside, ["touch", GATE])
    assert result.returncode == 0, result.stderr


async def _sshd_killed(case: Case, host: Host, *, back: bool = True) -> None:
    await _when_started(host, 60)
    await asyncio.to_thread(host.stop_sshd)
    killed = await asyncio.to_thread(kill_sshd_sessions, host)
    await _open_gate(host)
    case.notes.append(f"{host.name}: {killed} sshd session processes killed")
    assert killed, f"{host.name}: no SSH session to kill: the fault missed the running job"
    if back:
        await asyncio.sleep(SSHD_DOWN)
        await asyncio.to_thread(host.start_sshd)


async def _sshd_gone(case: Case, host: Host) -> None:
    await _sshd_killed(case, host, back=False)


async def _link_down(case: Case, host: Host, *, back: bool = True) -> None:
    await _when_started(host, 60)
    await asyncio.to_thread(host.link_down)
    await _open_gate(host)
    if back:
        await asyncio.sleep(LINK_DOWN)
        await asyncio.to_thread(host.link_up)


async def _link_gone(case: Case, host: Host) -> None:
    await _link_down(case, host, back=False)


FAULTS: dict[str, Callable[[Case, Host], Awaitable[None]]] = {
    "sshd-killed": _sshd_killed,
    "link-down": _link_down,
    "sshd-gone": _sshd_gone,
    "link-gone": _link_gone,
}


def _cases(hosts: list[Host], per_case: int) -> list[Case]:
    """The faults, ``per_case`` hosts each (twice that through the lossy proxies)."""
    cases = [
        Case("sshd-killed", [], "Provisioned"),
        Case("link-down", [], "Provisioned"),
        Case("slow-lossy", [], "Provisioned"),
        Case(
            "hung-command",
            [],
            "StepTimeout",
            "did not finish within 5 s and was killed (gave up after 1 attempts)",
            {"timeouts": {"command": COMMAND_TIMEOUT}, "maxAttempts": 1},
            hang=True,
        ),
        Case(
            "hung-job",
            [],
            "JobTimeout",
            "did not finish within 60 s (gave up after 1 attempts)",
            {"timeouts": {"job": JOB_TIMEOUT}, "maxAttempts": 1},
            hang=True,
        ),
        Case("sshd-gone", [], "HostUnreachable", "(gave up after 2 attempts)", {"maxAttempts": 2}),
    ]
    if SCALE > 1:
        cases.append(
            Case(
                "link-gone", [], "ConnectionLost", "(gave up after 1 attempts)", {"maxAttempts": 1}
            )
        )
    free = iter(hosts)
    for case in cases:
        wanted = 2 * per_case if case.name == "slow-lossy" else per_case
        case.hosts = [next(free) for _ in range(wanted)]
    return cases


async def test_r3_host_faults_during_provisioning(
    controllers: Controllers, chaos_bed: ChaosBedFactory
) -> None:
    per_case = scaled(1, maximum=20)
    bed = await chaos_bed((8 if SCALE > 1 else 7) * per_case)
    cases = _cases(bed.fleet.hosts, per_case)
    controllers.start()
    await bed.cluster("r3")
    slow = await bed.bootstrap_secret("r3-slow", slow_script())
    hung = await bed.bootstrap_secret("r3-hung", slow_script(hang=True))
    gated = await bed.bootstrap_secret("r3-gated", slow_script(gated=True))
    for case in cases:
        for index, host in enumerate(case.hosts):
            name = f"r3-{case.name}-{index}"
            spec = {**bed.host_spec(host), **case.spec}
            if case.name == "slow-lossy":
                mode: DropMode = "reset" if index % 2 == 0 else "blackhole"
                seed = lossy_seed(DROP_RATE)
                proxy = host.proxy(LATENCY_MS, DROP_RATE, drop_mode=mode, seed=seed)
                address, port = proxy.address
                # The proxy's address is not in known_hosts: pin the host's key instead.
                spec.update(
                    address=address,
                    port=port,
                    hostKeyPolicy={"fingerprint": host.host_key.fingerprint},
                )
                case.proxies[name] = proxy
            await bed.remote_machine(name, spec)
            data = hung if case.hang else gated if case.name in FAULTS else slow
            await bed.machine(name, "r3", data)
            case.machines[name] = host

    final = {name: case.expect for case in cases for name in case.machines}
    log = ReasonLog(bed, final)
    stop = asyncio.Event()
    watching = asyncio.create_task(log.run(stop))
    try:
        await asyncio.gather(
            *(FAULTS[c.name](c, host) for c in cases if c.name in FAULTS for host in c.hosts)
        )

        async def all_ended() -> bool:
            return len(log.reached) == len(final)

        await bed.wait_for(
            "every machine provisioned or failed with its expected reason",
            all_ended,
            180 + 5 * per_case,
            diagnose=lambda: _report(cases, log) + "\n" + controllers.tails(),
        )
    finally:
        stop.set()
        await watching
    for case in cases:
        for name, proxy in case.proxies.items():
            stats = proxy.stats
            case.notes.append(
                f"{name}: drops by {proxy.drop_mode}: {stats.dropped} of {stats.connections}"
                " connections dropped"
            )
    errors = log_errors(controllers.running[-1].process.log)
    print(
        f"\nR3: {len(final)} machines, {per_case} per fault\n{_report(cases, log)}\n"
        f"  controller log: {len(errors.controller)} error lines,"
        f" {errors.foreign} error lines of libraries"
    )

    # The faults are the hosts' business: they end in conditions, never in failed reconciles.
    problems = [f"controller log: {line}" for line in errors.controller[:10]]
    for case in cases:
        for name, host in case.machines.items():
            problems += await _check(case, name, host, log.objects[name])
        for name, proxy in case.proxies.items():
            stats = proxy.stats
            if not stats.dropped or stats.connections <= stats.dropped:
                problems.append(f"{name}: proxy saw {stats}: no drop, or nothing got through")
    try:  # also after a wrong outcome: whatever state a fault left, deletion must not stick
        await _delete_cluster_and_wait(bed, "r3", 150 + 3 * len(final), controllers)
    except AssertionError as error:
        problems.append(str(error))
    assert not problems, "\n".join(problems) + "\n" + _report(cases, log)


async def _check(case: Case, name: str, host: Host, rm: dict[str, Any]) -> list[str]:
    """What is wrong with how machine ``name`` of ``case`` ended (already known: it ended)."""
    got = await asyncio.to_thread(counts, host)
    attempts = ((rm.get("status") or {}).get("bootstrap") or {}).get("attempts")
    if case.expect == "Provisioned":
        problems = [] if got == (1, 1) else [f"{name}: steps ran (start, end) = {got}, not once"]
        return problems + ([] if attempts else [f"{name}: no attempt count in status"])
    # Failed: a clear terminal condition, nothing after the fault ran, no hung step left, and
    # exactly the attempt budget spent (a count lost to a write conflict once let a third run).
    problems = []
    if attempts != case.spec.get("maxAttempts"):
        problems.append(f"{name}: attempts {attempts}, budget {case.spec.get('maxAttempts')}")
    message = str(_condition(rm, "Ready").get("message") or "")
    outcome = _condition(rm, "BootstrapExecSucceeded")
    if outcome.get("reason") != case.expect or outcome.get("status") != "False":
        problems.append(f"{name}: BootstrapExecSucceeded is {outcome}")
    if case.message not in message:
        problems.append(f"{name}: {case.expect} message {message!r} lacks {case.message!r}")
    if got != (1, 0):  # read out of band: a pulled cable does not matter
        problems.append(f"{name}: counters (start, end) = {got}, expected (1, 0)")
    if case.hang:
        left = await asyncio.to_thread(processes_matching, host, str(HANG_SECONDS))
        if left:
            problems.append(f"{name}: {left} processes of the hung step still run")
    return problems


async def _delete_cluster_and_wait(
    bed: Bed, cluster: str, within: float, controllers: Controllers
) -> None:
    """Delete the Cluster and wait until its Machines, RemoteMachines and itself are gone."""
    started = time.monotonic()
    await bed.kube.delete(CLUSTERS, bed.namespace, cluster)

    async def all_gone() -> bool:
        remote = await bed.list(REMOTE_MACHINES)
        machines = await bed.list(MACHINES)
        return not remote and not machines and await bed.get(CLUSTERS, cluster) is None

    async def stuck() -> str:
        return "; ".join(
            f"{rm['metadata']['name']}: finalizers {rm['metadata'].get('finalizers')},"
            f" Ready {_condition(rm, 'Ready').get('reason')}"
            for rm in await bed.list(REMOTE_MACHINES)
        )

    try:
        await bed.wait_for("everything deleted", all_gone, within)
    except AssertionError as error:
        raise AssertionError(f"{error}\nleft: {await stuck()}\n{controllers.tails()}") from None
    print(f"R3: Cluster, Machines and RemoteMachines gone {time.monotonic() - started:.1f}s after")


def _report(cases: list[Case], log: ReasonLog) -> str:
    lines = []
    for case in cases:
        for name in case.machines:
            rm = log.objects.get(name) or {}
            attempts = ((rm.get("status") or {}).get("bootstrap") or {}).get("attempts")
            reached = log.reached.get(name)
            when = f"{reached:.1f}s" if reached is not None else "not yet"
            path = " > ".join(log.reasons.get(name, []))
            lines.append(f"  {name}: {when}, attempts {attempts}: {path}")
        lines += [f"    {note}" for note in case.notes]
    return "\n".join(lines)
