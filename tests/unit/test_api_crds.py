"""The generated CRDs and API reference: current, structural, and carrying what the brief fixes.

Applying them to a real apiserver (which also compiles the CEL rules) is the integration tests'
job; here the rules are checked as text and their regexes and bounds are exercised in Python.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_remote.api import generate, parse_duration
from capi_remote.api.__main__ import main
from capi_remote.api.crdgen import KINDS, Kind, crd

ROOT = Path(__file__).resolve().parents[2]
BY_KIND = {k.kind: k for k in KINDS}


def _versions(kind: Kind) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in crd(kind)["spec"]["versions"]}


def _root(kind: str, version: str) -> dict[str, Any]:
    schema = _versions(BY_KIND[kind])[version]["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _node(kind: str, version: str, path: str) -> dict[str, Any]:
    return dict(_walk(_root(kind, version)))[path]


ALL_SCHEMAS = [(k.kind, v) for k in KINDS for v in ("v1beta1", "v1beta2")]
IDS = [f"{k}-{v}" for k, v in ALL_SCHEMAS]


def test_generated_files_are_current() -> None:
    assert generate.stale(ROOT) == [], "run `make manifests`"


def test_cli_generate_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--root", str(tmp_path)]) == 1
    assert "stale: manifests/crds/" in capsys.readouterr().err
    assert main(["generate", "--root", str(tmp_path)]) == 0
    assert main(["check", "--root", str(tmp_path)]) == 0
    (tmp_path / generate.REFERENCE).write_text("edited\n")
    assert main(["check", "--root", str(tmp_path)]) == 1


def test_crd_files_are_plain_yaml_documents() -> None:
    for kind in KINDS:
        text = (ROOT / generate.CRD_DIR / kind.file_name).read_text()
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
        assert documents == [crd(kind)]


@pytest.mark.parametrize(("kind", "version"), ALL_SCHEMAS, ids=IDS)
def test_schema_is_structural(kind: str, version: str) -> None:
    for path, node in _walk(_root(kind, version)):
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path.endswith(".provisionJob.jobSpecTemplate"), path
        if node["type"] == "object" and path != ".metadata":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), f"{path} would prune everything"
        if path not in ("", ".metadata") and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
        for name in node.get("required", []):
            assert name in node["properties"], (path, name)
    assert _root(kind, version)["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize(("kind", "version"), ALL_SCHEMAS, ids=IDS)
def test_defaults_satisfy_their_schema(kind: str, version: str) -> None:
    for path, node in _walk(_root(kind, version)):
        if "default" not in node:
            continue
        value = node["default"]
        if node["type"] == "object":  # the defaults of its fields, so both ways agree
            fields = node["properties"].items()
            assert value == {k: f["default"] for k, f in fields if "default" in f}, path
            continue
        expected = {"string": str, "integer": int, "boolean": bool}[node["type"]]
        assert type(value) is expected, path
        assert node.get("minimum", value) <= value if expected is int else True
        assert value <= node.get("maximum", value) if expected is int else True
        if "pattern" in node:
            assert re.fullmatch(node["pattern"], str(value)), path
        if "enum" in node:
            assert value in node["enum"], path


_CONNECTION_DEFAULTS = {
    "port": 22,
    "user": "root",
    "workingDir": "/etc/k0smotron",
    "useSudo": False,
    "commandsAsScript": False,
    "maxAttempts": 5,
    "bastion.port": 22,
    "bastion.user": "root",
    "timeouts": {"connect": "15s", "command": "30m", "job": "1h"},
    "timeouts.connect": "15s",
    "timeouts.command": "30m",
    "timeouts.job": "1h",
    "hostKeyPolicy.knownHostsRef.key": "known_hosts",
}
_JOB_DEFAULTS = {"provisionJob.sshCommand": "ssh", "provisionJob.scpCommand": "scp"}


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
@pytest.mark.parametrize(
    ("kind", "prefix", "expected"),
    [
        ("RemoteMachine", ".spec.", {**_CONNECTION_DEFAULTS, **_JOB_DEFAULTS}),
        ("PooledRemoteMachine", ".spec.machine.", _CONNECTION_DEFAULTS),
        ("RemoteMachineTemplate", ".spec.template.spec.", _JOB_DEFAULTS),
    ],
)
def test_reference_defaults(kind: str, prefix: str, expected: dict[str, Any], version: str) -> None:
    for path, value in expected.items():
        assert _node(kind, version, prefix + path)["default"] == value, path


def test_only_intended_fields_are_required() -> None:
    assert _root("RemoteMachine", "v1beta2")["required"] == ["spec"]
    assert "required" not in _node("RemoteMachine", "v1beta2", ".spec")
    assert _node("PooledRemoteMachine", "v1beta2", ".spec")["required"] == ["machine", "pool"]
    assert _node("PooledRemoteMachine", "v1beta2", ".spec.machine")["required"] == ["address"]
    assert _node("RemoteMachineTemplate", "v1beta1", ".spec.template.spec")["required"] == ["pool"]
    assert "required" not in _node("RemoteCluster", "v1beta1", ".status")
    assert _node("RemoteCluster", "v1beta1", ".status.ready")["default"] is False


def test_ports_are_bounded() -> None:
    for kind, path in [
        ("RemoteMachine", ".spec.port"),
        ("RemoteMachine", ".spec.bastion.port"),
        ("PooledRemoteMachine", ".spec.machine.port"),
        ("PooledRemoteMachine", ".spec.machine.bastion.port"),
    ]:
        node = _node(kind, "v1beta2", path)
        assert (node["minimum"], node["maximum"], node["format"]) == (1, 65535, "int32")


UPSTREAM_CONDITION = {
    "description": "Condition contains details for one aspect of the current state of this API"
    " Resource.",
    "properties": {
        "lastTransitionTime": {
            "description": "lastTransitionTime is the last time the condition transitioned from"
            " one status to another.\nThis should be when the underlying condition changed.  If"
            " that is not known, then using the time when the API field changed is acceptable.",
            "format": "date-time",
            "type": "string",
        },
        "message": {
            "description": "message is a human readable message indicating details about the"
            " transition.\nThis may be an empty string.",
            "maxLength": 32768,
            "type": "string",
        },
        "observedGeneration": {
            "description": "observedGeneration represents the .metadata.generation that the"
            " condition was set based upon.\nFor instance, if .metadata.generation is currently"
            " 12, but the .status.conditions[x].observedGeneration is 9, the condition is out of"
            " date\nwith respect to the current state of the instance.",
            "format": "int64",
            "minimum": 0,
            "type": "integer",
        },
        "reason": {
            "description": "reason contains a programmatic identifier indicating the reason for"
            " the condition's last transition.\nProducers of specific condition types may define"
            " expected values and meanings for this field,\nand whether the values are considered"
            " a guaranteed API.\nThe value should be a CamelCase string.\nThis field may not be"
            " empty.",
            "maxLength": 1024,
            "minLength": 1,
            "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            "type": "string",
        },
        "status": {
            "description": "status of the condition, one of True, False, Unknown.",
            "enum": ["True", "False", "Unknown"],
            "type": "string",
        },
        "type": {
            "description": "type of condition in CamelCase or in foo.example.com/CamelCase.",
            "maxLength": 316,
            "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
            "type": "string",
        },
    },
    "required": ["lastTransitionTime", "message", "reason", "status", "type"],
    "type": "object",
}


@pytest.mark.parametrize(
    ("kind", "version", "path"),
    [
        ("RemoteMachine", "v1beta2", ".status.conditions"),
        ("RemoteMachine", "v1beta1", ".status.v1beta2.conditions"),
        ("RemoteCluster", "v1beta2", ".status.conditions"),
        ("RemoteCluster", "v1beta1", ".status.v1beta2.conditions"),
    ],
)
def test_metav1_conditions_are_upstream(kind: str, version: str, path: str) -> None:
    node = _node(kind, version, path)
    assert node["items"] == UPSTREAM_CONDITION
    assert node["x-kubernetes-list-type"] == "map"
    assert node["x-kubernetes-list-map-keys"] == ["type"]


def test_v1beta1_conditions_have_cluster_api_shape() -> None:
    item = _node("RemoteMachine", "v1beta1", ".status.conditions[]")
    assert set(item["properties"]) == {
        "type",
        "status",
        "severity",
        "reason",
        "message",
        "lastTransitionTime",
    }
    assert item["required"] == ["lastTransitionTime", "status", "type"]
    assert item == _node("RemoteMachine", "v1beta2", ".status.deprecated.v1beta1.conditions[]")


def _rules(kind: str, version: str) -> dict[str, list[tuple[str, str]]]:
    return {
        path: [(r["rule"], r["message"]) for r in node["x-kubernetes-validations"]]
        for path, node in _walk(_root(kind, version))
        if "x-kubernetes-validations" in node
    }


DNS = (
    "^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?([.][A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
ADDRESS = (
    f"isIP(self) || (self.matches('{DNS}') && !self.matches('^[0-9.]+$'))",
    "address must be an IPv4/IPv6 address or a DNS name",
)
HOST_KEY_POLICY = (
    "(has(self.knownHostsRef) ? 1 : 0) + (has(self.fingerprint) ? 1 : 0)"
    " + ((has(self.trustOnFirstUse) && self.trustOnFirstUse) ? 1 : 0)"
    " + ((has(self.insecureSkipVerification) && self.insecureSkipVerification) ? 1 : 0) <= 1",
    "set at most one of knownHostsRef, fingerprint, trustOnFirstUse, insecureSkipVerification",
)


def _duration(name: str, low: str, high: str) -> tuple[str, str]:
    return (
        "!self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$')"
        f" || (duration(self) >= duration('{low}') && duration(self) <= duration('{high}'))",
        f"{name} must be between {low} and {high}",
    )


def _connection_rules(prefix: str) -> dict[str, list[tuple[str, str]]]:
    return {
        f"{prefix}.address": [ADDRESS],
        f"{prefix}.bastion.address": [ADDRESS],
        f"{prefix}.hostKeyPolicy": [HOST_KEY_POLICY],
        f"{prefix}.bastion.hostKeyPolicy": [HOST_KEY_POLICY],
        f"{prefix}.timeouts.connect": [_duration("connect", "1s", "10m")],
        f"{prefix}.timeouts.command": [_duration("command", "1s", "24h")],
        f"{prefix}.timeouts.job": [_duration("job", "1m", "48h")],
    }


@pytest.mark.parametrize("version", ["v1beta1", "v1beta2"])
def test_cel_rules_are_exactly_these(version: str) -> None:
    assert _rules("RemoteMachine", version) == {
        ".spec": [
            (
                "has(self.sshKeyRef) || has(self.passwordRef) || has(self.provisionJob)"
                " || (has(self.pool) && size(self.pool) > 0)",
                "sshKeyRef is required unless passwordRef or provisionJob is set, or the machine"
                " comes from a pool",
            )
        ],
        **_connection_rules(".spec"),
    }
    assert _rules("PooledRemoteMachine", version) == {
        ".spec.claim": [
            (
                "self.name == oldSelf.name && self.__namespace__ == oldSelf.__namespace__",
                "spec.claim can be set when empty or cleared, but not moved to another claimant;"
                " release the machine first",
            )
        ],
        ".spec.machine": [
            (
                "has(self.sshKeyRef) || has(self.passwordRef)",
                "sshKeyRef is required unless passwordRef is set",
            )
        ],
        **_connection_rules(".spec.machine"),
    }
    for kind in ("RemoteMachineTemplate", "RemoteCluster", "RemoteClusterTemplate"):
        assert _rules(kind, version) == {}


def test_cel_rules_are_well_formed() -> None:
    """Balanced brackets and quotes, and no backslashes (CEL would read them as escapes)."""
    for kind, version in ALL_SCHEMAS:
        for rules in _rules(kind, version).values():
            for rule, _ in rules:
                assert "\\" not in rule
                assert rule.count("'") % 2 == 0
                outside = re.sub(r"'[^']*'", "''", rule)
                for open_, close in ("()", "[]", "{}"):
                    assert outside.count(open_) == outside.count(close), rule


def _address_ok(value: str) -> bool:
    """The address rule evaluated in Python: isIP() via ipaddress, matches() via re."""
    rule = _rules("RemoteMachine", "v1beta2")[".spec.address"][0][0]
    dns, numeric = re.findall(r"matches\('([^']*)'\)", rule)
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(re.search(dns, value)) and not re.search(numeric, value)


@pytest.mark.parametrize(
    "value",
    ["10.0.0.1", "::1", "fe80::1", "2001:db8::5", "host.example.com", "Node-1", "a", "x" * 63],
)
def test_address_rule_accepts(value: str) -> None:
    assert _address_ok(value)


@pytest.mark.parametrize(
    "value", ["999.1.1.1", "1.2.3", "bad_host", "-bad", "bad-", "a..b", "10.0.0.1:22", "x" * 64]
)
def test_address_rule_rejects(value: str) -> None:
    assert not _address_ok(value)


@pytest.mark.parametrize(
    ("field", "low", "high", "default"),
    [("connect", "1s", "10m", "15s"), ("command", "1s", "24h", "30m"), ("job", "1m", "48h", "1h")],
)
def test_timeout_defaults_are_in_range(field: str, low: str, high: str, default: str) -> None:
    node = _node("RemoteMachine", "v1beta2", f".spec.timeouts.{field}")
    assert node["default"] == default
    assert parse_duration(low) <= parse_duration(default) <= parse_duration(high)
    assert node["maxLength"] == 32  # bounds the cost of the CEL rule


def test_fingerprint_pattern() -> None:
    pattern = _node("RemoteMachine", "v1beta2", ".spec.hostKeyPolicy.fingerprint")["pattern"]
    assert re.fullmatch(pattern, "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s")
    assert not re.fullmatch(pattern, "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48")
    assert not re.fullmatch(pattern, "SHA256:short")


def test_labels_names_and_conversion() -> None:
    webhook = {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": {
                "service": {
                    "namespace": "capi-remote-system",
                    "name": "capi-remote-webhook-service",
                    "path": "/convert",
                }
            },
            "conversionReviewVersions": ["v1"],
        },
    }
    strategies = {k.kind: crd(k)["spec"]["conversion"] for k in KINDS}
    assert strategies == {
        "RemoteMachine": webhook,
        "PooledRemoteMachine": webhook,
        "RemoteCluster": webhook,
        "RemoteMachineTemplate": {"strategy": "None"},
        "RemoteClusterTemplate": {"strategy": "None"},
    }
    for kind in KINDS:
        definition = crd(kind)
        assert definition["metadata"]["labels"] == {
            "cluster.x-k8s.io/v1beta1": "v1beta1",
            "cluster.x-k8s.io/v1beta2": "v1beta2",
            "cluster.x-k8s.io/provider": "infrastructure-remote",
        }
        assert definition["metadata"]["name"] == f"{kind.plural}.infrastructure.cluster.x-k8s.io"
        assert definition["spec"]["names"]["plural"] == kind.kind.lower() + "s"
        versions = _versions(kind)
        assert [v["storage"] for v in versions.values()] == [False, True]
        assert versions["v1beta1"]["deprecated"] is True
        assert "deprecated" not in versions["v1beta2"]
        has_status = "status" in versions["v1beta2"]["schema"]["openAPIV3Schema"]["properties"]
        for version in versions.values():
            assert ("subresources" in version) == has_status
            assert version["served"] is True


def _columns(kind: str, version: str) -> list[tuple[str, str]]:
    return [
        (c["name"], c["jsonPath"])
        for c in _versions(BY_KIND[kind])[version]["additionalPrinterColumns"]
    ]


def test_printer_columns() -> None:
    machine = [
        ("Address", ".spec.address"),
        ("Pool", ".spec.pool"),
        ("Phase", ".status.phase"),
        ("Ready", "READY"),
        ("ProviderID", ".spec.providerID"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    ready = {"v1beta1": ".status.ready", "v1beta2": ".status.initialization.provisioned"}
    for version, path in ready.items():
        expected = [(n, path if p == "READY" else p) for n, p in machine]
        assert _columns("RemoteMachine", version) == expected
        assert _columns("PooledRemoteMachine", version) == [
            ("Pool", ".spec.pool"),
            ("Address", ".spec.machine.address"),
            ("Claimed-By", ".spec.claim.name"),
            ("Health", ".status.health.state"),
            ("Age", ".metadata.creationTimestamp"),
        ]
        assert _columns("RemoteMachineTemplate", version) == [
            ("Pool", ".spec.template.spec.pool"),
            ("Available", ".status.available"),
            ("Age", ".metadata.creationTimestamp"),
        ]


@pytest.mark.parametrize(("kind", "version"), ALL_SCHEMAS, ids=IDS)
def test_printer_columns_point_at_fields(kind: str, version: str) -> None:
    paths = dict(_walk(_root(kind, version)))
    for _, path in _columns(kind, version):
        assert path in paths or path == ".metadata.creationTimestamp", path


def test_reference_documents_every_field() -> None:
    text = (ROOT / generate.REFERENCE).read_text()
    for kind, version in ALL_SCHEMAS:
        assert f"### {kind} {version}" in text
        for path, _ in _walk(_root(kind, version)):
            if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")):
                assert f"| `{path[1:]}` |" in text, path
    assert "remote.infrastructure.cluster.x-k8s.io/host-key-fingerprint" in text
