"""R6: etcd compaction and a kube-apiserver restart while machines provision: no event is lost.

The controller's informers resume their watches from the last resourceVersion they saw. After
etcd is compacted past it and kube-apiserver restarted (its watch cache starts afresh at the
current revision), nothing can serve that version any more: every watch gets 410 Gone and the
informer relists. What changed while the controller could not watch must still reach the
reconcilers, through the relist's synthesised events:

- machines provisioning when the apiserver dies must finish (their status writes fail while it
  is down);
- machines waiting for a bootstrap data Secret that appears in the gap must start (an event of a
  *related* object);
- Machines and RemoteMachines created in the gap must be provisioned;
- a provisioned machine deleted in the gap must have its host cleaned up exactly once and its
  finalizer removed.

The controller reaches the apiserver through a TCP proxy, which refuses it from the kill until
the changes of the gap are made: without it, the informers sometimes reconnect before the test
can make them (while the restarted apiserver is not even ready), and the changes would arrive as
ordinary watch events. A controller cut off this way sees what it would see if the apiserver
restart had taken a few seconds longer.

Every bootstrap step must have run exactly once on every host (host-side counters). The
controller must survive, or, with leader election and a cut longer than the renew deadline, exit
by design (it can no longer know that it leads) and come back cleanly when restarted in its pod.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_remote.kube.client import ApiError, Resource, TransportError
from capi_remote.resources import MACHINES, REMOTE_MACHINES
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.tcpproxy import TcpProxy
from e2e.bed import Bed
from tests.chaos.conftest import (
    ChaosBedFactory,
    ChaosEnv,
    Controller,
    Controllers,
    counted,
    counts,
    lease_spec,
    machine_phases,
    scaled,
)

pytestmark = pytest.mark.integration

EVENTS = Resource("", "v1", "events", "Event")
COUNT_CLEANUP = "/var/tmp/chaos-count-cleanup"
SENTINEL = "/run/cluster-api/bootstrap-success.complete"
RELIST = "watch resourceVersion too old, relisting"
LEASE_LOST = "failed to renew the lease in time"
RENEW_DEADLINE, RETRY_PERIOD = 10.0, 2.0  # the controller's leader election settings
#: Seconds of the pause in the slow bootstrap, and how many steps a job has started once it is in
#: it: 4 files of the registration script, the start counter, the marker, the pause.
PAUSE, PAUSE_STEP = 4, 7

#: (leader election, seconds the apiserver stays down after its SIGKILL). "short" keeps the
#: controller's cut well under the renew deadline (the leader must keep leading), "long" well
#: over it (the leader must give up and be restarted).
VARIANTS = {
    "no-election": (False, 5.0),
    "leader-elect-short": (True, 0.0),
    "leader-elect-long": (True, 14.0),
}


async def _retrying(action: Callable[[], Awaitable[object]], within: float = 30.0) -> None:
    """Run ``action``, retrying connection errors: the first requests after a restart may meet a
    connection the old apiserver dropped, or an apiserver still warming its caches (429/5xx).
    A create that went through before its answer was lost is done (409 on a retry)."""
    deadline = time.monotonic() + within
    failure: BaseException | None = None
    while True:
        try:
            await action()
            return
        except TransportError as error:
            failure = error
        except ApiError as error:
            if error.conflict and failure is not None:
                return
            if error.status not in (429, 500, 503, 504):
                raise
            failure = error
        if time.monotonic() > deadline:
            raise AssertionError(f"still failing after {within:.0f}s: {failure}") from failure
        await asyncio.sleep(0.1)


async def _create_machine(bed: Bed, name: str, host: Host, data: str) -> None:
    spec = bed.host_spec(host, cleanUpCommands=[f"echo x >> {COUNT_CLEANUP}"])
    await _retrying(lambda: bed.remote_machine(name, spec))
    await _retrying(lambda: bed.machine(name, "r6", data))


async def _provisioned(bed: Bed) -> set[str]:
    return {
        rm["metadata"]["name"]
        for rm in await bed.list(REMOTE_MACHINES)
        if ((rm.get("status") or {}).get("initialization") or {}).get("provisioned")
    }


def _log_records(log: Path, message: str) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if message in line:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _steps(logs: list[Path]) -> int:
    """Bootstrap steps the controllers started (``running step`` log lines)."""
    return sum(len(_log_records(log, '"running step"')) for log in logs)


def _paused(script: str) -> str:
    """The script with a pause at the start of its runcmd (after the counter and marker steps
    that :func:`counted` puts first there)."""
    head, sep, tail = script.partition("runcmd:\n")
    return head + sep + f"- sleep {PAUSE}\n" + tail


def _lines(host: Host, path: str) -> int:
    result = host.exec_inside(["cat", path])
    return len(result.stdout.split()) if result.returncode == 0 else 0


def _has(host: Host, path: str) -> bool:
    return host.exec_inside(["test", "-e", path]).returncode == 0


def _proxied_kubeconfig(source: Path, target: Path, port: int) -> Path:
    """The kubeconfig, pointed at the proxy (the serving certificate names 127.0.0.1)."""
    config = yaml.safe_load(source.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    target.touch(mode=0o600)
    target.write_text(yaml.safe_dump(config))
    return target


async def _event_messages(bed: Bed, name: str, reason: str) -> list[str]:
    events = await bed.kube.list(
        EVENTS, bed.namespace, field_selector=f"involvedObject.name={name},reason={reason}"
    )
    return [str(e.get("message")) for e in events.get("items", [])]


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_r6_compaction_and_apiserver_restart_lose_no_event(
    chaos_env: ChaosEnv, controllers: Controllers, chaos_bed: ChaosBedFactory, variant: str
) -> None:
    election, down_for = VARIANTS[variant]
    plane = chaos_env.plane
    running = scaled(4, maximum=100)  # in the middle of their bootstrap when the apiserver dies
    waiting = scaled(1, maximum=20)  # waiting for a data Secret created in the gap
    late = scaled(1, maximum=20)  # created in the gap
    bed = await chaos_bed(1 + running + waiting + late)
    hosts = bed.fleet.hosts
    victim_host, first = hosts[0], hosts[1 : 1 + running]
    second, third = hosts[1 + running : 1 + running + waiting], hosts[-late:]
    await bed.cluster("r6")
    script = counted(bed.registration_script())
    await bed.bootstrap_secret("r6-bootstrap", script)
    # A pause early in the bootstrap, so that the kill lands in the middle of it; the
    # registration step after it talks to the apiserver, and fails while that is down.
    await bed.bootstrap_secret("r6-slow-bootstrap", counted(_paused(bed.registration_script())))

    proxy = TcpProxy(("127.0.0.1", plane.apiserver_port), drop_mode="reset")
    proxy.start()
    kubeconfig = _proxied_kubeconfig(
        plane.kubeconfig, controllers.workdir / f"kubeconfig-{bed.namespace}", proxy.port
    )
    lease = f"r6-{bed.namespace}"
    electing = (
        "--leader-elect",
        "--leader-election-namespace=default",
        f"--leader-election-id={lease}",
    )
    # After the default --kubeconfig on the command line: this one wins.
    args = (f"--kubeconfig={kubeconfig}", *(electing if election else ()))
    try:
        # Pod-like: if it exits, restarting it is what the kubelet does with the container.
        controller: Controller = controllers.start(*args, pod_like=True)
        logs = [controller.process.log]
        if election:

            async def leads() -> bool:
                spec = await lease_spec(plane, lease)
                return spec.get("holderIdentity") == controller.identity

            await bed.wait_for("the controller to lead", leads, 60)
        first_pid = controller.pid

        # The machine deleted in the gap: provisioned first.
        victim = "r6-victim"
        await _create_machine(bed, victim, victim_host, "r6-bootstrap")

        async def victim_provisioned() -> bool:
            return victim in await _provisioned(bed)

        await bed.wait_for("the first machine provisioned", victim_provisioned, 120)
        victim_steps = _steps(logs)
        waiting_names = [f"r6-b{i}" for i in range(len(second))]
        for name, host in zip(waiting_names, second, strict=True):
            await _create_machine(bed, name, host, "r6-late-bootstrap")  # no such Secret yet
        names = [f"r6-a{i}" for i in range(len(first))]
        for name, host in zip(names, first, strict=True):
            await _create_machine(bed, name, host, "r6-slow-bootstrap")

        # Mid-run: every one of them in its pause.
        async def all_paused() -> bool:
            return _steps(logs) >= victim_steps + PAUSE_STEP * len(first)

        await bed.wait_for("every bootstrap in its pause", all_paused, 60 + len(first))
        steps_before = _steps(logs)
        done = await _provisioned(bed)

        # (1) Compaction while the apiserver serves: its watch cache keeps serving the open
        # watches, so on its own this expires nothing the controller holds.
        compacted_live = await asyncio.to_thread(plane.compact_etcd)
        await asyncio.sleep(1.0)
        relists_live = len(_log_records(controller.process.log, RELIST))

        # (2) Cut the controller off, SIGKILL the apiserver, compact again while it is down
        # (past every resourceVersion any client saw), start it again on the same port,
        # certificates and etcd.
        proxy.drop_rate = 1.0
        killed = time.monotonic()
        await asyncio.to_thread(plane.stop_apiserver, kill=True)
        compacted = await asyncio.to_thread(plane.compact_etcd)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(plane.start_apiserver)
        ready = time.monotonic()

        # The gap: changes the controller's watches are not there to see.
        await _retrying(lambda: bed.bootstrap_secret("r6-late-bootstrap", script))
        late_names = [f"r6-c{i}" for i in range(len(third))]
        for name, host in zip(late_names, third, strict=True):
            await _create_machine(bed, name, host, "r6-bootstrap")
        await _retrying(lambda: bed.kube.delete(MACHINES, bed.namespace, victim))
        await _retrying(lambda: bed.kube.delete(REMOTE_MACHINES, bed.namespace, victim))
        proxy.drop_rate = 0.0
        reconnected, reconnected_wall = time.monotonic(), datetime.now(UTC)
        cut = reconnected - killed

        restarted = False
        if election:
            # The leader either renews the lease once it can, or has given up while cut off.
            async def renewed_or_gone() -> bool:
                if not controller.alive():
                    return True
                renew = str((await lease_spec(plane, lease)).get("renewTime") or "")
                return (
                    bool(renew)
                    and datetime.fromisoformat(renew.replace("Z", "+00:00")) > reconnected_wall
                )

            await bed.wait_for("the leader to renew or give up", renewed_or_gone, 30)
            if not controller.alive():
                # By design: it cannot know whether it still leads, so it stops. Its last
                # renewal was at most one retry period before the cut began.
                assert cut > RENEW_DEADLINE - RETRY_PERIOD, f"gave up after a {cut:.1f}s cut"
                assert _log_records(controller.process.log, LEASE_LOST), controllers.tails()
                assert controller.process.exit_code() != 0
                controller.kill9()  # reaps it (and its PID namespace)
                controller = controllers.start(*args, pod_like=True)
                logs.append(controller.process.log)
                restarted = True
            else:
                assert cut < RENEW_DEADLINE + 2 * RETRY_PERIOD, f"still led after {cut:.1f}s"
            # The long cut always outlasts the renew deadline. The short one is a restart
            # without a pause, but a loaded machine can stretch that restart past the deadline
            # too (12.5 s seen while CI shared two cores with other runs): then giving up is
            # right, and the checks above hold it to the cut actually measured.
            if variant == "leader-elect-long" or cut > RENEW_DEADLINE + 2 * RETRY_PERIOD:
                assert restarted, f"{variant}: still led after a {cut:.1f}s cut"
            elif cut < RENEW_DEADLINE - RETRY_PERIOD:
                assert not restarted, f"{variant}: gave up after a {cut:.1f}s cut"
        else:
            assert controller.alive(), f"the controller died:\n{controllers.tails()}"

        expected = names + waiting_names + late_names
        timings: dict[str, float] = {}

        async def progress() -> bool:
            now = time.monotonic() - reconnected
            provisioned = await _provisioned(bed)
            phases = await machine_phases(bed)
            rms = {rm["metadata"]["name"] for rm in await bed.list(REMOTE_MACHINES)}
            checks = {
                "Secret-waiting machines provisioned": set(waiting_names) <= provisioned,
                "victim's RemoteMachine gone": victim not in rms,
                "victim's Machine gone": victim not in phases,
                "machines of the gap provisioned": set(late_names) <= provisioned,
                "all provisioned": set(expected) <= provisioned,
                "all Machines Running": all(phases.get(n) == "Running" for n in expected),
            }
            for what, ok in checks.items():
                if ok:
                    timings.setdefault(what, now)
            return all(checks.values())

        try:
            await bed.wait_for("convergence", progress, 240 + 3 * len(hosts))
        except AssertionError as error:
            raise AssertionError(
                f"{error}\nreached: {timings}\nphases: {await machine_phases(bed)}\n"
                f"{controllers.tails()}"
            ) from None
    finally:
        proxy.close()
        if not plane.apiserver_running:  # failed while it was down: the next tests need it
            await asyncio.to_thread(plane.start_apiserver)

    relists = [r for log in logs for r in _log_records(log, RELIST)]
    relisted = sorted({str(r.get("resource")) for r in relists})
    print(
        f"\nR6 ({variant}): {len(hosts)} hosts; at the kill {len(done)} provisioned,"
        f" {steps_before - victim_steps} steps of {len(first)} bootstraps started; compacted at"
        f" revision {compacted_live} while serving ({relists_live} relists) and {compacted}"
        f" while down; apiserver down"
        f" {ready - killed:.1f}s, controller cut off {cut:.1f}s;"
        f" {len(relists)} relists ({', '.join(relisted) or '-'});"
        f" controller {'exited (lease lost) and restarted' if restarted else 'survived'};"
        f" after reconnecting: "
        + ", ".join(f"{what} {seconds:.1f}s" for what, seconds in timings.items())
    )

    wrong = {h.name: counts(h) for h in hosts if counts(h) != (1, 1)}
    assert not wrong, f"steps did not run exactly once (start, end) per host: {wrong}"
    dirty = [h.name for h in hosts if h is not victim_host and _lines(h, COUNT_CLEANUP)]
    assert not dirty, f"cleanup ran on hosts whose machines were not deleted: {dirty}"
    if not restarted:
        assert controller.alive() and controller.pid == first_pid, "the controller restarted"
        # Every informer resumed from a version that no longer exists: the relist path ran.
        assert {"remotemachines", "machines", "secrets"} <= set(relisted), relisted
    cleaned = _lines(victim_host, COUNT_CLEANUP)
    skipped = await _event_messages(bed, victim, "CleanupFailed")
    assert cleaned == 1, f"the deleted machine's host was cleaned {cleaned} times; {skipped}"
    assert not _has(victim_host, SENTINEL), "the deleted machine's host still has its sentinel"
