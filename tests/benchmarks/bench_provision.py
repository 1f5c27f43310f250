"""End-to-end numbers through Cluster API with the real controller process (P2 and P5).

One run starts its own control plane (with Cluster API and an audit log), a ``capi-remote run``
process with an identity of its own, and a fleet of namespaced hosts, each behind a timestamping
TCP forwarder on loopback (the RemoteMachines' address is the forwarder's). Three groups of
machines, each a namespace with its own Cluster:

- ``p2-seq``: RemoteMachines + Machines whose bootstrap data Secret does not exist yet, so they
  wait with ``WaitingForBootstrapData``; then the Secrets are created one at a time (the next
  after the previous machine's first byte plus a pause);
- ``p2-burst``: the same, with every Secret created at once;
- ``p5-nodes``: Secret first, then RemoteMachine + Machine; the bootstrap registers a Node without
  a providerID (a kubelet without cloud provider), so the controller links it and Cluster API
  takes the Machine to Running.

**P2**: for each machine, the time from just before the Secret's create call (client clock; the
API's creationTimestamp has second resolution) to the first byte the forwarder receives from the
controller's SSH client (the client banner, sent right after the TCP connect), p50/p99/max. The
forwarder runs in this process, so both times come from the same monotonic clock.

**P5**: the kube-apiserver's audit log, restricted to the controller's users: ``create``,
``update``, ``patch`` and ``delete`` requests (subresources such as ``status`` included) per
provisioned machine, by resource and verb, Events separately; and all writes during a steady
state window once everything is provisioned/Running. The controller authenticates as
:data:`CONTROLLER_USER` (its own client certificate); the workload cluster's kubeconfig Secret
carries :data:`WORKLOAD_USER`, which Cluster API uses too, so there only requests with the
controller's user agent count.

Run as root: ``python -m tests.benchmarks.bench_provision [--quick]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import yaml

from capi_remote.kube.client import KubeClient
from capi_remote.resources import (
    CLUSTERS,
    CONFIGMAPS,
    MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote_testbed import samples, toolchain
from capi_remote_testbed.controlplane import ControlPlane, Settings
from capi_remote_testbed.hosts import HostFleet, known_hosts_line
from capi_remote_testbed.net import free_port
from capi_remote_testbed.pki import KeyPair
from capi_remote_testbed.processes import ManagedProcess, log_tail
from capi_remote_testbed.provider import install_crds, issue_webhook_certificate
from capi_remote_testbed.tcpproxy import TcpProxy
from tests.benchmarks.quiet import warnings_to_stderr

JSONDict = dict[str, Any]
CONTROLLER_USER = "capi-remote-bench-controller"
WORKLOAD_USER = "capi-remote-bench-workload"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
NODE_LABEL = "bench.capi-remote.dev/group"
LOOPBACK = "127.0.0.1"
_RESOURCES = {r.kind: r for r in (CLUSTERS, CONFIGMAPS, REMOTE_CLUSTERS, SECRETS)}

# Only the controller's users are logged: request bodies of its writes (to tell status patches
# apart by the reason they set), metadata for everything else and for Secrets/ConfigMaps.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {
            "level": "Metadata",
            "users": [CONTROLLER_USER, WORKLOAD_USER],
            "resources": [{"group": "", "resources": ["secrets", "configmaps"]}],
        },
        {
            "level": "Request",
            "users": [CONTROLLER_USER, WORKLOAD_USER],
            "verbs": sorted(WRITE_VERBS),
        },
        {"level": "Metadata", "users": [CONTROLLER_USER, WORKLOAD_USER]},
        {"level": "None"},
    ],
}


@attrs.frozen
class Sizes:
    """Machines per group (one host each) and the steady-state window."""

    sequential: int = 20
    #: Not more: each machine waiting for a Secret that does not exist yet holds a watch (and a
    #: pooled connection) in the controller, and about 90 of them stall it (docs/benchmarks.md).
    burst: int = 50
    nodes: int = 10
    steady_seconds: float = 60.0
    #: Pause after a machine's first byte before the next Secret (sequential mode).
    gap_seconds: float = 0.3

    @classmethod
    def quick(cls) -> Sizes:
        # The steady window still covers one Node-link requeue (every 20 s).
        return cls(sequential=5, burst=10, nodes=3, steady_seconds=25.0)

    @property
    def hosts(self) -> int:
        return self.sequential + self.burst + self.nodes


# -- the timestamping forwarders ------------------------------------------------------------------


@attrs.define
class Connection:
    """One forwarded connection: when it was accepted and when the client's first byte came."""

    accepted: float
    first_byte: float | None = None


