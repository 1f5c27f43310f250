"""E1: where the time of a machine goes, stage by stage, for N machines created at once through
Cluster API with the real controller process.

Every machine's bootstrap data Secret exists first; then its RemoteMachine and Machine are
created, all machines back to back. The bootstrap is a kubeadm-style cloud-config that registers
a Node without providerID (as a kubelet without cloud provider does), or with ``--trivial`` the
issue's trivial bootstrap (one file, one command, the sentinel), which ends at ``provisioned``.
Per machine, on one wall clock:

==================  ==============================================================================
stage               taken from
==================  ==============================================================================
machine_created     the audit log: the Machine's create (its ``stageTimestamp``)
owner_ref           the audit log: Cluster API's first write of the RemoteMachine that carries an
                    ownerReference
tcp_connect         the host's forwarder: the controller's connection accepted
first_command       the host: a ``date`` as the first ``runcmd`` (after the cloud-config's files)
last_command        the host: a ``date`` just before the success sentinel
provisioned         the audit log: the controller's status write with ``provisioned: true``
machine_running     the audit log: Cluster API's Machine status write with phase ``Running``
                    (not with ``--trivial``)
==================  ==============================================================================

The controller's ``Provisioning`` Event (the job started) is reported on its own
(``provisioning_event``), outside the chain: the Event recorder sends Events one at a time behind
the status writes, so at 50 machines it arrives after ``provisioned`` and marks no stage.

The report gives, for each stage, p50/p99 of its time since the previous stage and since the
Machine's create, the first and last machine's times, and the controller's CPU seconds (the
whole process tree: its own, the parse sandbox's forkserver and every parse child) and peak RSS.
The audit policy logs request bodies of writes to Machines and RemoteMachines, and of Event
creates.

**The floor** (``--trivial``), measured in the same run: once every machine is provisioned,
the hosts are reset and the same N bootstraps (the same plan, parsed here) run at once through
our SSH runner alone, in this process, through the same forwarders (what the controller adds on
top of the runner is the API, the queue, the parse sandbox and the status writes). Cluster API's
hand-over is the p50 of Machine created → ownerReference of this run. ``floor.all_s`` is hand-over
+ the runner's wall time for all N, ``floor.first_s`` hand-over + its first job's end; the
report gives ours over those, next to the issue's targets and the reference provider's numbers.

``--profile FILE`` records the controller with py-spy (``--nonblocking``, raw collapsed stacks,
idle frames left out) from the first create until everything is provisioned.

Run as root: ``python -m tests.benchmarks.bench_timeline [--machines 50] [--trivial]``; prints
JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from capi_remote.api import GROUP
from capi_remote.bootstrap import InstanceMetadata, parse_bootstrap
from capi_remote.resources import CAPI_GROUP, SECRETS
from capi_remote.ssh import Credentials, HostKeyPolicy, Job, Runner, Target
from capi_remote_testbed import samples
from capi_remote_testbed.hosts import known_hosts_line
from tests.benchmarks.bench_provision import (
    CONTROLLER_USER,
    LOOPBACK,
    WRITE_VERBS,
    Env,
    Group,
    bootstrap_secret,
    create_machines,
    environment,
    percentile,
    prepare_group,
    read_audit,
    started_event_of,
    trivial_script,
    wait_provisioned,
    wait_running,
)
from tests.benchmarks.quiet import warnings_to_stderr

JSONDict = dict[str, Any]
STAGES = (
    "machine_created",
    "owner_ref",
    "tcp_connect",
    "first_command",
    "last_command",
    "provisioned",
    "machine_running",
)
TRIVIAL_STAGES = STAGES[:-1]
FIRST_STAMP, LAST_STAMP = "/run/e1-first-command", "/run/e1-last-command"

# The numbers for the reference provider on this machine (trivial bootstrap) and the
# targets; printed next to ours.
REFERENCE = {
    "50": {"all_provisioned_s": 15.7, "cpu_ms_per_machine": 44, "peak_rss_mb": "81-85"},
    "150": {
        "all_provisioned_s": [40.9, 48.7, 49.7],
        "first_provisioned_s": 18.9,
        "cpu_ms_per_machine": "41-45",
        "peak_rss_mb": "81-85",
    },
    "first_step_to_provisioned_p50_s": "0.35-0.7",
}
TARGETS = {
    "over_floor": 1.5,
    "first_last_command_to_provisioned_s": 1.0,
    "cpu_ms_per_machine_below": 42,
}

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {
            "level": "Request",
            "verbs": sorted(WRITE_VERBS),
            "resources": [
                {"group": GROUP, "resources": ["remotemachines", "remotemachines/status"]},
                {"group": CAPI_GROUP, "resources": ["machines", "machines/status"]},
            ],
        },
        {
            "level": "Request",
            "verbs": ["create"],
            "resources": [{"group": "", "resources": ["events"]}],
        },
        {"level": "None"},
    ],
}


def stamped(script: str) -> str:
    """The registration cloud-config with a wall-clock stamp first and last in ``runcmd``."""
    head, sentinel = "runcmd:\n", "- mkdir -p /run/cluster-api\n"
    assert head in script and sentinel in script
    script = script.replace(head, f"{head}- date +%s.%N > {FIRST_STAMP}\n", 1)
    return script.replace(sentinel, f"- date +%s.%N > {LAST_STAMP}\n{sentinel}", 1)


def trivial_stamped() -> str:
    """The trivial bootstrap (one file, one command, the sentinel), its one command the stamp
    of both the first and the last command."""
    head = "#cloud-config\n"
    script = trivial_script()
    assert script.startswith(head)
    files = "write_files:\n- path: /run/e1-file\n  content: e1\n"
    command = f"- date +%s.%N | tee {FIRST_STAMP} > {LAST_STAMP}\n"
    return head + files + script[len(head) :].replace("runcmd:\n", f"runcmd:\n{command}", 1)


def _when(event: JSONDict) -> float:
    return datetime.fromisoformat(event["stageTimestamp"]).timestamp()


def _user(event: JSONDict) -> str:
    return str((event.get("user") or {}).get("username", ""))


def audit_stages(events: Sequence[JSONDict]) -> dict[str, dict[str, float]]:
    """``{machine: {stage: wall time}}`` for the stages the audit log shows."""
    stages: dict[str, dict[str, float]] = {}
    for event in sorted(events, key=_when):
        ref = event.get("objectRef") or {}
        code = int((event.get("responseStatus") or {}).get("code", 0))
        if not 200 <= code < 300 or event.get("verb") not in WRITE_VERBS:
            continue
        body = event.get("requestObject") or {}
        resource, sub = ref.get("resource"), ref.get("subresource", "")
        name = ref.get("name") or (body.get("metadata") or {}).get("name", "")
        controller = _user(event) == CONTROLLER_USER
        started = started_event_of(event) if controller else None
        if started is not None:
            stages.setdefault(started, {}).setdefault("provisioning_event", _when(event))
            continue
        mine = stages.setdefault(name, {})
        status = body.get("status") or {}
        found = None
        if resource == "machines" and event.get("verb") == "create":
            found = "machine_created"
        elif resource == "remotemachines" and not sub and not controller:
            if (body.get("metadata") or {}).get("ownerReferences"):
                found = "owner_ref"
        elif resource == "remotemachines" and sub == "status" and controller:
            if (status.get("initialization") or {}).get("provisioned"):
                found = "provisioned"
        elif resource == "machines" and sub == "status" and status.get("phase") == "Running":
            found = "machine_running"
        if found is not None:
            mine.setdefault(found, _when(event))
    return stages


def host_stages(env: Env, group: Group) -> dict[str, dict[str, float]]:
    """The stamps the bootstrap wrote on each host, and when the forwarder accepted the
    controller's connection (perf_counter moved onto the wall clock)."""
    offset = time.time() - time.perf_counter()
    stages: dict[str, dict[str, float]] = {}
    for position, index in enumerate(group.hosts):
        host = env.fleet.hosts[index]
        mine = stages[group.name(position)] = {}
        for stage, path in (("first_command", FIRST_STAMP), ("last_command", LAST_STAMP)):
            mine[stage] = float(host.path(path).read_text().strip())
        connections = env.proxies.connections[index]
        if connections:
            mine["tcp_connect"] = connections[0].accepted + offset
    return stages


