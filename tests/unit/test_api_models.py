"""The typed models: reference-shaped objects round-trip exactly, and bad input is refused.

The fixtures are one set of objects written in both versions, with every field we define, as the
apiserver stores them (defaults applied). test_api_conversion.py checks that each v1beta1 fixture
converts to its v1beta2 twin and back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs
import cattrs
import pytest
import yaml
from hypothesis import given

from capi_remote import api
from capi_remote.api import from_dict, to_dict, v1beta1, v1beta2
from capi_remote.api.crdgen import KINDS
from tests.unit.test_api_strategies import SETTINGS, objects

_CONDITION_V2 = """
- type: Ready
  status: "False"
  observedGeneration: 3
  lastTransitionTime: "2026-08-01T10:00:00Z"
  reason: BootstrapFailed
  message: step 3 exited 1
- type: BootstrapExecSucceeded
  status: "False"
  lastTransitionTime: "2026-08-01T10:00:00Z"
  reason: InternalError
  message: ""
"""
_CONDITION_V1 = """
- type: Ready
  status: "False"
  severity: Error
  lastTransitionTime: "2026-08-01T10:00:00Z"
  reason: InternalError
  message: Check the bootstrap logs for more details
"""
_FINGERPRINT = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
_METADATA = f"""
metadata:
  name: worker-0
  namespace: default
  uid: 7b0c2c7e-2f0a-4b53-9a4e-2a7f2f1f6a01
  resourceVersion: "4711"
  generation: 3
  creationTimestamp: "2026-08-01T09:00:00Z"
  labels: {{cluster.x-k8s.io/cluster-name: demo}}
  annotations:
    remote.infrastructure.cluster.x-k8s.io/host-key-fingerprint: "{_FINGERPRINT}"
  finalizers: [remotemachine.k0smotron.io/finalizer]
  ownerReferences:
  - apiVersion: cluster.x-k8s.io/v1beta2
    kind: Machine
    name: worker-0
    uid: 0c9d1a6e-0000-4000-8000-000000000001
    controller: true
    blockOwnerDeletion: true
  managedFields:
  - manager: capi-remote
    operation: Update
    apiVersion: infrastructure.cluster.x-k8s.io/v1beta2
    time: "2026-08-01T09:00:00Z"
    fieldsType: FieldsV1
    fieldsV1: {{"f:spec": {{}}}}
"""
_CONNECTION = """
  port: 2222
  user: capi
  useSudo: true
  commandsAsScript: true
  workingDir: /var/lib/capi-remote
  sshKeyRef:
    name: worker-0-ssh
    passphraseRef: {name: worker-0-ssh, key: passphrase}
  passwordRef: {name: worker-0-login, key: password}
  sudoPasswordRef: {name: worker-0-login, key: sudo}
  hostKeyPolicy:
    knownHostsRef: {kind: ConfigMap, name: fleet-known-hosts, key: known_hosts}
  bastion:
    address: bastion.example.com
    port: 22
    user: jump
    sshKeyRef: {name: bastion-ssh}
    hostKeyPolicy: {fingerprint: "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"}
  timeouts: {connect: 15s, command: 30m, job: 1h}
  maxAttempts: 3
"""
_MACHINE_SPEC = (
    """
spec:
  pool: workers
  providerID: remote-machine://10.0.0.10:2222
  address: 10.0.0.10
  provisionJob:
    sshCommand: ssh
    scpCommand: scp
    jobSpecTemplate:
      spec:
        template:
          spec:
            restartPolicy: Never
            containers: [{name: provision, image: "alpine:3.20"}]
"""
    + _CONNECTION
)
_MACHINE_STATUS = """
  addresses: [{type: ExternalIP, address: 10.0.0.10}]
  pooledMachineRef: {name: host-10, namespace: default}
  hostKeyFingerprint: "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
  phase: Failed
  bootstrap: {stepsTotal: 7, stepsDone: 2, attempts: 3, lastOutputTail: "Text file busy"}
"""


def _indent(text: str, by: int) -> str:
    return "\n".join(" " * by + line if line else line for line in text.strip("\n").splitlines())


REMOTE_MACHINE_V1BETA2 = f"""
apiVersion: infrastructure.cluster.x-k8s.io/v1beta2
kind: RemoteMachine
{_METADATA}
{_MACHINE_SPEC}
  cleanUpCommands: ["k0s stop", "k0s reset"]
