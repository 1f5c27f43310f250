"""Model types shared by v1beta1 and v1beta2.

The two versions differ in a handful of fields only (the clean-up commands' name, status
readiness, failure fields and condition shapes, see ``conversion.py``); everything else is defined
once here and used by both, which is also what makes conversion between them lossless.
"""

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final, Literal

import attrs

from capi_remote.api.fields import Rule, doc, object_rules
from capi_remote.api.meta import TemplateMeta

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


def _duration_rule(name: str, low: str, high: str) -> Rule:
    # Unparsable strings are left to the pattern's error; `duration()` would add a cryptic one.
    parsable = DURATION_PATTERN.replace(r"\.", "[.]")
    return Rule(
        rule=(
            f"!self.matches('{parsable}')"
            f" || (duration(self) >= duration('{low}') && duration(self) <= duration('{high}'))"
        ),
        message=f"{name} must be between {low} and {high}",
    )


def _port_field(what: str) -> Any:
    return attrs.field(
        default=22,
        metadata=doc(f"SSH port of {what}.", fmt="int32", minimum=1, maximum=65535),
    )


def _user_field(what: str) -> Any:
    return attrs.field(
        default="root",
        metadata=doc(f"User to log in as on {what}.", min_length=1, max_length=256),
    )


def _address_doc(what: str) -> dict[str, Any]:
    return doc(
        f"IPv4/IPv6 address or DNS name of {what}.",
        min_length=1,
        max_length=253,
        rules=[ADDRESS_RULE],
    )


# ---------------------------------------------------------------------------------------------
# References


@attrs.frozen(kw_only=True)
class SecretKeyRef:
    name: str = attrs.field(
        metadata=doc("Name of the Secret, in the object's namespace.", min_length=1, max_length=253)
    )
    key: str = attrs.field(
        metadata=doc("Key within the Secret's data.", min_length=1, max_length=253)
    )


@attrs.frozen(kw_only=True)
class SSHKeyRef:
    name: str = attrs.field(
        metadata=doc(
            "Name of the Secret holding the SSH private key under the data key `value`.",
            min_length=1,
            max_length=253,
        )
    )
    passphrase_ref: SecretKeyRef | None = attrs.field(
        default=None,
        metadata=doc("Secret key holding the passphrase of an encrypted private key."),
    )


@attrs.frozen(kw_only=True)
class NamespacedName:
    name: str = attrs.field(metadata=doc("Name of the object.", max_length=253))
    namespace: str = attrs.field(metadata=doc("Namespace of the object.", max_length=63))


@attrs.frozen(kw_only=True)
class KnownHostsRef:
    kind: Literal["Secret", "ConfigMap"] = attrs.field(
        metadata=doc("Kind of the object holding the known_hosts data.")
    )
    name: str = attrs.field(
        metadata=doc("Name of the object, in the same namespace.", min_length=1, max_length=253)
    )
    key: str = attrs.field(
        default="known_hosts",
        metadata=doc("Data key holding OpenSSH known_hosts lines.", min_length=1, max_length=253),
    )


# ---------------------------------------------------------------------------------------------
# Connection settings


@object_rules(
    Rule(
        rule=(
            "(has(self.knownHostsRef) ? 1 : 0) + (has(self.fingerprint) ? 1 : 0)"
            " + ((has(self.trustOnFirstUse) && self.trustOnFirstUse) ? 1 : 0)"
            " + ((has(self.insecureSkipVerification) && self.insecureSkipVerification) ? 1 : 0)"
            " <= 1"
        ),
        message=(
            "set at most one of knownHostsRef, fingerprint, trustOnFirstUse,"
            " insecureSkipVerification"
        ),
    )
)
@attrs.frozen(kw_only=True)
class HostKeyPolicy:
    known_hosts_ref: KnownHostsRef | None = attrs.field(
        default=None,
        metadata=doc(
            "Verify the host key against known_hosts lines kept in a Secret or ConfigMap."
        ),
    )
    fingerprint: str | None = attrs.field(
        default=None,
        metadata=doc(
            "Expected SHA256 fingerprint of the host key, as `ssh-keygen -lf` prints it"
            " (`SHA256:` followed by unpadded base64).",
            pattern=FINGERPRINT_PATTERN,
        ),
    )
    trust_on_first_use: bool | None = attrs.field(
        default=None,
        metadata=doc(
            "Accept the key presented at the first successful connection (a bootstrap, or a"
            " pooled host's first probe) and pin it: its fingerprint is recorded in the"
            f" annotation `{HOST_KEY_FINGERPRINT_ANNOTATION}` (for a bastion:"
            f" `{BASTION_HOST_KEY_FINGERPRINT_ANNOTATION}`) of the object holding the spec, which"
            " `clusterctl move` keeps; RemoteMachines inherit a pooled host's pins when they"
            " claim it. Later connections must present the pinned key; delete the annotation to"
            " learn a re-installed host's new key."
        ),
    )
    insecure_skip_verification: bool | None = attrs.field(
        default=None,
        metadata=doc(
            "Accept any host key (the reference provider's behaviour). Open to"
            " man-in-the-middle attacks; every connection made this way is warned about."
        ),
    )


