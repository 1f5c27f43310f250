"""The one place where a bootstrap data Secret becomes a BootstrapPlan (both backends run it)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from capi_remote.bootstrap import (
    BootstrapParseError,
    BootstrapPlan,
    InstanceMetadata,
    parse_bootstrap,
    substitute_provider_id,
)
from reconcilers.remotemachine.machinestatus import ipv4_or_none

JSONDict = dict[str, Any]


def _plan(rm: JSONDict, machine: JSONDict, secret: JSONDict, pid: str) -> BootstrapPlan:
    data = base64.b64decode((secret.get("data") or {}).get("value", ""))
    if not data:
        raise BootstrapParseError("value", "the bootstrap data Secret has no 'value' key")
    fmt_raw = (secret.get("data") or {}).get("format")
    try:
        fmt = base64.b64decode(fmt_raw).decode() if fmt_raw else None
    except UnicodeDecodeError:
        raise BootstrapParseError("format", "the 'format' key is not UTF-8 text") from None
    data = substitute_provider_id(data, pid)
    meta = rm["metadata"]
    hostname = machine["metadata"]["name"]
    metadata = InstanceMetadata(
        instance_id=meta["uid"],
        local_hostname=hostname,
        hostname=hostname,
        local_ipv4=ipv4_or_none(rm["spec"]["address"]),
    )
    return parse_bootstrap(
        data,
        fmt,
        metadata=metadata,
        commands_as_script=bool(rm["spec"].get("commandsAsScript")),
    )


async def bootstrap_plan(
    rm: JSONDict, machine: JSONDict, secret: JSONDict, pid: str
) -> BootstrapPlan:
    """Raises BootstrapParseError. In a thread: a slow parse must not stall every other
    reconcile on the event loop."""
    return await asyncio.to_thread(_plan, rm, machine, secret, pid)