def _summary(values: Sequence[float]) -> JSONDict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": round(statistics.median(values), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
    }


def summarize(stages: dict[str, dict[str, float]], chain: Sequence[str] = STAGES) -> JSONDict:
    """Per stage of ``chain``: time since the previous stage and since the Machine's create;
    the first and last machine provisioned (and Running), since the first create."""
    report: JSONDict = {}
    complete = {m: s for m, s in stages.items() if all(k in s for k in chain)}
    for previous, stage in itertools.pairwise(chain):
        report[stage] = {
            "since_previous": _summary([s[stage] - s[previous] for s in complete.values()]),
            "since_created": _summary([s[stage] - s["machine_created"] for s in complete.values()]),
        }
    event = [
        s["provisioning_event"] - s["machine_created"]
        for s in complete.values()
        if "provisioning_event" in s
    ]
    report["provisioning_event"] = {"since_created": _summary(event)}
    if complete:
        start = min(s["machine_created"] for s in complete.values())
        for stage in ("provisioned", "machine_running"):
            if stage not in chain:
                continue
            ends = sorted(s[stage] - start for s in complete.values())
            report[stage]["first_machine_s"] = round(ends[0], 3)
            report[stage]["last_machine_s"] = round(ends[-1], 3)
        first = min(complete.values(), key=lambda s: s["provisioned"])
        report["first_machine_last_command_to_provisioned_s"] = round(
            first["provisioned"] - first["last_command"], 3
        )
        created = sorted(s["machine_created"] - start for s in complete.values())
        report["machine_creates_spread_s"] = round(created[-1], 3)
    report["machines_complete"] = len(complete)
    report["machines_incomplete"] = sorted(set(stages) - set(complete))[:10]
    return report


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            with contextlib.suppress(OSError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                todo += children
    return found


def process_stats(pid: int) -> JSONDict:
    """CPU seconds of the process (its own and its reaped children's) and of its live
    descendants (the parse sandbox's forkserver and what it reaped), RSS and peak RSS."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = _stat(pid)
    below = 0
    for child in _descendants(pid):
        with contextlib.suppress(OSError):
            below += sum(int(v) for v in _stat(child)[11:15])
    status = Path(f"/proc/{pid}/status").read_text()
    kib = {
        line.split(":")[0]: int(line.split()[1])
        for line in status.splitlines()
        if line.startswith(("VmHWM:", "VmRSS:"))
    }
    return {
        "cpu_s": (int(fields[11]) + int(fields[12])) / tick,
        "children_cpu_s": (int(fields[13]) + int(fields[14]) + below) / tick,
        "rss_mb": round(kib["VmRSS"] / 1024, 1),
        "peak_rss_mb": round(kib["VmHWM"] / 1024, 1),
    }


def start_profile(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` until :func:`stop_profile` (it must be installed)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "--pid", str(pid), "--output", str(output), "--format", "raw"]
    command += ["--rate", "200", "--nonblocking", "--threads"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


async def runner_floor(env: Env, group: Group, script: str) -> JSONDict:
    """The same bootstraps through our runner alone, all at once, on the reset hosts: its wall
    time and first end (seconds from submission) and this process's CPU for them."""
    for index in group.hosts:
        host = env.fleet.hosts[index]
        await asyncio.to_thread(
            host.exec_inside, ["rm", "-rf", "/var/lib/capi-remote", "/run/cluster-api"]
        )
    key = env.fleet.client_key.private_openssh
    metadata = InstanceMetadata(instance_id="e1", local_hostname="e1", hostname="e1")
    plan = parse_bootstrap(script.encode(), "cloud-config", metadata=metadata)
    jobs = []
    for position, index in enumerate(group.hosts):
        port = env.proxies.ports[index]
        line = known_hosts_line(LOOPBACK, port, env.fleet.hosts[index].host_public_key)
        target = Target(
            address=LOOPBACK,
            port=port,
            credentials=Credentials(private_key=key),
            host_key=HostKeyPolicy.from_known_hosts(line + "\n"),
            tenant=group.namespace,
        )
        uid = f"floor-{position:04d}"
        jobs.append(Job(target=target, plan=plan, machine_uid=uid, gather_facts=True))
    ended: list[float] = []
    runner = Runner(identity="e1-floor")
    cpu, start = time.process_time(), time.perf_counter()

    async def one(job: Job) -> None:
        await runner.submit(job)
        ended.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(one(job) for job in jobs))
    finally:
        await runner.aclose()
    return {
        "runner_all_s": round(max(ended), 3),
        "runner_first_s": round(min(ended), 3),
        "runner_cpu_ms_per_machine": round(1000 * (time.process_time() - cpu) / len(jobs), 1),
    }


