"""provisionJob mode, the Job's side: a batch/v1 Job (not the controller's SSH runner) runs a
RemoteMachine's bootstrap with ``ssh``/``scp``. This module renders that Job and its Secret.

- One Job per attempt, named ``<machine>-provision-<attempt>`` and owned by the RemoteMachine;
  its attempt and the RemoteMachine generation it was made for are annotations.
- Its inputs live in an immutable Secret (``<machine>-provision-<attempt>-<content hash>``, also
  owned by the RemoteMachine) mounted into the Job's container: the SSH private key, the host
  key material, the sudo password if any, and the bootstrap as one host-side script
  (:func:`capi_remote.ssh.jobscript.host_script`) that keeps the runner's exactly-once markers.
- The Job's spec holds no secret: no key, password or bootstrap data in its command, arguments
  or environment.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from capi_remote.api import GROUP
from capi_remote.resources import INFRA_VERSION
from capi_remote.ssh import HostKeyPolicy, Target, jobscript
from capi_remote.ssh.auth import load_private_key
from reconcilers.common import CLUSTER_NAME_LABEL
from reconcilers.remotemachine.jobtemplate import SERVICE_ACCOUNT, InvalidProvisionJob, check

JSONDict = dict[str, Any]

MACHINE_UID_LABEL = "remote.infrastructure.cluster.x-k8s.io/machine-uid"
ATTEMPT_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/attempt"
GENERATION_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/generation"
STEPS_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/steps"
CONTAINER_NAME = "provision"
VOLUME_NAME = "capi-remote-provision"
#: The Job's Secret volume: readable by root or the pod's fsGroup only (the container copies
#: the key to a private file: ssh refuses group-readable keys).
SECRET_MODE = 0o440


# -- names -------------------------------------------------------------------------------------


def _base(name: str) -> str:
    """A prefix of at most 40 characters that stays unique for long names."""
    if len(name) <= 40:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[:33].rstrip('-.')}-{digest}"


def job_name(rm_name: str, attempt: int) -> str:
    """Deterministic: ``<machine>-provision-<attempt>`` (a valid label value, ≤ 63 chars)."""
    return f"{_base(rm_name)}-provision-{attempt}"


# -- inputs ------------------------------------------------------------------------------------


@attrs.frozen
class JobInputs:
    """Everything the Job and its Secret are made from (secrets stay out of ``repr``)."""

    namespace: str
    machine_name: str
    machine_uid: str
    generation: int
    attempt: int
    address: str
    port: int
    user: str
    privilege: str  # root | sudo | sudo-password
    host_keys: str  # known-hosts | pinned | trust-on-first-use | insecure | command
    ssh_command: str
    scp_command: str
    connect_timeout: int
    job_timeout: int
    template: JSONDict = attrs.field(repr=False)
    #: None: the Job's own commands log in (provisionJob without sshKeyRef), no key is mounted.
    private_key: str | None = attrs.field(repr=False)
    host_script: bytes = attrs.field(repr=False)
    known_hosts: str = attrs.field(default="", repr=False)
    fingerprints: tuple[str, ...] = ()
    sudo_password: str | None = attrs.field(default=None, repr=False)
    cluster_name: str | None = None
    steps: int = 0  # of the bootstrap plan

    @property
    def job_name(self) -> str:
        return job_name(self.machine_name, self.attempt)

    def owner_reference(self) -> JSONDict:
        return {
            "apiVersion": f"{GROUP}/{INFRA_VERSION}",
            "kind": "RemoteMachine",
            "name": self.machine_name,
            "uid": self.machine_uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def openssh_key(text: str, passphrase: str | None) -> str:
    """The private key as unencrypted OpenSSH text: BatchMode ssh cannot ask for a passphrase.
    Raises InvalidCredentials with the runner's message when it cannot be read."""
    load_private_key(text, passphrase)  # the runner's checks and messages
    data = text.encode()
    password = passphrase.encode() if passphrase else None
    key: PrivateKeyTypes
    try:
        key = serialization.load_ssh_private_key(data, password=password)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=password)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def host_key_material(
    target: Target, known_hosts_text: str | None
) -> tuple[str, str, tuple[str, ...]]:
    """``(mode, known_hosts, fingerprints)`` for the container from the runner's policy."""
    return host_key_policy_material(target.host_key, known_hosts_text)


def host_key_policy_material(
    policy: HostKeyPolicy, known_hosts_text: str | None
) -> tuple[str, str, tuple[str, ...]]:
    """:func:`host_key_material` of a policy alone (a Job whose commands log in themselves has
    no runner target)."""
    if policy.mode == "insecure":
        return "insecure", "", ()
    if policy.mode == "pinned" or (policy.mode == "trust_on_first_use" and policy.fingerprints):
        return "pinned", "", policy.fingerprints
    if policy.mode == "trust_on_first_use":
        return "trust-on-first-use", "", ()
    return "known-hosts", known_hosts_text or "", ()


