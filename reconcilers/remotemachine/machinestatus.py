"""Small pure helpers on a RemoteMachine's status dict: conditions kept true, the v1beta1
failure fields, the phase and reason the flow decides on."""

from __future__ import annotations

import ipaddress
from typing import Any

from reconcilers import conditions as c
from reconcilers.common import mark

JSONDict = dict[str, Any]


def provider_id(address: str, port: int) -> str:
    try:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        host = address
    return f"remote-machine://{host}:{port}"


def condition(status: JSONDict, type_: str) -> JSONDict:
    found: JSONDict = next((x for x in status.get("conditions", []) if x.get("type") == type_), {})
    return found


def ready_reason(status: JSONDict) -> str:
    return str(condition(status, c.READY).get("reason") or "")


def keep_true(rm: JSONDict, status: JSONDict, type_: str, reason: str) -> None:
    """Condition ``type_`` True: as it is if it already is (its reason and message stay, only a
    new generation is recorded), else with ``reason``."""
    current = condition(status, type_)
    if current.get("status") == "True":
        mark(rm, status, type_, True, current.get("reason", reason), current.get("message", ""))
    else:
        mark(rm, status, type_, True, reason)


def set_failure(status: JSONDict, error: str, message: str) -> None:
    """The v1beta1 contract's terminal failure (``error``: a Cluster API MachineStatusError such
    as CreateError or InvalidConfiguration), kept under ``status.deprecated.v1beta1``."""
    v1beta1 = status.setdefault("deprecated", {}).setdefault("v1beta1", {})
    v1beta1["failureReason"] = error
    v1beta1["failureMessage"] = message[:1024]


def clear_failure(status: JSONDict) -> None:
    v1beta1 = (status.get("deprecated") or {}).get("v1beta1") or {}
    for field in ("failureReason", "failureMessage"):
        v1beta1.pop(field, None)
    if not v1beta1:
        status.get("deprecated", {}).pop("v1beta1", None)
    if not status.get("deprecated", True):
        status.pop("deprecated")


def ipv4_or_none(address: str) -> str | None:
    try:
        return address if ipaddress.ip_address(address).version == 4 else None
    except ValueError:
        return None  # a DNS name
