"""Status parts shared by both API versions: conditions, addresses, bootstrap progress, and the
PooledRemoteMachine's claim and health."""

from typing import Any, Final, Literal

import attrs

from capi_remote.api.common import FINGERPRINT_PATTERN
from capi_remote.api.connection import NamespacedName
from capi_remote.api.fields import Rule, doc, object_rules

CONDITION_TYPE_PATTERN: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


@object_rules(
    description=(
        "Condition contains details for one aspect of the current state of this API Resource."
    )
)
@attrs.frozen(kw_only=True)
class Condition:
    """``metav1.Condition``, with the upstream schema."""

    type: str = attrs.field(
        metadata=doc(
            "type of condition in CamelCase or in foo.example.com/CamelCase.",
            max_length=316,
            pattern=CONDITION_TYPE_PATTERN,
        )
    )
    status: Literal["True", "False", "Unknown"] = attrs.field(
        metadata=doc("status of the condition, one of True, False, Unknown.")
    )
    observed_generation: int | None = attrs.field(
        default=None,
        metadata=doc(
            "observedGeneration represents the .metadata.generation that the condition was set"
            " based upon.\nFor instance, if .metadata.generation is currently 12, but the"
            " .status.conditions[x].observedGeneration is 9, the condition is out of date\nwith"
            " respect to the current state of the instance.",
            fmt="int64",
            minimum=0,
        ),
    )
    last_transition_time: str = attrs.field(
        metadata=doc(
            "lastTransitionTime is the last time the condition transitioned from one status to"
            " another.\nThis should be when the underlying condition changed.  If that is not"
            " known, then using the time when the API field changed is acceptable.",
            fmt="date-time",
        )
    )
    reason: str = attrs.field(
        metadata=doc(
            "reason contains a programmatic identifier indicating the reason for the"
            " condition's last transition.\nProducers of specific condition types may define"
            " expected values and meanings for this field,\nand whether the values are"
            " considered a guaranteed API.\nThe value should be a CamelCase string.\nThis field"
            " may not be empty.",
            min_length=1,
            max_length=1024,
            pattern=CONDITION_REASON_PATTERN,
        )
    )
    message: str = attrs.field(
        metadata=doc(
            "message is a human readable message indicating details about the transition.\n"
            "This may be an empty string.",
            max_length=32768,
        )
    )


def conditions_doc() -> dict[str, Any]:
    return doc(
        "Current state of the object as metav1 Conditions (Ready and the provider's own).",
        list_type="map",
        list_map_keys=["type"],
        max_items=32,
    )


@object_rules(
    description="Condition defines an observation of a Cluster API resource operational state."
)
@attrs.frozen(kw_only=True)
class V1Beta1Condition:
    """A Cluster API v1beta1 condition (with severity), kept for v1beta1 clients."""

    type: str = attrs.field(
        metadata=doc("Type of condition in CamelCase.", min_length=1, max_length=256)
    )
    status: str = attrs.field(metadata=doc("Status of the condition: True, False or Unknown."))
    severity: str | None = attrs.field(
        default=None,
        metadata=doc("Severity of a False condition: Error, Warning or Info.", max_length=32),
    )
    last_transition_time: str = attrs.field(
        metadata=doc("Last time the condition changed status.", fmt="date-time")
    )
    reason: str | None = attrs.field(
        default=None,
        metadata=doc("Reason for the last transition, in CamelCase.", max_length=256),
    )
    message: str | None = attrs.field(
        default=None, metadata=doc("Human readable details.", max_length=10240)
    )


def v1beta1_conditions_doc() -> dict[str, Any]:
    return doc("Cluster API v1beta1 conditions, for v1beta1 clients.", max_items=32)


@attrs.frozen(kw_only=True)
class MachineAddress:
    type: Literal["Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS"] = (
        attrs.field(metadata=doc("Address type."))
    )
    address: str = attrs.field(metadata=doc("The address.", min_length=1, max_length=256))


# ---------------------------------------------------------------------------------------------
# RemoteMachine status parts


@attrs.frozen(kw_only=True)
class BootstrapProgress:
    steps_total: int | None = attrs.field(
        default=None,
        metadata=doc("Steps in the bootstrap plan.", fmt="int32", minimum=0),
    )
    steps_done: int | None = attrs.field(
        default=None,
        metadata=doc("Steps completed (each runs at most once).", fmt="int32", minimum=0),
    )
    attempts: int | None = attrs.field(
        default=None,
        metadata=doc("Attempts made at the current step.", fmt="int32", minimum=0),
    )
    last_output_tail: str | None = attrs.field(
        default=None,
        metadata=doc("Last lines of output of the most recent step.", max_length=4096),
    )


@attrs.frozen(kw_only=True)
class MachineStatusBase:
    """RemoteMachine status fields common to both versions."""

    addresses: tuple[MachineAddress, ...] | None = attrs.field(
        default=None,
        metadata=doc("Addresses of the machine.", list_type="atomic", max_items=128),
    )
    pooled_machine_ref: NamespacedName | None = attrs.field(
        default=None,
        metadata=doc(
            "The PooledRemoteMachine claimed for this machine (the claim itself lives in that"
            " object's spec.claim)."
        ),
    )
    host_key_fingerprint: str | None = attrs.field(
        default=None,
        metadata=doc(
            "SHA256 fingerprint of the host key accepted at the last connection.",
            pattern=FINGERPRINT_PATTERN,
        ),
    )
    phase: str | None = attrs.field(
        default=None,
        metadata=doc(
            "Coarse lifecycle phase for humans (e.g. Pending, Claimed, Provisioning,"
            " Provisioned, Deleting, Failed); automation should read conditions.",
            max_length=64,
        ),
    )
    bootstrap: BootstrapProgress | None = attrs.field(
        default=None, metadata=doc("Progress of the bootstrap run.")
    )