class FirstByteProxies:
    """One TCP forwarder per target on 127.0.0.1, all on one event loop in a daemon thread.

    Each records, per connection, when it was accepted and when its first byte from the client
    arrived (``time.perf_counter``, the clock the caller uses too).
    """

    def __init__(self, targets: Sequence[tuple[str, int]]) -> None:
        self.targets = list(targets)
        self.ports: list[int] = []
        self.connections: list[list[Connection]] = [[] for _ in self.targets]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> list[int]:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=30)
        return self.ports

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def first_byte_after(self, index: int, since: float) -> Connection | None:
        """The first connection to target ``index`` accepted at or after ``since`` that sent."""
        for connection in list(self.connections[index]):
            if connection.accepted >= since and connection.first_byte is not None:
                return connection
        return None

    def count_before(self, index: int, since: float) -> int:
        return sum(1 for c in list(self.connections[index]) if c.accepted < since)

    async def _listen(self) -> None:
        for index in range(len(self.targets)):
            server = await asyncio.start_server(partial(self._handle, index), LOOPBACK, 0)
            self._servers.append(server)
            self.ports.append(int(server.sockets[0].getsockname()[1]))

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = Connection(accepted=time.perf_counter())
        self.connections[index].append(connection)

        async def first_chunk() -> bytes:
            data = await reader.read(65536)
            connection.first_byte = time.perf_counter()
            return data

        first = asyncio.ensure_future(first_chunk())
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.targets[index])
            data = await first
            if data:
                up_writer.write(data)
                pipes = [
                    asyncio.ensure_future(_pipe(reader, up_writer)),
                    asyncio.ensure_future(_pipe(up_reader, writer)),
                ]
                try:
                    await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pipe in pipes:
                        pipe.cancel()
                    await asyncio.gather(*pipes, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            first.cancel()
            for w in (writer, up_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


# -- the environment ------------------------------------------------------------------------------


def kubeconfig_for(plane: ControlPlane, user: str, pair: KeyPair) -> JSONDict:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "bench",
                "cluster": {
                    "server": plane.server,
                    "certificate-authority-data": b64(plane.ca.cert_pem),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pair.cert_pem),
                    "client-key-data": b64(pair.key_pem),
                },
            }
        ],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": user}}],
        "current-context": "bench",
    }


def identity_kubeconfig(plane: ControlPlane, user: str) -> JSONDict:
    """A kubeconfig authenticating as ``user`` (a client certificate in ``system:masters``)."""
    pair = plane.ca.issue(user, organizations=("system:masters",), client=True)
    return kubeconfig_for(plane, user, pair)


@attrs.define
class Env:
    """Everything one run uses; ``client`` is the admin's (not counted in the audit log)."""

    plane: ControlPlane
    fleet: HostFleet
    proxies: FirstByteProxies
    api_proxy: TcpProxy
    client: KubeClient
    controller: ManagedProcess
    workload_kubeconfig: bytes
    workdir: Path


