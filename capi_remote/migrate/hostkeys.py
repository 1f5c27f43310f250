"""The host-key step: which hosts have no host-key policy, their keys, and where keys go.

The reference accepted any host key; capi-remote trusts none unless told. For every RemoteMachine
not provisioned yet and every PooledRemoteMachine without a ``hostKeyPolicy``, this step gets the
host's key (from a known_hosts file the operator verified, or from the host itself, shown to the
operator to confirm, or accepted when asked to trust on first use), writes it into the ConfigMap
``capi-remote-known-hosts`` of the object's namespace and points the object's policy at it.

Invariants: addresses come from tenant-written objects, so at most ``MAX_HOSTS`` hosts are scanned,
``SCANS_AT_ONCE`` at a time, each within the scan timeout, and only the SSH key exchange runs (no
credentials are sent); a key is written only for the host (address and port) that presented it;
existing lines in the ConfigMap are kept, so re-running after an interruption adds, never drops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

from capi_remote.kube.client import ApiError, KubeClient
from capi_remote.migrate.errors import MigrationError
from capi_remote.migrate.inventory import Inventory, provisioned
from capi_remote.resources import CONFIGMAPS, POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from capi_remote.ssh import HostUnreachable, KnownHosts
from capi_remote.ssh.keyscan import ScannedKey, scan

JSONDict = dict[str, Any]
CONFIGMAP = "capi-remote-known-hosts"
DATA_KEY = "known_hosts"
MAX_HOSTS = 5000
SCANS_AT_ONCE = 16
POLICY = {"knownHostsRef": {"kind": "ConfigMap", "name": CONFIGMAP, "key": DATA_KEY}}

#: Asked for each scanned key unless trusting on first use: True to trust it.
Confirm = Callable[[ScannedKey], Awaitable[bool]]


@attrs.frozen
class Unkeyed:
    """An object whose host has no host-key policy."""

    kind: str
    namespace: str
    name: str
    address: str
    port: int

    @property
    def host(self) -> tuple[str, int]:
        return (self.address, self.port)


def unkeyed(inventory: Inventory) -> list[Unkeyed]:
    found: list[Unkeyed] = []
    for rm in inventory.remote_machines:
        spec = rm.get("spec") or {}
        if provisioned(rm) or spec.get("hostKeyPolicy") or not spec.get("address"):
            continue
        if (rm.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if spec.get("provisionJob") and not spec.get("sshKeyRef"):
            continue  # the Job's own commands (tsh, sft) log in and check the host themselves
        found.append(_unkeyed(rm, spec))
    for host in inventory.pooled:
        spec = (host.get("spec") or {}).get("machine") or {}
        if spec.get("hostKeyPolicy") or not spec.get("address"):
            continue
        found.append(_unkeyed(host, spec))
    if len({u.host for u in found}) > MAX_HOSTS:
        raise MigrationError(f"more than {MAX_HOSTS} hosts without a host-key policy")
    return found


def _unkeyed(obj: JSONDict, spec: JSONDict) -> Unkeyed:
    port = spec.get("port", 22)
    return Unkeyed(
        kind=str(obj["kind"]),
        namespace=obj["metadata"]["namespace"],
        name=obj["metadata"]["name"],
        address=str(spec["address"]),
        port=port if isinstance(port, int) and not isinstance(port, bool) else 22,
    )


def from_file(path: Path, hosts: set[tuple[str, int]]) -> dict[tuple[str, int], list[str]]:
    """The lines of a verified known_hosts file for each host it lists (written under the
    host's own name, so one host's entry never vouches for another)."""
    try:
        known = KnownHosts.parse(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise MigrationError(f"cannot read {path}: {error}") from error
    found: dict[tuple[str, int], list[str]] = {}
    for address, port in hosts:
        entries = known.lookup(address, port)
        if entries:
            found[(address, port)] = [
                ScannedKey(address, port, e.key_type, e.blob).known_hosts_line() for e in entries
            ]
    return found


async def from_hosts(
    hosts: set[tuple[str, int]],
    scan_timeout: float,
    confirm: Confirm | None,
    on_unreachable: Callable[[tuple[str, int], str], None],
) -> dict[tuple[str, int], list[str]]:
    """Ask each host for its key; keep it if ``confirm`` says so (``None``: trust on first use)."""
    limit = asyncio.Semaphore(SCANS_AT_ONCE)

    async def one(host: tuple[str, int]) -> ScannedKey | None:
        async with limit:
            try:
                return await asyncio.to_thread(scan, host[0], host[1], scan_timeout)
            except HostUnreachable as error:
                on_unreachable(host, error.detail)
                return None

    scanned = await asyncio.gather(*(one(h) for h in sorted(hosts)))
    found: dict[tuple[str, int], list[str]] = {}
    for key in scanned:
        if key is not None and (confirm is None or await confirm(key)):
            found[(key.address, key.port)] = [key.known_hosts_line()]
    return found


async def store(kube: KubeClient, namespace: str, lines: list[str]) -> None:
    """Add ``lines`` to the namespace's ConfigMap (created if missing), keeping what is there."""
    try:
        existing = await kube.get(CONFIGMAPS, namespace, CONFIGMAP)
    except ApiError as error:
        if not error.not_found:
            raise
        existing = None
    if existing is None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP, "namespace": namespace},
            "data": {DATA_KEY: "".join(f"{line}\n" for line in lines)},
        }
        await kube.create(CONFIGMAPS, body)
        return
    text = str((existing.get("data") or {}).get(DATA_KEY, ""))
    have = set(text.splitlines())
    added = [line for line in lines if line not in have]
    if added:
        prefix = text if not text or text.endswith("\n") else text + "\n"
        existing.setdefault("data", {})[DATA_KEY] = prefix + "".join(f"{x}\n" for x in added)
        await kube.replace(CONFIGMAPS, existing)


async def set_policy(kube: KubeClient, obj: Unkeyed) -> None:
    if obj.kind == "RemoteMachine":
        await kube.patch(
            REMOTE_MACHINES, obj.namespace, obj.name, {"spec": {"hostKeyPolicy": POLICY}}
        )
    else:
        patch = {"spec": {"machine": {"hostKeyPolicy": POLICY}}}
        await kube.patch(POOLED_REMOTE_MACHINES, obj.namespace, obj.name, patch)