# ---------------------------------------------------------------------------------------------
# PooledRemoteMachine


@attrs.frozen(kw_only=True)
class PoolClaim:
    name: str = attrs.field(
        metadata=doc("Name of the claiming RemoteMachine.", min_length=1, max_length=253)
    )
    namespace: str = attrs.field(
        metadata=doc("Namespace of the claiming RemoteMachine.", min_length=1, max_length=63)
    )
    uid: str | None = attrs.field(
        default=None,
        metadata=doc(
            "UID of the claiming RemoteMachine. It may be updated in place (`clusterctl move`"
            " gives objects new UIDs); name and namespace may not.",
            max_length=36,
        ),
    )


# A transition rule on `claim` itself runs only when both the old and the new object have a claim:
# setting an empty claim and clearing one are therefore always allowed, changing one is checked.
# `namespace` is a CEL reserved word: the apiserver exposes the property as `__namespace__`.
CLAIM_RULE: Final = Rule(
    rule="self.name == oldSelf.name && self.__namespace__ == oldSelf.__namespace__",
    message=(
        "spec.claim can be set when empty or cleared, but not moved to another claimant;"
        " release the machine first"
    ),
)
CLAIM_DOC: Final = doc(
    "The RemoteMachine this host is reserved for. Kept in spec so that `clusterctl move` keeps"
    " reservations; it can be set when empty and cleared, never handed to another claimant"
    " directly.",
    rules=[CLAIM_RULE],
)


@attrs.frozen(kw_only=True)
class HostFacts:
    os: str | None = attrs.field(
        default=None, metadata=doc("Operating system (PRETTY_NAME of os-release).")
    )
    kernel: str | None = attrs.field(default=None, metadata=doc("Kernel release (uname -r)."))
    arch: str | None = attrs.field(
        default=None, metadata=doc("CPU architecture in Go's naming (amd64, arm64, ...).")
    )
    cpus: int | None = attrs.field(
        default=None, metadata=doc("Online CPUs.", fmt="int32", minimum=0)
    )
    memory: str | None = attrs.field(
        default=None, metadata=doc("Total memory as a quantity (e.g. 8Gi).")
    )
    hostname: str | None = attrs.field(default=None, metadata=doc("Host name."))
    addresses: tuple[str, ...] | None = attrs.field(
        default=None, metadata=doc("Global IP addresses of the host.", list_type="atomic")
    )


HealthState = Literal["Healthy", "NotClean", "Untrusted", "Unreachable", "Unknown"]


@attrs.frozen(kw_only=True)
class Health:
    state: HealthState | None = attrs.field(
        default=None,
        metadata=doc(
            "Outcome of the last probe: Healthy (logged in), NotClean (logged in, and an earlier"
            " machine's bootstrap left its success sentinel or state there: clean the host, then"
            " ask for a re-check), Untrusted (the host answered but its key is not trusted: no"
            " hostKeyPolicy, or a key other than the trusted one), Unreachable (any other"
            " failure), Unknown before the first probe or while a Secret or ConfigMap it needs is"
            " missing. Only a host found Healthy by a probe of its current spec"
            " (observedGeneration) is claimed."
        ),
    )
    reachable: bool | None = attrs.field(
        default=None, metadata=doc("Whether the last probe could log in.")
    )
    last_probe_time: str | None = attrs.field(
        default=None, metadata=doc("When the last probe ran.", fmt="date-time")
    )
    observed_generation: int | None = attrs.field(
        default=None,
        metadata=doc(
            "The metadata.generation the last probe reached the host with; a spec changed since"
            " (address, credentials, host-key policy, bastion) is probed at once.",
            fmt="int64",
            minimum=0,
        ),
    )
    message: str | None = attrs.field(
        default=None, metadata=doc("Details of the last probe's outcome.", max_length=1024)
    )
    facts: HostFacts | None = attrs.field(
        default=None, metadata=doc("What the last successful probe found on the host.")
    )
    host_key_fingerprint: str | None = attrs.field(
        default=None,
        metadata=doc("SHA256 fingerprint of the host key the last successful probe verified."),
    )
    bastion_host_key_fingerprint: str | None = attrs.field(
        default=None,
        metadata=doc("SHA256 fingerprint of the bastion's host key the last probe verified."),
    )


@attrs.frozen(kw_only=True)
class PooledRemoteMachineStatus:
    reserved: bool | None = attrs.field(
        default=None,
        metadata=doc(
            "Whether the machine is claimed (kept for compatibility; spec.claim is authoritative)."
        ),
    )
    machine_ref: NamespacedName | None = attrs.field(
        default=None,
        metadata=doc("The claiming RemoteMachine (kept for compatibility, mirrors spec.claim)."),
    )
    health: Health | None = attrs.field(
        default=None, metadata=doc("Result of the periodic SSH probe of the host.")
    )