_HOST_KEY_POLICY_DOC = (
    "How the SSH host key is verified; set at most one member. When absent or empty the key must"
    " still be verified, and with no key material to verify against the host is not contacted:"
    " the object's conditions say so."
)


@attrs.frozen(kw_only=True)
class Bastion:
    address: str = attrs.field(metadata=_address_doc("the bastion (jump) host"))
    port: int = _port_field("the bastion")
    user: str = _user_field("the bastion")
    ssh_key_ref: SSHKeyRef | None = attrs.field(
        default=None,
        metadata=doc("SSH private key for the bastion; the machine's key when absent."),
    )
    host_key_policy: HostKeyPolicy | None = attrs.field(
        default=None, metadata=doc(_HOST_KEY_POLICY_DOC)
    )


@attrs.frozen(kw_only=True)
class Timeouts:
    connect: str = attrs.field(
        default="15s",
        metadata=doc(
            "Deadline for each of TCP connect, SSH banner and key exchange, and authentication"
            " (1s to 10m), also for the bastion hop; retried handshakes get it afresh.",
            pattern=DURATION_PATTERN,
            max_length=32,
            rules=[_duration_rule("connect", "1s", "10m")],
        ),
    )
    command: str = attrs.field(
        default="30m",
        metadata=doc(
            "Deadline for one remote command step (1s to 24h); file steps use the"
            " controller's default.",
            pattern=DURATION_PATTERN,
            max_length=32,
            rules=[_duration_rule("command", "1s", "24h")],
        ),
    )
    job: str = attrs.field(
        default="1h",
        metadata=doc(
            "Deadline for one whole bootstrap or clean-up run, all steps together (1m to 48h).",
            pattern=DURATION_PATTERN,
            max_length=32,
            rules=[_duration_rule("job", "1m", "48h")],
        ),
    )


@attrs.frozen(kw_only=True)
class ProvisionJob:
    ssh_command: str = attrs.field(
        default="ssh", metadata=doc("ssh command used by the provisioning Job.")
    )
    scp_command: str = attrs.field(
        default="scp", metadata=doc("scp command used by the provisioning Job.")
    )
    job_spec_template: Mapping[str, Any] | None = attrs.field(
        default=None,
        metadata=doc("batch/v1 JobTemplateSpec of the Job that provisions the machine."),
    )


@attrs.frozen(kw_only=True)
class ConnectionSpec:
    """How to reach and log in to a host: shared by RemoteMachine and PooledRemoteMachine."""

    port: int = _port_field("the machine")
    user: str = _user_field("the machine")
    use_sudo: bool = attrs.field(
        default=False, metadata=doc("Run commands through `sudo -n` (for non-root users).")
    )
    commands_as_script: bool = attrs.field(
        default=False,
        metadata=doc("Run the bootstrap commands as one `set -e` script instead of one by one."),
    )
    working_dir: str = attrs.field(
        default="/etc/k0smotron",
        metadata=doc("Directory on the machine used as working directory."),
    )
    ssh_key_ref: SSHKeyRef | None = attrs.field(
        default=None,
        metadata=doc(
            "Secret holding the SSH private key under the data key `value`; the key may be"
            " encrypted (see passphraseRef)."
        ),
    )
    password_ref: SecretKeyRef | None = attrs.field(
        default=None, metadata=doc("Secret key holding a password for SSH password login.")
    )
    sudo_password_ref: SecretKeyRef | None = attrs.field(
        default=None,
        metadata=doc("Secret key holding the sudo password, when sudo asks for one."),
    )
    host_key_policy: HostKeyPolicy | None = attrs.field(
        default=None, metadata=doc(_HOST_KEY_POLICY_DOC)
    )
    bastion: Bastion | None = attrs.field(
        default=None, metadata=doc("Jump host through which the machine is reached.")
    )
    timeouts: Timeouts = attrs.field(
        default=Timeouts(),
        metadata=doc(
            "Connection and command deadlines; each field left out takes its default (the"
            " controller passes exactly these to the SSH runner or the provisioning Job)."
        ),
    )
    max_attempts: int = attrs.field(
        default=5,
        metadata=doc(
            "Bootstrap attempts (whole runs; steps that completed never run again) before the"
            " machine is reported failed.",
            fmt="int32",
            minimum=1,
            maximum=100,
        ),
    )