status:
{_MACHINE_STATUS}
  initialization: {{provisioned: false}}
  conditions:
{_indent(_CONDITION_V2, 2)}
  deprecated:
    v1beta1:
      failureReason: CreateError
      failureMessage: bootstrap failed
      conditions:
{_indent(_CONDITION_V1, 6)}
"""

REMOTE_MACHINE_V1BETA1 = f"""
apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
kind: RemoteMachine
{_METADATA}
{_MACHINE_SPEC}
  customCleanUpCommands: ["k0s stop", "k0s reset"]
status:
{_MACHINE_STATUS}
  ready: false
  failureReason: CreateError
  failureMessage: bootstrap failed
  conditions:
{_indent(_CONDITION_V1, 2)}
  v1beta2:
    conditions:
{_indent(_CONDITION_V2, 4)}
"""

_POOLED = """
kind: PooledRemoteMachine
metadata: {{name: host-10, namespace: default}}
spec:
  pool: workers
  claim: {{name: worker-0, namespace: default, uid: 7b0c2c7e-2f0a-4b53-9a4e-2a7f2f1f6a01}}
  machine:
    address: 10.0.0.10
{connection}
    {cleanup}: [reboot]
status:
  reserved: true
  machineRef: {{name: worker-0, namespace: default}}
  health:
    state: Healthy
    reachable: true
    lastProbeTime: "2026-08-01T10:05:00Z"
    message: ok
    facts:
      os: Debian GNU/Linux 12 (bookworm)
      kernel: 6.1.0-40-amd64
      arch: amd64
      cpus: 4
      memory: 8Gi
      hostname: host-10
      addresses: [10.0.0.10, "fd00::10"]
    hostKeyFingerprint: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    bastionHostKeyFingerprint: "SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
"""
POOLED_V1BETA2 = "apiVersion: infrastructure.cluster.x-k8s.io/v1beta2" + _POOLED.format(
    connection=_indent(_CONNECTION, 2), cleanup="cleanUpCommands"
)
POOLED_V1BETA1 = "apiVersion: infrastructure.cluster.x-k8s.io/v1beta1" + _POOLED.format(
    connection=_indent(_CONNECTION, 2), cleanup="customCleanUpCommands"
)

_MACHINE_TEMPLATE = """
kind: RemoteMachineTemplate
metadata: {name: workers, namespace: default}
spec:
  template:
    metadata:
      labels: {node-role: worker}
      annotations: {note: from-template}
    spec:
      pool: workers
      provisionJob: {sshCommand: ssh, scpCommand: scp, jobSpecTemplate: {spec: {}}}
status:
  capacity: {cpu: "4", memory: 8Gi}
  nodeInfo: {architecture: amd64, operatingSystem: linux}
  available: 3
  total: 5
"""
MACHINE_TEMPLATE_V1BETA2 = "apiVersion: infrastructure.cluster.x-k8s.io/v1beta2" + _MACHINE_TEMPLATE
MACHINE_TEMPLATE_V1BETA1 = "apiVersion: infrastructure.cluster.x-k8s.io/v1beta1" + _MACHINE_TEMPLATE

_CLUSTER = """
metadata: {name: demo, namespace: default}
spec:
  controlPlaneEndpoint: {host: 10.0.0.100, port: 6443}
"""
CLUSTER_V1BETA2 = f"""
apiVersion: infrastructure.cluster.x-k8s.io/v1beta2
kind: RemoteCluster
{_CLUSTER}
status:
  initialization: {{provisioned: true}}
  conditions:
{_indent(_CONDITION_V2, 2)}
  deprecated:
    v1beta1:
      failureReason: CreateError
      failureMessage: no endpoint
      conditions:
{_indent(_CONDITION_V1, 6)}
"""
CLUSTER_V1BETA1 = f"""
apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
kind: RemoteCluster
{_CLUSTER}
status:
  ready: true
  failureReason: CreateError
  failureMessage: no endpoint
  conditions:
{_indent(_CONDITION_V1, 2)}
  v1beta2:
    conditions:
{_indent(_CONDITION_V2, 4)}
"""

_CLUSTER_TEMPLATE = """
kind: RemoteClusterTemplate
metadata: {name: demo, namespace: default}
spec:
  template:
    metadata: {labels: {a: b}, annotations: {c: d}}
    spec:
      controlPlaneEndpoint: {host: cp.example.com, port: 6443}