def container(template: JSONDict) -> JSONDict:
    """The template's container, after the allow-list (jobtemplate.py) accepted the template."""
    check(template)
    containers = ((template.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []
    if not containers:
        raise InvalidProvisionJob(
            "spec.provisionJob.jobSpecTemplate needs a container with an image that has sh,"
            " ssh and scp (spec.template.spec.containers)"
        )
    chosen = containers[0]  # the only one (the allow-list refuses more)
    if not chosen.get("image"):
        raise InvalidProvisionJob(
            f"container {chosen.get('name') or CONTAINER_NAME!r} of"
            " spec.provisionJob.jobSpecTemplate has no image"
        )
    return dict(chosen)


def secret_data(inputs: JobInputs) -> dict[str, bytes]:
    data = {
        jobscript.KEY_KNOWN_HOSTS: inputs.known_hosts.encode(),
        jobscript.KEY_FINGERPRINTS: "".join(f"{fp}\n" for fp in inputs.fingerprints).encode(),
        jobscript.KEY_HOST_SCRIPT: inputs.host_script,
    }
    if inputs.private_key is not None:
        data[jobscript.KEY_PRIVATE_KEY] = inputs.private_key.encode()
    if inputs.sudo_password is not None:
        data[jobscript.KEY_SUDO_PASSWORD] = inputs.sudo_password.encode() + b"\n"
    return data


def _labels(inputs: JobInputs, extra: JSONDict | None = None) -> dict[str, str]:
    labels = {str(k): str(v) for k, v in (extra or {}).items()}
    labels[MACHINE_UID_LABEL] = inputs.machine_uid
    if inputs.cluster_name:
        labels[CLUSTER_NAME_LABEL] = inputs.cluster_name
    return labels


def render_secret(inputs: JobInputs) -> JSONDict:
    """The immutable Secret the Job mounts; its name carries a hash of its content."""
    data = secret_data(inputs)
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(key.encode() + b"\0" + hashlib.sha256(data[key]).digest())
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{inputs.job_name}-{digest.hexdigest()[:8]}",
            "namespace": inputs.namespace,
            "labels": _labels(inputs),
            "ownerReferences": [inputs.owner_reference()],
        },
        "type": "Opaque",
        "immutable": True,
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }


def _env(inputs: JobInputs) -> list[JSONDict]:
    """Plain, non-secret settings of the container script."""
    values = {
        "CAPI_REMOTE_ADDRESS": inputs.address,
        "CAPI_REMOTE_PORT": str(inputs.port),
        "CAPI_REMOTE_USER": inputs.user,
        "CAPI_REMOTE_PRIVILEGE": inputs.privilege,
        "CAPI_REMOTE_HOST_KEYS": inputs.host_keys,
        "CAPI_REMOTE_SSH": inputs.ssh_command,
        "CAPI_REMOTE_SCP": inputs.scp_command,
        "CAPI_REMOTE_CONNECT_TIMEOUT": str(inputs.connect_timeout),
        "CAPI_REMOTE_MACHINE_UID": inputs.machine_uid,
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def render_job(inputs: JobInputs, secret_name: str) -> JSONDict:
    """The Job: the user's jobSpecTemplate (only allow-listed fields), with our container
    command, Secret volume, service account, owner, labels and bounds. Raises
    InvalidProvisionJob when the template asks for more, or has no usable container."""
    template = copy.deepcopy(inputs.template)
    chosen = container(template)
    meta = template.get("metadata") or {}
    spec: JSONDict = copy.deepcopy(template.get("spec") or {})
    # The Job object is what the controller reads the outcome from: it must not vanish by TTL,
    # and the Job controller picks its own selector.
    for field in ("ttlSecondsAfterFinished", "selector", "manualSelector", "suspend"):
        spec.pop(field, None)
    spec.setdefault("backoffLimit", 0)  # attempts are the controller's, like the runner's
    spec.setdefault("activeDeadlineSeconds", inputs.job_timeout)
    pod_template = spec.setdefault("template", {})
    pod_meta = pod_template.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), MACHINE_UID_LABEL: inputs.machine_uid}
    pod_spec = pod_template.setdefault("spec", {})
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        pod_spec["restartPolicy"] = "Never"
    pod_spec["serviceAccountName"] = SERVICE_ACCOUNT
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["volumes"] = [
        {"name": VOLUME_NAME, "secret": {"secretName": secret_name, "defaultMode": SECRET_MODE}}
    ]
    ours = {k: v for k, v in chosen.items() if k not in ("command", "args")}
    ours["name"] = CONTAINER_NAME  # where jobread looks for the outcome
    ours["command"] = ["/bin/sh", "-c", jobscript.CONTAINER_SCRIPT, jobscript.SCRIPT_NAME]
    env = [
        e for e in chosen.get("env") or [] if not str(e.get("name", "")).startswith("CAPI_REMOTE_")
    ]
    ours["env"] = env + _env(inputs)
    ours["volumeMounts"] = [
        {"name": VOLUME_NAME, "mountPath": jobscript.SECRET_MOUNT, "readOnly": True}
    ]
    ours["terminationMessagePath"] = "/dev/termination-log"
    ours["terminationMessagePolicy"] = "FallbackToLogsOnError"
    pod_spec["containers"] = [ours]
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    annotations[ATTEMPT_ANNOTATION] = str(inputs.attempt)
    annotations[GENERATION_ANNOTATION] = str(inputs.generation)
    annotations[STEPS_ANNOTATION] = str(inputs.steps)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": inputs.job_name,
            "namespace": inputs.namespace,
            "labels": _labels(inputs, meta.get("labels")),
            "annotations": annotations,
            "ownerReferences": [inputs.owner_reference()],
        },
        "spec": spec,
    }