def _start_controller(plane: ControlPlane, workdir: Path) -> ManagedProcess:
    """``capi-remote run`` as in capi_remote_testbed.provider.start_controller, with its own
    kubeconfig."""
    kubeconfig = workdir / "controller.kubeconfig"
    kubeconfig.touch(mode=0o600)
    kubeconfig.write_text(yaml.safe_dump(identity_kubeconfig(plane, CONTROLLER_USER)))
    webhook_port, health_port = free_port(), free_port()
    cert_dir = issue_webhook_certificate(plane, workdir / "certs")
    install_crds(plane, webhook_port)
    process = ManagedProcess(
        "capi-remote",
        [
            sys.executable, "-m", "capi_remote.cli", "run",
            f"--kubeconfig={kubeconfig}",
            f"--webhook-port={webhook_port}",
            f"--webhook-cert-dir={cert_dir}",
            f"--health-addr={LOOPBACK}:{health_port}",
            f"--metrics-bind-address={LOOPBACK}:{free_port()}",
            "--log-format=json",
            "--log-level=info",
        ],
        workdir / "controller.log",
    )  # fmt: skip
    process.start()
    deadline = time.monotonic() + 60
    while True:
        if process.exit_code() is not None:
            raise RuntimeError(f"the controller exited: {process.describe_failure()}")
        with contextlib.suppress(OSError):
            url = f"http://{LOOPBACK}:{health_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process
        if time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"controller not ready: {process.describe_failure()}")
        time.sleep(0.2)


@contextlib.asynccontextmanager
async def environment(hosts: int, audit_policy: JSONDict = AUDIT_POLICY) -> AsyncIterator[Env]:
    """Control plane (CAPI, audit log), controller, ``hosts`` hosts behind forwarders."""
    workdir = Path(tempfile.mkdtemp(prefix="capi-remote-bench-"))
    policy = workdir / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(audit_policy))
    keep = bool(os.environ.get("CAPI_REMOTE_KEEP_ENV"))
    tools = toolchain.ensure(log=lambda _: None)
    plane = ControlPlane(tools, Settings(audit_policy=policy))
    with contextlib.ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        plane.start()
        stack.callback(plane.stop, keep_workdir=keep)
        fleet = HostFleet(hosts).start()
        stack.callback(fleet.close)
        proxies = FirstByteProxies([(h.address, h.port) for h in fleet.hosts])
        proxies.start()
        stack.callback(proxies.close)
        api_proxy = TcpProxy((LOOPBACK, plane.apiserver_port), listen_host=fleet.gateway)
        api_proxy.start()
        stack.callback(api_proxy.close)
        controller = _start_controller(plane, workdir)
        stack.callback(controller.stop)
        workload = yaml.safe_dump(identity_kubeconfig(plane, WORKLOAD_USER)).encode()
        client = await KubeClient.from_kubeconfig(str(plane.kubeconfig))
        try:
            yield Env(plane, fleet, proxies, api_proxy, client, controller, workload, workdir)
        finally:
            await client.close()
            if keep:
                print(f"bench_provision: kept {workdir} and {plane.workdir}", file=sys.stderr)


# -- groups of machines ---------------------------------------------------------------------------


@attrs.define
class Group:
    """One namespace with a Cluster and one machine per host index."""

    namespace: str
    hosts: list[int]

    def name(self, position: int) -> str:
        return f"{self.namespace}-{position:03d}"

    @property
    def names(self) -> list[str]:
        return [self.name(i) for i in range(len(self.hosts))]


async def _create(env: Env, obj: JSONDict) -> JSONDict:
    return await env.client.create(_RESOURCES[obj["kind"]], obj)


async def prepare_group(env: Env, group: Group) -> None:
    """Namespace, SSH credentials (known_hosts for the forwarders), a Cluster whose workload
    kubeconfig authenticates as :data:`WORKLOAD_USER`; waits for its infrastructure."""
    ns = group.namespace
    await asyncio.to_thread(env.plane.kubectl, "create", "namespace", ns)
    known = "".join(
        known_hosts_line(LOOPBACK, env.proxies.ports[i], env.fleet.hosts[i].host_public_key) + "\n"
        for i in group.hosts
    )
    objects = samples.credentials(ns, env.fleet.client_key.private_openssh, known)
    objects += samples.cluster(ns, ns, env.workload_kubeconfig)
    for obj in objects:
        await _create(env, obj)

    async def ready() -> bool:
        cluster = await env.client.get(CLUSTERS, ns, ns)
        init = (cluster.get("status") or {}).get("initialization") or {}
        return bool(init.get("infrastructureProvisioned"))

    await wait_for(f"Cluster {ns} infrastructure", ready, 120)