@object_rules(
    Rule(
        rule=(
            "has(self.sshKeyRef) || has(self.passwordRef) || has(self.provisionJob)"
            " || (has(self.pool) && size(self.pool) > 0)"
        ),
        message=(
            "sshKeyRef is required unless passwordRef or provisionJob is set, or the machine"
            " comes from a pool"
        ),
    )
)
@attrs.frozen(kw_only=True)
class MachineSpecBase(ConnectionSpec):
    """RemoteMachine spec fields common to both versions."""

    pool: str | None = attrs.field(
        default=None,
        metadata=doc(
            "Pool to claim a PooledRemoteMachine from; its connection settings are copied here.",
            max_length=253,
        ),
    )
    provider_id: str | None = attrs.field(
        default=None,
        metadata=doc(
            "Provider ID, `remote-machine://<address>:<port>`, set once provisioned.",
            json_name="providerID",
            min_length=1,
            max_length=512,
        ),
    )
    address: str | None = attrs.field(default=None, metadata=_address_doc("the machine"))
    provision_job: ProvisionJob | None = attrs.field(
        default=None,
        metadata=doc("Provision the machine with a Kubernetes Job running ssh/scp instead."),
    )


@object_rules(
    Rule(
        rule="has(self.sshKeyRef) || has(self.passwordRef)",
        message="sshKeyRef is required unless passwordRef is set",
    )
)
@attrs.frozen(kw_only=True)
class PooledMachineSpecBase(ConnectionSpec):
    """PooledRemoteMachine ``spec.machine`` fields common to both versions."""

    address: str = attrs.field(metadata=_address_doc("the machine"))


# ---------------------------------------------------------------------------------------------
# Conditions and addresses

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


@attrs.frozen(kw_only=True)
class Health:
    state: Literal["Healthy", "Unreachable", "Unknown"] | None = attrs.field(
        default=None, metadata=doc("Outcome of the last probe, Unknown before the first one.")
    )
    reachable: bool | None = attrs.field(
        default=None, metadata=doc("Whether the last probe could log in.")
    )
    last_probe_time: str | None = attrs.field(
        default=None, metadata=doc("When the last probe ran.", fmt="date-time")
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


# ---------------------------------------------------------------------------------------------
# RemoteMachineTemplate


@attrs.frozen(kw_only=True)
class RemoteMachineTemplateResourceSpec:
    pool: str = attrs.field(
        metadata=doc("Pool the machines created from this template claim from.", max_length=253)
    )
    provision_job: ProvisionJob | None = attrs.field(
        default=None,
        metadata=doc("Provision the machines with a Kubernetes Job running ssh/scp instead."),
    )


@attrs.frozen(kw_only=True)
class RemoteMachineTemplateResource:
    metadata: TemplateMeta | None = attrs.field(
        default=None, metadata=doc("Labels and annotations for the created RemoteMachines.")
    )
    spec: RemoteMachineTemplateResourceSpec = attrs.field(
        metadata=doc("Spec of the created RemoteMachines.")
    )


@attrs.frozen(kw_only=True)
class RemoteMachineTemplateSpec:
    template: RemoteMachineTemplateResource = attrs.field(
        metadata=doc("Template of the RemoteMachines to create.")
    )


@attrs.frozen(kw_only=True)
class NodeInfo:
    architecture: str | None = attrs.field(
        default=None, metadata=doc("CPU architecture of the pool's hosts (amd64, arm64, ...).")
    )
    operating_system: str | None = attrs.field(
        default=None, metadata=doc("Operating system of the pool's hosts (linux).")
    )


@attrs.frozen(kw_only=True)
class RemoteMachineTemplateStatus:
    """What the cluster autoscaler reads to scale a MachineDeployment from zero."""

    capacity: Mapping[str, str] | None = attrs.field(
        default=None,
        metadata=doc(
            'Resources of one machine of the pool as quantities (e.g. cpu: "4", memory: 8Gi),'
            " read by the cluster autoscaler to scale from zero."
        ),
    )
    node_info: NodeInfo | None = attrs.field(
        default=None, metadata=doc("Architecture and OS of the pool's machines.")
    )
    available: int | None = attrs.field(
        default=None,
        metadata=doc("Unclaimed healthy machines in the pool.", fmt="int32", minimum=0),
    )
    total: int | None = attrs.field(
        default=None, metadata=doc("Machines in the pool.", fmt="int32", minimum=0)
    )


# ---------------------------------------------------------------------------------------------
# RemoteCluster


@attrs.frozen(kw_only=True)
class APIEndpoint:
    host: str | None = attrs.field(
        default=None,
        metadata=doc("Host name or address the API server is served on.", max_length=512),
    )
    port: int | None = attrs.field(
        default=None,
        metadata=doc("Port the API server is served on.", fmt="int32", minimum=0, maximum=65535),
    )


@attrs.frozen(kw_only=True)
class RemoteClusterSpec:
    control_plane_endpoint: APIEndpoint | None = attrs.field(
        default=None, metadata=doc("Endpoint of the workload cluster's API server.")
    )


@attrs.frozen(kw_only=True)
class RemoteClusterTemplateResource:
    metadata: TemplateMeta | None = attrs.field(
        default=None, metadata=doc("Labels and annotations for the created RemoteClusters.")
    )
    spec: RemoteClusterSpec = attrs.field(metadata=doc("Spec of the created RemoteClusters."))


@attrs.frozen(kw_only=True)
class RemoteClusterTemplateSpec:
    template: RemoteClusterTemplateResource = attrs.field(
        metadata=doc("Template of the RemoteClusters to create.")
    )