def against_floor(stages: JSONDict, runner: JSONDict) -> JSONDict:
    """The floor (Cluster API's hand-over + the runner alone) and our times over it."""
    handover = stages["owner_ref"]["since_created"]["p50_s"]
    floor = {
        "capi_handover_p50_s": handover,
        **runner,
        "all_s": round(handover + runner["runner_all_s"], 3),
        "first_s": round(handover + runner["runner_first_s"], 3),
    }
    provisioned = stages["provisioned"]
    return {
        "floor": floor,
        "all_over_floor": round(provisioned["last_machine_s"] / floor["all_s"], 2),
        "first_over_floor": round(provisioned["first_machine_s"] / floor["first_s"], 2),
    }


async def run(machines: int, *, trivial: bool = False, profile: Path | None = None) -> JSONDict:
    started = time.monotonic()
    group = Group("e1", list(range(machines)))
    floor: JSONDict = {}
    async with environment(machines, AUDIT_POLICY) as env:
        await prepare_group(env, group)
        if trivial:
            script = trivial_stamped()
        else:
            script = stamped(
                samples.node_registration_script(
                    env.api_proxy.port,
                    env.fleet.gateway,
                    env.plane.workdir / "pki",
                    with_provider_id=False,
                )
            )
        for name in group.names:
            await env.client.create(SECRETS, bootstrap_secret(group, name, script))
        pid = env.controller.pid
        assert pid is not None
        spy = start_profile(pid, profile) if profile is not None else None
        before = process_stats(pid)
        load = os.getloadavg()[0]
        await create_machines(env, group)
        if trivial:
            await wait_provisioned(env, group, within=120 + 3 * machines)
        else:
            await wait_running(env, group, within=120 + 3 * machines)
        if spy is not None:
            await asyncio.to_thread(stop_profile, spy)
        await asyncio.sleep(2.0)  # the last audit lines reach the file
        after = process_stats(pid)
        stages = audit_stages(await asyncio.to_thread(read_audit, env.plane.audit_log))
        for name, found in host_stages(env, group).items():
            stages.setdefault(name, {}).update(found)
        if trivial:
            floor_load = os.getloadavg()[0]
            floor = {**await runner_floor(env, group, script), "load_1m": round(floor_load, 2)}
    stages = {name: found for name, found in stages.items() if name in group.names}
    summary = summarize(stages, TRIVIAL_STAGES if trivial else STAGES)
    own = after["cpu_s"] - before["cpu_s"]
    cpu = own + after["children_cpu_s"] - before["children_cpu_s"]
    report: JSONDict = {
        "benchmark": "E1_timeline",
        "machines": machines,
        "bootstrap": "trivial" if trivial else "node registration",
        "load_1m_at_start": round(load, 2),
        "seconds": round(time.monotonic() - started, 1),
        "stages": summary,
        "controller_cpu_s": round(cpu, 2),
        "controller_cpu_ms_per_machine": round(1000 * cpu / machines, 1),
        "of_which_sandbox_ms_per_machine": round(1000 * (cpu - own) / machines, 1),
        "controller_peak_rss_mb": after["peak_rss_mb"],
    }
    if floor:
        report |= against_floor(summary, floor)
        report["targets"] = TARGETS
        report["reference"] = REFERENCE
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_timeline")
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument(
        "--trivial", action="store_true", help="the trivial bootstrap, and the floor"
    )
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the controller")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (namespaced hosts)")
    warnings_to_stderr()
    result = asyncio.run(run(args.machines, trivial=args.trivial, profile=args.profile))
    print(json.dumps(result, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