"""
CLUSTER_TEMPLATE_V1BETA2 = "apiVersion: infrastructure.cluster.x-k8s.io/v1beta2" + _CLUSTER_TEMPLATE
CLUSTER_TEMPLATE_V1BETA1 = "apiVersion: infrastructure.cluster.x-k8s.io/v1beta1" + _CLUSTER_TEMPLATE


class Fixture(NamedTuple):
    """The same object written in both versions, and the models that read each."""

    texts: dict[str, str]
    models: dict[str, type]

    def load(self, version: str) -> dict[str, Any]:
        return load(self.texts[version])


def _fixture(v1: str, v2: str, model_v1: type, model_v2: type) -> Fixture:
    return Fixture({"v1beta1": v1, "v1beta2": v2}, {"v1beta1": model_v1, "v1beta2": model_v2})


FIXTURES = [
    _fixture(
        REMOTE_MACHINE_V1BETA1, REMOTE_MACHINE_V1BETA2, v1beta1.RemoteMachine, v1beta2.RemoteMachine
    ),
    _fixture(
        POOLED_V1BETA1, POOLED_V1BETA2, v1beta1.PooledRemoteMachine, v1beta2.PooledRemoteMachine
    ),
    _fixture(
        MACHINE_TEMPLATE_V1BETA1,
        MACHINE_TEMPLATE_V1BETA2,
        v1beta1.RemoteMachineTemplate,
        v1beta2.RemoteMachineTemplate,
    ),
    _fixture(CLUSTER_V1BETA1, CLUSTER_V1BETA2, v1beta1.RemoteCluster, v1beta2.RemoteCluster),
    _fixture(
        CLUSTER_TEMPLATE_V1BETA1,
        CLUSTER_TEMPLATE_V1BETA2,
        v1beta1.RemoteClusterTemplate,
        v1beta2.RemoteClusterTemplate,
    ),
]
FIXTURE_IDS = [f.models["v1beta2"].__name__ for f in FIXTURES]


def load(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def _unset_fields(obj: Any, path: str = "") -> list[str]:
    """Paths of model fields left unset (None) anywhere in ``obj``."""
    if not attrs.has(type(obj)):
        if isinstance(obj, tuple):
            return [p for item in obj for p in _unset_fields(item, path + "[]")]
        return []
    missing = []
    for a in attrs.fields(type(obj)):
        value = getattr(obj, a.name)
        if value is None:
            missing.append(f"{path}.{a.name}")
        else:
            missing += _unset_fields(value, f"{path}.{a.name}")
    return missing


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_fixture_round_trips_exactly(fixture: Fixture, version: str) -> None:
    data = fixture.load(version)
    obj: Any = from_dict(fixture.models[version], data, strict=True)
    assert to_dict(obj) == data


# Alternatives that a single object cannot all use: one host key policy member per policy (the
# machine uses knownHostsRef, its bastion a fingerprint), and an optional field of one condition.
_ALTERNATIVES = (
    "host_key_policy.fingerprint",
    "host_key_policy.known_hosts_ref",
    "host_key_policy.trust_on_first_use",
    "host_key_policy.insecure_skip_verification",
    "bastion.ssh_key_ref.passphrase_ref",
    "conditions[].observed_generation",
)


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_fixtures_set_every_field(fixture: Fixture, version: str) -> None:
    obj: Any = from_dict(fixture.models[version], fixture.load(version), strict=True)
    unset = [
        path
        for path in _unset_fields(obj)
        if not path.startswith(".metadata.") and not path.endswith(_ALTERNATIVES)
    ]
    assert unset == []


def test_defaults_match_the_reference() -> None:
    spec = v1beta2.RemoteMachineSpec(address="10.0.0.1")
    assert (spec.port, spec.user, spec.use_sudo, spec.commands_as_script, spec.working_dir) == (
        22,
        "root",
        False,
        False,
        "/etc/k0smotron",
    )
    assert spec.max_attempts == 5
    assert spec.host_key_policy is None  # absent: verification still required
    job = api.ProvisionJob()
    assert (job.ssh_command, job.scp_command) == ("ssh", "scp")
    assert api.Bastion(address="b").port == 22
    assert api.KnownHostsRef(kind="Secret", name="kh").key == "known_hosts"
    assert api.Timeouts() == api.Timeouts(connect="15s", command="30m", job="1h")


def test_unset_optional_fields_are_omitted_and_defaults_written() -> None:
    obj = v1beta2.RemoteMachine(
        metadata=api.ObjectMeta(name="m", namespace="ns"),
        spec=v1beta2.RemoteMachineSpec(address="10.0.0.1", ssh_key_ref=api.SSHKeyRef(name="k")),
    )
    assert to_dict(obj) == {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
        "kind": "RemoteMachine",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "address": "10.0.0.1",
            "sshKeyRef": {"name": "k"},
            "port": 22,
            "user": "root",
            "useSudo": False,
            "commandsAsScript": False,
            "workingDir": "/etc/k0smotron",
            "timeouts": {"connect": "15s", "command": "30m", "job": "1h"},
            "maxAttempts": 5,
        },
    }


def test_models_are_frozen() -> None:
    spec = v1beta2.RemoteMachineSpec(address="10.0.0.1")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.port = 2222  # type: ignore[misc]
    assert attrs.evolve(spec, port=2222).port == 2222


def test_free_form_json_is_copied_not_aliased() -> None:
    data = load(REMOTE_MACHINE_V1BETA2)
    obj = from_dict(v1beta2.RemoteMachine, data)
    assert obj.spec.provision_job is not None
    assert obj.spec.provision_job.job_spec_template is not None
    data["spec"]["provisionJob"]["jobSpecTemplate"]["spec"] = "changed"
    assert obj.spec.provision_job.job_spec_template["spec"] != "changed"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "port"), "22"),  # no coercion of strings to numbers
        (("spec", "useSudo"), "false"),  # nor of strings to booleans
        (("spec", "port"), True),  # a bool is not an int
        (("spec", "hostKeyPolicy", "knownHostsRef", "kind"), "Pod"),  # enum
        (("status", "conditions"), [{"type": "Ready"}]),  # required fields
    ],
)
def test_bad_values_are_refused(path: tuple[str, ...], value: Any) -> None:
    data = load(REMOTE_MACHINE_V1BETA2)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(cattrs.BaseValidationError):
        from_dict(v1beta2.RemoteMachine, data)


def test_version_mismatch_is_refused() -> None:
    with pytest.raises(cattrs.BaseValidationError):
        from_dict(v1beta2.RemoteMachine, load(REMOTE_MACHINE_V1BETA1))


def test_unknown_keys_are_ignored_unless_strict() -> None:
    data = load(REMOTE_MACHINE_V1BETA2)
    data["spec"]["fromTheFuture"] = 1
    assert "fromTheFuture" not in to_dict(from_dict(v1beta2.RemoteMachine, data))["spec"]
    with pytest.raises(cattrs.BaseValidationError):
        from_dict(v1beta2.RemoteMachine, data, strict=True)


def test_parse_duration() -> None:
    assert api.parse_duration("1h30m").total_seconds() == 5400
    assert api.parse_duration("1.5s").total_seconds() == 1.5
    assert api.parse_duration("250ms").total_seconds() == 0.25
    for bad in ("", "5", "5 minutes", "1d", "-1s"):
        with pytest.raises(ValueError, match="invalid duration"):
            api.parse_duration(bad)


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
def test_generated_objects_round_trip_exactly(kind: Any, version: str) -> None:
    model = kind.models[version]

    @SETTINGS
    @given(obj=objects(kind, version))
    def check(obj: dict[str, Any]) -> None:
        assert to_dict(from_dict(model, obj, strict=True)) == obj

    check()


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_hub_models_are_reexported(fixture: Fixture) -> None:
    model = fixture.models["v1beta2"]
    assert getattr(api, model.__name__) is model
