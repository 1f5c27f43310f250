"""How a host is reached: references to Secrets and ConfigMaps, host-key policy, bastion,
timeouts, provisionJob, and the connection fields shared by RemoteMachine and
PooledRemoteMachine specs (both API versions)."""

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from capi_remote.api.common import (
    BASTION_HOST_KEY_FINGERPRINT_ANNOTATION,
    DURATION_PATTERN,
    FINGERPRINT_PATTERN,
    HOST_KEY_FINGERPRINT_ANNOTATION,
    address_doc,
    duration_rule,
    port_field,
    user_field,
)
from capi_remote.api.fields import Rule, doc, object_rules


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
    " the object's conditions say so (in provisionJob mode without sshKeyRef, the Job's own ssh"
    " and scp commands verify the host instead)."
)


@attrs.frozen(kw_only=True)
class Bastion:
    address: str = attrs.field(metadata=address_doc("the bastion (jump) host"))
    port: int = port_field("the bastion")
    user: str = user_field("the bastion")
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
            rules=[duration_rule("connect", "1s", "10m")],
        ),
    )
    command: str = attrs.field(
        default="30m",
        metadata=doc(
            "Deadline for one remote command step (1s to 24h); file steps use the"
            " controller's default.",
            pattern=DURATION_PATTERN,
            max_length=32,
            rules=[duration_rule("command", "1s", "24h")],
        ),
    )
    job: str = attrs.field(
        default="1h",
        metadata=doc(
            "Deadline for one whole bootstrap or clean-up run, all steps together (1m to 48h).",
            pattern=DURATION_PATTERN,
            max_length=32,
            rules=[duration_rule("job", "1m", "48h")],
        ),
    )


@attrs.frozen(kw_only=True)
class ProvisionJob:
    ssh_command: str = attrs.field(
        default="ssh",
        metadata=doc(
            "ssh command used by the provisioning Job, read as shell words (quotes work). Without"
            " sshKeyRef it logs in by itself (e.g. `tsh -i <identity> --proxy <proxy> ssh`)."
        ),
    )
    scp_command: str = attrs.field(
        default="scp",
        metadata=doc("scp command used by the provisioning Job, read like sshCommand."),
    )
    job_spec_template: Mapping[str, Any] | None = attrs.field(
        default=None,
        metadata=doc("batch/v1 JobTemplateSpec of the Job that provisions the machine."),
    )


@attrs.frozen(kw_only=True)
class ConnectionSpec:
    """How to reach and log in to a host: shared by RemoteMachine and PooledRemoteMachine."""

    port: int = port_field("the machine")
    user: str = user_field("the machine")
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
        default=None,
        metadata=doc(
            "Secret key holding a password for SSH password login. Sent only to a host whose key"
            " is verified (knownHostsRef, fingerprint, or a pinned trust-on-first-use key),"
            " unless the controller runs with --allow-secrets-to-unverified-hosts."
        ),
    )
    sudo_password_ref: SecretKeyRef | None = attrs.field(
        default=None,
        metadata=doc(
            "Secret key holding the sudo password, when sudo asks for one. Sent only to a host"
            " whose key is verified, like passwordRef."
        ),
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
            "Provider ID, `remote-machine://<address>:<port>`, set with the finalizer just"
            " before the first bootstrap starts; Cluster API reads it once provisioned.",
            json_name="providerID",
            min_length=1,
            max_length=512,
        ),
    )
    address: str | None = attrs.field(default=None, metadata=address_doc("the machine"))
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

    address: str = attrs.field(metadata=address_doc("the machine"))
