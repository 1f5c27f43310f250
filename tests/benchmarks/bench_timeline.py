"""E1: where the time of a machine goes, stage by stage, for N machines created at once through
Cluster API with the real controller process.

Every machine's bootstrap data Secret exists first (a kubeadm-style cloud-config that registers a
Node without providerID, as a kubelet without cloud provider does); then its RemoteMachine and
Machine are created, all machines back to back. Per machine, on one wall clock:

==================  ==============================================================================
stage               taken from
==================  ==============================================================================
machine_created     the audit log: the Machine's create (its ``stageTimestamp``)
owner_ref           the audit log: Cluster API's first write of the RemoteMachine that carries an
                    ownerReference
job_started         the audit log: the create of the controller's ``Provisioning`` Event
tcp_connect         the host's forwarder: the controller's connection accepted
first_command       the host: a ``date`` as the first ``runcmd`` (after the cloud-config's files)
last_command        the host: a ``date`` just before the success sentinel
provisioned         the audit log: the controller's status write with ``provisioned: true``
machine_running     the audit log: Cluster API's Machine status write with phase ``Running``
==================  ==============================================================================

The report gives, for each stage, p50/p99 of its time since the previous stage and since the
Machine's create, the first and last machine's times, and the controller's CPU seconds (its own
and its reaped children's) and peak RSS. The audit policy logs request bodies of writes to
Machines and RemoteMachines, and of Event creates.

Run as root: ``python -m tests.benchmarks.bench_timeline [--machines 50]``; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from capi_remote.api import GROUP
from capi_remote.resources import CAPI_GROUP, SECRETS
from capi_remote_testbed import samples
from tests.benchmarks.bench_provision import (
    CONTROLLER_USER,
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
    wait_running,
)
from tests.benchmarks.quiet import warnings_to_stderr

JSONDict = dict[str, Any]
STAGES = (
    "machine_created",
    "owner_ref",
    "job_started",
    "tcp_connect",
    "first_command",
    "last_command",
    "provisioned",
    "machine_running",
)
FIRST_STAMP, LAST_STAMP = "/run/e1-first-command", "/run/e1-last-command"

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
            stages.setdefault(started, {}).setdefault("job_started", _when(event))
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


def summarize(stages: dict[str, dict[str, float]]) -> JSONDict:
    """Per stage: time since the previous stage and since the Machine's create."""
    report: JSONDict = {}
    complete = {m: s for m, s in stages.items() if all(k in s for k in STAGES)}
    for previous, stage in itertools.pairwise(STAGES):
        report[stage] = {
            "since_previous": _summary([s[stage] - s[previous] for s in complete.values()]),
            "since_created": _summary([s[stage] - s["machine_created"] for s in complete.values()]),
        }
    if complete:
        start = min(s["machine_created"] for s in complete.values())
        for stage in ("provisioned", "machine_running"):
            ends = sorted(s[stage] - start for s in complete.values())
            report[stage]["first_machine_s"] = round(ends[0], 3)
            report[stage]["last_machine_s"] = round(ends[-1], 3)
    report["machines_complete"] = len(complete)
    report["machines_incomplete"] = sorted(set(stages) - set(complete))[:10]
    return report


def _process(pid: int) -> JSONDict:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return {
        "cpu_s": (int(fields[11]) + int(fields[12])) / tick,
        "children_cpu_s": (int(fields[13]) + int(fields[14])) / tick,
        "peak_rss_mb": round(hwm / 1024, 1),
    }


async def run(machines: int) -> JSONDict:
    started = time.monotonic()
    group = Group("e1", list(range(machines)))
    async with environment(machines, AUDIT_POLICY) as env:
        await prepare_group(env, group)
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
        before = _process(pid)
        load = os.getloadavg()[0]
        await create_machines(env, group)
        await wait_running(env, group, within=120 + 3 * machines)
        await asyncio.sleep(2.0)  # the last audit lines reach the file
        after = _process(pid)
        stages = audit_stages(await asyncio.to_thread(read_audit, env.plane.audit_log))
        for name, found in host_stages(env, group).items():
            stages.setdefault(name, {}).update(found)
    stages = {name: found for name, found in stages.items() if name in group.names}
    cpu = after["cpu_s"] + after["children_cpu_s"] - before["cpu_s"] - before["children_cpu_s"]
    return {
        "benchmark": "E1_timeline",
        "machines": machines,
        "load_1m_at_start": round(load, 2),
        "seconds": round(time.monotonic() - started, 1),
        "stages": summarize(stages),
        "controller_cpu_s": round(cpu, 2),
        "controller_cpu_ms_per_machine": round(1000 * cpu / machines, 1),
        "controller_peak_rss_mb": after["peak_rss_mb"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_timeline")
    parser.add_argument("--machines", type=int, default=50)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (namespaced hosts)")
    warnings_to_stderr()
    print(json.dumps(asyncio.run(run(args.machines)), indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
