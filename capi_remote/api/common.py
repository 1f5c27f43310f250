"""What the models of both API versions build on: the group, annotation names, validation
patterns, durations, and field helpers.

The two versions differ in a handful of fields only (the clean-up commands' name, status
readiness, failure fields and condition shapes, see ``conversion.py``); everything else is defined
once, in ``connection.py`` (how a host is reached), ``status.py``, ``templates.py`` and
``cluster.py``, and used by both, which is also what makes conversion between them lossless.
"""

import re
from datetime import timedelta
from typing import Any, Final

import attrs

from capi_remote.api.fields import Rule, doc

GROUP: Final = "infrastructure.cluster.x-k8s.io"

# Trust-on-first-use pins. Annotations, not status: `clusterctl move` drops status, and a pin lost
# on move would silently re-trust whatever key answers next. The pin sits on the object whose spec
# holds the policy (the PooledRemoteMachine for pool hosts, so it outlives claims).
HOST_KEY_FINGERPRINT_ANNOTATION: Final = (
    "remote.infrastructure.cluster.x-k8s.io/host-key-fingerprint"
)
BASTION_HOST_KEY_FINGERPRINT_ANNOTATION: Final = (
    "remote.infrastructure.cluster.x-k8s.io/bastion-host-key-fingerprint"
)

# The UID of the RemoteMachine whose `spec.providerID` capi-remote set before its bootstrap ran (in
# the write that adds the finalizer or records the claimed host, to save the API server a write).
# A providerID without it, or with another UID (the object was recreated by `clusterctl move`),
# was set once provisioned: that machine's host success sentinel is its own.
PROVIDER_ID_SET_FOR_ANNOTATION: Final = "remote.infrastructure.cluster.x-k8s.io/provider-id-set-for"

# RFC 1123 host names (labels of 1-63 letters, digits and hyphens), case-insensitive. `[.]` rather
# than `\.` keeps the pattern free of escapes inside CEL string literals.
DNS_NAME_PATTERN: Final = (
    "^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
ADDRESS_RULE: Final = Rule(
    rule=f"isIP(self) || (self.matches('{DNS_NAME_PATTERN}') && !self.matches('^[0-9.]+$'))",
    message="address must be an IPv4/IPv6 address or a DNS name",
)
FINGERPRINT_PATTERN: Final = "^SHA256:[A-Za-z0-9+/]{43}=?$"
DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"

API_VERSION_DOC: Final = doc(
    "APIVersion defines the versioned schema of this representation of an object.\nServers"
    " should convert recognized schemas to the latest internal value, and\nmay reject"
    " unrecognized values.\nMore info:"
    " https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"
)
KIND_DOC: Final = doc(
    "Kind is a string value representing the REST resource this object represents.\nServers"
    " may infer this from the endpoint the client submits requests to.\nCannot be updated.\nIn"
    " CamelCase.\nMore info:"
    " https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
)
METADATA_DOC: Final = doc("Standard object metadata.")


def clean_up_commands_doc() -> dict[str, Any]:
    return doc(
        "Commands run on the machine when it is deleted, instead of the built-in k0s clean-up"
        " (with k0s, these must then clean up the k0s installation completely).",
        list_type="atomic",
    )


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration ("30s", "1h30m") as the apiserver's CEL ``duration()`` does."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}")
    seconds = sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    return timedelta(seconds=seconds)


def duration_rule(name: str, low: str, high: str) -> Rule:
    # Unparsable strings are left to the pattern's error; `duration()` would add a cryptic one.
    parsable = DURATION_PATTERN.replace(r"\.", "[.]")
    return Rule(
        rule=(
            f"!self.matches('{parsable}')"
            f" || (duration(self) >= duration('{low}') && duration(self) <= duration('{high}'))"
        ),
        message=f"{name} must be between {low} and {high}",
    )


def port_field(what: str) -> Any:
    return attrs.field(
        default=22,
        metadata=doc(f"SSH port of {what}.", fmt="int32", minimum=1, maximum=65535),
    )


def user_field(what: str) -> Any:
    return attrs.field(
        default="root",
        metadata=doc(f"User to log in as on {what}.", min_length=1, max_length=256),
    )


def address_doc(what: str) -> dict[str, Any]:
    return doc(
        f"IPv4/IPv6 address or DNS name of {what}.",
        min_length=1,
        max_length=253,
        rules=[ADDRESS_RULE],
    )
