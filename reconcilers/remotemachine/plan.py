"""The one place where a bootstrap data Secret becomes a BootstrapPlan (both backends run it).

The data is tenant-written: the parse runs through a :class:`Parser`, in the controller the
``ParseSandbox`` of ``capi_remote.bootstrap`` (a child process under memory, CPU and wall-clock
limits that is killed when it overruns or the reconcile is cancelled). Only the cheap checks and
the providerID substitution run here.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

from capi_remote.bootstrap import (
    BootstrapParseError,
    BootstrapPlan,
    InstanceMetadata,
    substitute_provider_id,
)
from reconcilers.remotemachine.machinestatus import ipv4_or_none

JSONDict = dict[str, Any]


class Parser(Protocol):
    """What turns bootstrap data into a plan (``capi_remote.bootstrap.ParseSandbox``)."""

    async def parse(
        self,
        data: bytes,
        format: str | None,
        *,
        metadata: InstanceMetadata,
        commands_as_script: bool = False,
        tenant: str = "",
    ) -> BootstrapPlan: ...


async def bootstrap_plan(
    parser: Parser, rm: JSONDict, machine: JSONDict, secret: JSONDict, pid: str
) -> BootstrapPlan:
    """Raises BootstrapParseError (a limit hit is one too, with the key ``(limits)``)."""
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
    return await parser.parse(
        data,
        fmt,
        metadata=metadata,
        commands_as_script=bool(rm["spec"].get("commandsAsScript")),
        tenant=meta["namespace"],
    )