async def create_machines(env: Env, group: Group) -> None:
    """RemoteMachine first, then its Machine (the order a MachineSet creates them in); the
    bootstrap data Secret is ``<machine>-bootstrap``."""
    for position, index in enumerate(group.hosts):
        name = group.name(position)
        spec = samples.host_spec(LOOPBACK, env.proxies.ports[index])
        await env.client.create(
            REMOTE_MACHINES, samples.remote_machine(name, group.namespace, spec)
        )
        await env.client.create(
            MACHINES, samples.machine(name, group.namespace, group.namespace, f"{name}-bootstrap")
        )


def trivial_script() -> str:
    return (
        "#cloud-config\nruncmd:\n"
        "- mkdir -p /run/cluster-api\n"
        "- touch /run/cluster-api/bootstrap-success.complete\n"
    )


def bootstrap_secret(group: Group, name: str, script: str) -> JSONDict:
    return samples.bootstrap_secret(f"{name}-bootstrap", group.namespace, script)


async def wait_for(
    what: str,
    check: Callable[[], Awaitable[bool]],
    within: float,
    interval: float = 0.5,
    state: Callable[[], object] = lambda: "",
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}: {state()}")
        await asyncio.sleep(interval)


def _ready_reason(rm: JSONDict) -> str:
    for condition in (rm.get("status") or {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return str(condition.get("reason") or "")
    return ""


async def wait_reason(env: Env, group: Group, reason: str, within: float = 120.0) -> None:
    reasons: Counter[str] = Counter()

    async def check() -> bool:
        items = (await env.client.list(REMOTE_MACHINES, group.namespace))["items"]
        reasons.clear()
        reasons.update(_ready_reason(rm) for rm in items)
        return reasons.get(reason, 0) == len(group.hosts)

    what = f"{group.namespace}: every RemoteMachine {reason}"
    await wait_for(what, check, within, state=lambda: dict(reasons))


async def wait_provisioned(env: Env, group: Group, within: float = 300.0) -> None:
    async def check() -> bool:
        items = (await env.client.list(REMOTE_MACHINES, group.namespace))["items"]
        done = sum(
            1
            for rm in items
            if ((rm.get("status") or {}).get("initialization") or {}).get("provisioned")
        )
        return done == len(group.hosts)

    await wait_for(f"{group.namespace}: every RemoteMachine provisioned", check, within, 1.0)


async def wait_running(env: Env, group: Group, within: float = 300.0) -> None:
    async def check() -> bool:
        items = (await env.client.list(MACHINES, group.namespace))["items"]
        running = sum(1 for m in items if (m.get("status") or {}).get("phase") == "Running")
        return running == len(group.hosts)

    await wait_for(f"{group.namespace}: every Machine Running", check, within, 1.0)


# -- P2 -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 values is the maximum)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * share)) - 1]


@attrs.define
class Sample:
    """One machine of P2: when its Secret's create call started (wall clock, for the audit log)
    and the delays to the TCP connect and to the first byte (None: no connection seen)."""

    name: str
    created_wall: float
    connect: float | None = None
    first_byte: float | None = None


def _summary(values: Sequence[float], prefix: str = "") -> JSONDict:
    if not values:
        return {}
    return {
        f"{prefix}p50_s": round(statistics.median(values), 4),
        f"{prefix}p99_s": round(percentile(values, 0.99), 4),
        f"{prefix}max_s": round(max(values), 4),
    }


def latency_summary(samples: Sequence[Sample]) -> JSONDict:
    seen = [s for s in samples if s.first_byte is not None and s.connect is not None]
    latencies = [s.first_byte for s in seen if s.first_byte is not None]
    return {
        "machines": len(seen),
        "missing": len(samples) - len(seen),
        **_summary(latencies),
        "min_s": round(min(latencies), 4) if latencies else None,
        **_summary([s.connect for s in seen if s.connect is not None], "connect_"),
        "first_byte_ms_sorted": sorted(round(1000 * v, 1) for v in latencies),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _first_byte(env: Env, index: int, since: float, within: float) -> Connection | None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        connection = env.proxies.first_byte_after(index, since)
        if connection is not None:
            return connection
        await asyncio.sleep(0.005)
    return None


def _record(sample: Sample, connection: Connection | None, started: float) -> None:
    if connection is not None and connection.first_byte is not None:
        sample.connect = connection.accepted - started
        sample.first_byte = connection.first_byte - started


async def measure_sequential(env: Env, group: Group, gap: float) -> tuple[JSONDict, list[Sample]]:
    """Create the Secrets one at a time; each waits for the previous machine's first byte."""
    samples_, early = [], 0
    script = trivial_script()
    for position, index in enumerate(group.hosts):
        name = group.name(position)
        secret = bootstrap_secret(group, name, script)
        early += env.proxies.count_before(index, time.perf_counter())
        sample = Sample(name, time.time())
        started = time.perf_counter()
        await env.client.create(SECRETS, secret)
        _record(sample, await _first_byte(env, index, started, 30.0), started)
        samples_.append(sample)
        await asyncio.sleep(gap)
    result = {
        "mode": "one at a time",
        "gap_s": gap,
        **latency_summary(samples_),
        "connections_before_the_secret": early,
    }
    return result, samples_


async def measure_burst(env: Env, group: Group) -> tuple[JSONDict, list[Sample]]:
    """Create every Secret at once (concurrent create calls, each timed from its own start)."""
    script = trivial_script()
    early = sum(env.proxies.count_before(i, time.perf_counter()) for i in group.hosts)
    samples_ = [Sample(group.name(p), 0.0) for p in range(len(group.hosts))]
    pid = env.controller.pid or 0
    cpu_before = cpu_seconds(pid)

    answered: list[float] = []

    async def create(position: int) -> float:
        secret = bootstrap_secret(group, group.name(position), script)
        samples_[position].created_wall = time.time()
        started = time.perf_counter()
        await env.client.create(SECRETS, secret)
        answered.append(time.perf_counter() - started)
        return started

    starts = await asyncio.gather(*(create(p) for p in range(len(group.hosts))))
    found: dict[int, Connection] = {}
    deadline = time.perf_counter() + 60
    while len(found) < len(group.hosts) and time.perf_counter() < deadline:
        for position, index in enumerate(group.hosts):
            if position not in found:
                connection = env.proxies.first_byte_after(index, starts[position])
                if connection is not None:
                    found[position] = connection
        await asyncio.sleep(0.01)
    wall = time.perf_counter() - min(starts)
    cpu = cpu_seconds(pid) - cpu_before
    for position, connection in found.items():
        _record(samples_[position], connection, starts[position])
    result = {
        "mode": "burst",
        "create_calls_spread_s": round(max(starts) - min(starts), 4),
        **_summary(answered, "create_call_"),
        **latency_summary(samples_),
        "connections_before_the_secret": early,
        "controller_cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
    }
    return result, samples_


def reconcile_delays(samples_: Sequence[Sample], audit: Sequence[JSONDict]) -> JSONDict:
    """Secret create -> the controller's ``Provisioning`` Event as the API server received it
    (recorded just after the job started; the start writes no status)."""
    first: dict[str, float] = {}
    for event in audit:
        name = started_event_of(event)
        if name is not None:
            first[name] = min(first.get(name, float("inf")), _timestamp(event))
    delays = [first[s.name] - s.created_wall for s in samples_ if s.name in first]
    return _summary(delays, "secret_to_provisioning_event_")


def started_event_of(event: JSONDict) -> str | None:
    """The machine whose job start an audit event records (the create of its ``Provisioning``
    Event), else None."""
    ref = event.get("objectRef") or {}
    body = event.get("requestObject") or {}
    if ref.get("resource") != "events" or event.get("verb") != "create":
        return None
    if body.get("reason") != "Provisioning":
        return None
    return str((body.get("involvedObject") or {}).get("name") or "") or None


# -- P5: the audit log ----------------------------------------------------------------------------


def _timestamp(event: JSONDict) -> float:
    return datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()


def read_audit(path: Path) -> list[JSONDict]:
    events = []
    with path.open() as log:
        for line in log:
            line = line.strip()
            if line:
                events.append(json.loads(line))
    return events


def controller_events(events: Iterable[JSONDict]) -> list[JSONDict]:
    """Requests made by the controller: its own user, and the workload user with the user agent
    the controller's own requests carry (Cluster API shares that workload kubeconfig)."""
    events = list(events)
    agents = {e.get("userAgent", "") for e in events if _user(e) == CONTROLLER_USER}
    return [
        e
        for e in events
        if _user(e) == CONTROLLER_USER
        or (_user(e) == WORKLOAD_USER and e.get("userAgent") in agents)
    ]


def _plain_resource(event: JSONDict) -> str:
    return str((event.get("objectRef") or {}).get("resource", ""))


def _succeeded(event: JSONDict) -> bool:
    return 200 <= int((event.get("responseStatus") or {}).get("code", 0)) < 300


def _user(event: JSONDict) -> str:
    return str((event.get("user") or {}).get("username", ""))


def _resource(event: JSONDict) -> str:
    ref = event.get("objectRef") or {}
    resource = str(ref.get("resource", "?"))
    if ref.get("subresource"):
        resource += "/" + str(ref["subresource"])
    if _user(event) == WORKLOAD_USER:
        resource += " (workload cluster)"
    return resource


def _key(event: JSONDict) -> str:
    return f"{_resource(event)} {event.get('verb')}"


def _what(event: JSONDict) -> str:
    """For status patches the Ready reason they set; for Events their reason."""
    body = event.get("requestObject") or {}
    ref = event.get("objectRef") or {}
    if ref.get("resource") == "events":
        return str(body.get("reason") or "(aggregated: count)")
    if ref.get("subresource") == "status":
        status = body.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Ready":
                return f"Ready={condition.get('reason')}"
        return "fields " + ",".join(sorted(status))
    if ref.get("resource") == "remotemachines":
        fields = []
        meta = body.get("metadata") or {}
        fields += [f"metadata.{k}" for k in sorted(meta) if k != "resourceVersion"]
        fields += [f"spec.{k}" for k in sorted(body.get("spec") or {})]
        return ",".join(fields)
    return ""


def _group_of(event: JSONDict, groups: Sequence[Group]) -> str:
    ref = event.get("objectRef") or {}
    namespace = ref.get("namespace") or ""
    name = ref.get("name") or ""
    for group in groups:
        if namespace == group.namespace or (not namespace and name.startswith(group.namespace)):
            return group.namespace
    return "(other)"


def summarize_writes(events: Sequence[JSONDict]) -> JSONDict:
    writes = [e for e in events if e.get("verb") in WRITE_VERBS]
    failed = Counter(
        f"{_key(e)} {(e.get('responseStatus') or {}).get('code')}"
        for e in writes
        if not _succeeded(e)
    )
    details: dict[str, Counter[str]] = defaultdict(Counter)
    for e in writes:
        what = _what(e)
        if what:
            details[_key(e)][what] += 1
    return {
        "writes": len(writes),
        "events": sum(1 for e in writes if _plain_resource(e) == "events"),
        "by_resource_verb": dict(Counter(_key(e) for e in writes).most_common()),
        "what": {k: dict(v.most_common()) for k, v in sorted(details.items())},
        "failed": dict(failed),
    }


def per_machine(events: Sequence[JSONDict], machines: int) -> JSONDict:
    """Writes about machines (everything but the RemoteCluster's) per machine."""
    writes = [e for e in events if e.get("verb") in WRITE_VERBS]
    cluster = [e for e in writes if _plain_resource(e) == "remoteclusters"]
    machine = [e for e in writes if _plain_resource(e) != "remoteclusters"]
    events_ = [e for e in machine if _plain_resource(e) == "events"]
    objects = [e for e in machine if _plain_resource(e) != "events"]
    rejected = [e for e in objects if not _succeeded(e)]
    return {
        "machines": machines,
        "object_writes_per_machine": round(len(objects) / machines, 2),
        "rejected_object_writes_per_machine": round(len(rejected) / machines, 2),
        "events_per_machine": round(len(events_) / machines, 2),
        "all_writes_per_machine": round(len(machine) / machines, 2),
        "remotecluster_writes": len(cluster),
        **summarize_writes(writes),
    }


def machine_trace(events: Sequence[JSONDict], name: str) -> list[str]:
    """Every write about one machine, in order: ``verb resource [what] code``."""

    def about(event: JSONDict) -> bool:
        ref = event.get("objectRef") or {}
        if ref.get("resource") == "events":
            involved = (event.get("requestObject") or {}).get("involvedObject") or {}
            return involved.get("name") == name or str(ref.get("name", "")).startswith(name + ".")
        return ref.get("name") == name

    trace = []
    for event in sorted(events, key=_timestamp):
        if event.get("verb") in WRITE_VERBS and about(event):
            code = (event.get("responseStatus") or {}).get("code")
            what = _what(event)
            trace.append(f"{_key(event)}{f' [{what}]' if what else ''} {code}")
    return trace


def steady_reads(events: Sequence[JSONDict]) -> dict[str, int]:
    reads = [e for e in events if e.get("verb") not in WRITE_VERBS and e.get("verb") != "watch"]
    return dict(Counter(_key(e) for e in reads).most_common())


async def resource_versions(env: Env, groups: Sequence[Group]) -> dict[str, str]:
    versions = {}
    for group in groups:
        for rm in (await env.client.list(REMOTE_MACHINES, group.namespace))["items"]:
            versions[rm["metadata"]["name"]] = rm["metadata"]["resourceVersion"]
    return versions


# -- the whole run --------------------------------------------------------------------------------


class BenchmarkFailed(RuntimeError):
    """The run could not finish (a wait timed out); the message has the controller's log tail."""


@attrs.define
class Observed:
    p2: JSONDict
    audit: list[JSONDict]
    steady_from: float
    steady_to: float
    changed: list[str]


async def _drive(env: Env, sizes: Sizes, groups: dict[str, Group]) -> Observed:
    seq, burst, nodes = groups["seq"], groups["burst"], groups["nodes"]
    present = [g for g in groups.values() if g.hosts]
    waiting = [g for g in (seq, burst) if g.hosts]
    for group in present:
        await prepare_group(env, group)
    for group in waiting:
        await create_machines(env, group)
    for group in waiting:
        await wait_reason(env, group, "WaitingForBootstrapData")
    await asyncio.sleep(2.0)  # let Cluster API's own updates and our reconciles settle
    p2: JSONDict = {"load_1m": round(os.getloadavg()[0], 2)}
    samples_: dict[str, list[Sample]] = {}
    if seq.hosts:
        p2["sequential"], samples_["sequential"] = await measure_sequential(
            env, seq, sizes.gap_seconds
        )
    if burst.hosts:
        await asyncio.sleep(1.0)
        p2["burst"], samples_["burst"] = await measure_burst(env, burst)
    if nodes.hosts:
        script = samples.node_registration_script(
            env.api_proxy.port,
            env.fleet.gateway,
            env.plane.workdir / "pki",
            with_provider_id=False,
            labels={NODE_LABEL: nodes.namespace},
        )
        for name in nodes.names:
            await env.client.create(SECRETS, bootstrap_secret(nodes, name, script))
        await create_machines(env, nodes)
    for group in waiting:
        await wait_provisioned(env, group)
    if nodes.hosts:
        await wait_running(env, nodes)
    await asyncio.sleep(5.0)  # requests already in flight
    steady_from = time.time()
    before = await resource_versions(env, present)
    await asyncio.sleep(sizes.steady_seconds)
    after = await resource_versions(env, present)
    steady_to = time.time()
    audit = controller_events(await asyncio.to_thread(read_audit, env.plane.audit_log))
    changed = sorted(n for n, v in after.items() if before.get(n) != v)
    for mode, taken in samples_.items():
        p2[mode].update(reconcile_delays(taken, audit))
    return Observed(p2, audit, steady_from, steady_to, changed)


async def run(sizes: Sizes) -> JSONDict:
    """Both benchmarks on one environment; returns ``{"p2": {...}, "p5": {...}}``. Raises
    :class:`BenchmarkFailed` when machines do not get where they should."""
    started = time.monotonic()
    indices = list(range(sizes.hosts))
    first_burst, first_nodes = sizes.sequential, sizes.sequential + sizes.burst
    named = {
        "seq": Group("p2-seq", indices[:first_burst]),
        "burst": Group("p2-burst", indices[first_burst:first_nodes]),
        "nodes": Group("p5-nodes", indices[first_nodes:]),
    }
    groups = [g for g in named.values() if g.hosts]
    waiting = [g for g in (named["seq"], named["burst"]) if g.hosts]
    async with environment(sizes.hosts) as env:
        try:
            observed = await _drive(env, sizes, named)
        except TimeoutError as error:
            tail = "\n".join(line[:300] for line in log_tail(env.controller.log, 8).splitlines())
            raise BenchmarkFailed(
                f"{error}\ncontroller log ({env.controller.log}):\n{tail}"
            ) from None
    p2, audit = observed.p2, observed.audit
    steady_from, steady_to = observed.steady_from, observed.steady_to
    provisioning = [e for e in audit if _timestamp(e) < steady_from]
    steady = [e for e in audit if steady_from <= _timestamp(e) <= steady_to]
    by_group: dict[str, list[JSONDict]] = defaultdict(list)
    for event in provisioning:
        by_group[_group_of(event, groups)].append(event)
    waiting_events = [e for g in waiting for e in by_group[g.namespace]]
    waiting_machines = sum(len(g.hosts) for g in waiting)
    agents = sorted({e.get("userAgent", "") for e in audit if _user(e) == CONTROLLER_USER})
    p5: JSONDict = {
        "controller_user": CONTROLLER_USER,
        "controller_user_agents": agents,
        "groups": {
            g.namespace: {
                **per_machine(by_group[g.namespace], len(g.hosts)),
                "trace_of_" + g.name(0): machine_trace(by_group[g.namespace], g.name(0)),
            }
            for g in groups
        },
        "outside_groups": summarize_writes(by_group["(other)"]),
        "steady_seconds": round(steady_to - steady_from, 1),
        "steady_machines": sum(len(g.hosts) for g in groups),
        "steady": summarize_writes(steady),
        "steady_reads": steady_reads(steady),
        "steady_remotemachines_changed": observed.changed,
    }
    if waiting:
        p5["waiting"] = per_machine(waiting_events, waiting_machines)
    return {
        "benchmark": "provision_end_to_end",
        "hosts": sizes.hosts,
        "sizes": attrs.asdict(sizes),
        "seconds": round(time.monotonic() - started, 1),
        "p2": p2,
        "p5": p5,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_provision")
    parser.add_argument("--quick", action="store_true", help="small sizes, 25 s steady state")
    parser.add_argument("--sequential", type=int, default=None, help="P2 one-at-a-time machines")
    parser.add_argument("--burst", type=int, default=None, help="P2 machines in the burst")
    parser.add_argument("--nodes", type=int, default=None, help="machines registering Nodes")
    parser.add_argument("--steady", type=float, default=None, help="steady-state seconds")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (namespaced hosts)")
    base = Sizes.quick() if args.quick else Sizes()
    sizes = attrs.evolve(
        base,
        **{
            k: v
            for k, v in (
                ("sequential", args.sequential),
                ("burst", args.burst),
                ("nodes", args.nodes),
                ("steady_seconds", args.steady),
            )
            if v is not None
        },
    )
    warnings_to_stderr()
    print(json.dumps(asyncio.run(run(sizes)), indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
