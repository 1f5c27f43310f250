"""Small pure helpers on a RemoteMachine's status dict: conditions kept true, the v1beta1
failure fields, the phase and reason the flow decides on; and its record before a start (our
finalizer, its providerID)."""

from __future__ import annotations

import ipaddress
from typing import Any

from capi_remote.api import PROVIDER_ID_SET_FOR_ANNOTATION, RemoteMachineSpec, from_dict
from reconcilers import conditions as c
from reconcilers.common import mark

JSONDict = dict[str, Any]
FINALIZER = "remotemachine.k0smotron.io/finalizer"  # the reference's, so its objects just work


def provider_id(address: str, port: int) -> str:
    try:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        host = address
    return f"remote-machine://{host}:{port}"


def recorded(desired: JSONDict) -> JSONDict:
    """``desired`` (a RemoteMachine about to be written just before its host is first touched)
    as the API must hold it from then on: our finalizer, the record that the host may hold our
    state (its deletion cleans the host), and its providerID."""
    finalizers = desired["metadata"].setdefault("finalizers", [])
    if FINALIZER not in finalizers:
        finalizers.append(FINALIZER)
    return with_provider_id(desired)


def with_provider_id(desired: JSONDict) -> JSONDict:
    """``desired`` (a RemoteMachine about to be written) with its providerID, when its host is
    known and it has none yet: set in a write the machine needs anyway (the record before the
    first start), not in one of its own at the end. Cluster API reads it only once the machine
    is provisioned. The annotation says it was set before any bootstrap, for this UID."""
    spec = desired.get("spec") or {}
    if spec.get("providerID") or not spec.get("address"):
        return desired
    typed = from_dict(RemoteMachineSpec, spec)
    desired["spec"]["providerID"] = provider_id(typed.address or "", typed.port)
    meta = desired["metadata"]
    meta.setdefault("annotations", {})[PROVIDER_ID_SET_FOR_ANNOTATION] = meta["uid"]
    return desired


def provisioned_before(rm: JSONDict) -> bool:
    """Whether ``rm`` was provisioned before, as far as what survives ``clusterctl move`` shows:
    a providerID not set ahead of this object's bootstrap (by us once provisioned, or by the
    reference provider, or ahead of the bootstrap of the object it was moved from)."""
    if not (rm.get("spec") or {}).get("providerID"):
        return False
    meta = rm["metadata"]
    set_for = (meta.get("annotations") or {}).get(PROVIDER_ID_SET_FOR_ANNOTATION)
    return bool(set_for != meta.get("uid"))


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
