"""CustomResourceDefinitions generated from the models.

The OpenAPI schema of each version is derived from the attrs classes (types, required fields,
defaults) plus their ``doc()``/``object_rules()`` metadata; this module adds only what is per CRD:
names, printer columns, labels and the conversion strategy.

Conversion strategy: a webhook for the kinds whose versions differ in shape (RemoteMachine,
PooledRemoteMachine, RemoteCluster), ``None`` for the templates, whose two versions are identical
(the apiserver then only rewrites ``apiVersion``, and nothing can be lost).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Final, Literal, Union

import attrs
import yaml

from capi_remote.api import v1beta1, v1beta2
from capi_remote.api.common import GROUP
from capi_remote.api.fields import field_info, json_name, object_info
from capi_remote.api.meta import ObjectMeta
from capi_remote.api.serde import to_dict

VERSIONS: Final = ("v1beta1", "v1beta2")
STORAGE_VERSION: Final = "v1beta2"
PROVIDER_LABEL: Final = "infrastructure-remote"
WEBHOOK_SERVICE: Final = {
    "namespace": "capi-remote-system",
    "name": "capi-remote-webhook-service",
    "path": "/convert",
}


@attrs.frozen
class PrinterColumn:
    name: str
    type: Literal["string", "integer", "boolean", "date"]
    json_path: str
    description: str

    def to_crd(self) -> dict[str, str]:
        return {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation")


def _machine_columns(ready_path: str) -> tuple[PrinterColumn, ...]:
    return (
        PrinterColumn("Address", "string", ".spec.address", "Address of the host"),
        PrinterColumn("Pool", "string", ".spec.pool", "Pool the host is claimed from"),
        PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase"),
        PrinterColumn("Ready", "boolean", ready_path, "Infrastructure provisioned"),
        PrinterColumn("ProviderID", "string", ".spec.providerID", "Provider ID"),
        _AGE,
    )


def _cluster_columns(ready_path: str) -> tuple[PrinterColumn, ...]:
    return (
        PrinterColumn(
            "Endpoint", "string", ".spec.controlPlaneEndpoint.host", "Control plane endpoint host"
        ),
        PrinterColumn("Ready", "boolean", ready_path, "Infrastructure provisioned"),
        _AGE,
    )


_POOLED_COLUMNS: Final = (
    PrinterColumn("Pool", "string", ".spec.pool", "Pool the host belongs to"),
    PrinterColumn("Address", "string", ".spec.machine.address", "Address of the host"),
    PrinterColumn("Claimed-By", "string", ".spec.claim.name", "RemoteMachine holding the host"),
    PrinterColumn("Health", "string", ".status.health.state", "Outcome of the last probe"),
    _AGE,
)
_MACHINE_TEMPLATE_COLUMNS: Final = (
    PrinterColumn("Pool", "string", ".spec.template.spec.pool", "Pool of the machines"),
    PrinterColumn("Available", "integer", ".status.available", "Unclaimed healthy hosts"),
    _AGE,
)


@attrs.frozen(kw_only=True)
class Kind:
    """One CRD: a kind, its root model per version, and what the models cannot say."""

    kind: str
    description: str
    models: Mapping[str, type]
    columns: Mapping[str, tuple[PrinterColumn, ...]]
    webhook_conversion: bool

    @property
    def plural(self) -> str:
        return self.kind.lower() + "s"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


KINDS: Final = (
    Kind(
        kind="RemoteMachine",
        description="RemoteMachine is a Cluster API infrastructure machine: a host reached by SSH.",
        models={"v1beta1": v1beta1.RemoteMachine, "v1beta2": v1beta2.RemoteMachine},
        columns={
            "v1beta1": _machine_columns(".status.ready"),
            "v1beta2": _machine_columns(".status.initialization.provisioned"),
        },
        webhook_conversion=True,
    ),
    Kind(
        kind="PooledRemoteMachine",
        description="PooledRemoteMachine offers a host to the RemoteMachines of a pool.",
        models={"v1beta1": v1beta1.PooledRemoteMachine, "v1beta2": v1beta2.PooledRemoteMachine},
        columns={"v1beta1": _POOLED_COLUMNS, "v1beta2": _POOLED_COLUMNS},
        webhook_conversion=True,
    ),
    Kind(
        kind="RemoteMachineTemplate",
        description="RemoteMachineTemplate is the template of RemoteMachines claimed from a pool.",
        models={
            "v1beta1": v1beta1.RemoteMachineTemplate,
            "v1beta2": v1beta2.RemoteMachineTemplate,
        },
        columns={"v1beta1": _MACHINE_TEMPLATE_COLUMNS, "v1beta2": _MACHINE_TEMPLATE_COLUMNS},
        webhook_conversion=False,
    ),
    Kind(
        kind="RemoteCluster",
        description="RemoteCluster is the Cluster API infrastructure cluster of remote machines.",
        models={"v1beta1": v1beta1.RemoteCluster, "v1beta2": v1beta2.RemoteCluster},
        columns={
            "v1beta1": _cluster_columns(".status.ready"),
            "v1beta2": _cluster_columns(".status.initialization.provisioned"),
        },
        webhook_conversion=True,
    ),
    Kind(
        kind="RemoteClusterTemplate",
        description="RemoteClusterTemplate is the template of RemoteClusters, for ClusterClass.",
        models={
            "v1beta1": v1beta1.RemoteClusterTemplate,
            "v1beta2": v1beta2.RemoteClusterTemplate,
        },
        columns={"v1beta1": (_AGE,), "v1beta2": (_AGE,)},
        webhook_conversion=False,
    ),
)


# ---------------------------------------------------------------------------------------------
# OpenAPI schemas


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp!r}")
        return args[0]
    return tp


def type_schema(tp: Any) -> dict[str, Any]:
    """The structural schema of a Python type as used by the models."""
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if origin is Literal:
        values = list(typing.get_args(tp))
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"only string literals are supported: {tp!r}")
        return {"type": "string", "enum": values}
    if origin is tuple:
        item, ellipsis = typing.get_args(tp)
        assert ellipsis is Ellipsis, f"use tuple[X, ...], not {tp!r}"
        return {"type": "array", "items": type_schema(item)}
    if origin is Mapping:
        key, value = typing.get_args(tp)
        assert key is str, f"map keys must be strings: {tp!r}"
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": type_schema(value)}
    if attrs.has(tp):
        return object_schema(tp)
    raise TypeError(f"no schema for {tp!r}")


def _default(attribute: attrs.Attribute[Any]) -> Any:
    """The JSON form of a field's default, or ``None`` when the field has none worth stating."""
    default = attribute.default
    if default is attrs.NOTHING or default is None:
        return None
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        raise TypeError(f"{attribute.name}: factory defaults have no schema form")
    return to_dict(default) if attrs.has(type(default)) else default


def field_schema(attribute: attrs.Attribute[Any]) -> dict[str, Any]:
    info = field_info(attribute)
    schema = type_schema(attribute.type)
    schema["description"] = info.description
    validation = info.validation()
    rules = validation.pop("x-kubernetes-validations", [])
    schema.update(validation)
    if rules:
        schema["x-kubernetes-validations"] = [*schema.get("x-kubernetes-validations", []), *rules]
    default = _default(attribute)
    if default is not None:
        schema["default"] = default
    return schema


def object_schema(cls: type) -> dict[str, Any]:
    attrs.resolve_types(cls)
    properties = {json_name(a): field_schema(a) for a in attrs.fields(cls)}
    required = sorted(json_name(a) for a in attrs.fields(cls) if a.default is attrs.NOTHING)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    info = object_info(cls)
    if info.description is not None:
        schema["description"] = info.description
    if info.min_properties is not None:
        schema["minProperties"] = info.min_properties
    if info.rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in info.rules]
    return schema


def root_schema(cls: type, description: str) -> dict[str, Any]:
    """Schema of a kind: standard apiVersion/kind/metadata, then the model's spec and status."""
    attrs.resolve_types(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for a in attrs.fields(cls):
        name = json_name(a)
        if name in ("apiVersion", "kind"):
            properties[name] = {"type": "string", "description": field_info(a).description}
        elif a.type is ObjectMeta:
            properties[name] = {"type": "object"}
        else:
            properties[name] = field_schema(a)
            if a.default is attrs.NOTHING:
                required.append(name)
    schema: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": properties,
    }
    if required:
        schema["required"] = sorted(required)
    return schema


# ---------------------------------------------------------------------------------------------
# CRDs


def _conversion(kind: Kind) -> dict[str, Any]:
    if not kind.webhook_conversion:
        return {"strategy": "None"}
    return {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": {"service": dict(WEBHOOK_SERVICE)},
            "conversionReviewVersions": ["v1"],
        },
    }


def _version(kind: Kind, version: str) -> dict[str, Any]:
    model = kind.models[version]
    out: dict[str, Any] = {
        "name": version,
        "served": True,
        "storage": version == STORAGE_VERSION,
        "additionalPrinterColumns": [c.to_crd() for c in kind.columns[version]],
        "schema": {"openAPIV3Schema": root_schema(model, kind.description)},
    }
    if version != STORAGE_VERSION:
        out["deprecated"] = True
        out["deprecationWarning"] = (
            f"{GROUP}/{version} {kind.kind} is deprecated; use {GROUP}/{STORAGE_VERSION}"
        )
    if "status" in attrs.fields_dict(model):
        out["subresources"] = {"status": {}}
    return out


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a JSON-ready dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {
                "cluster.x-k8s.io/v1beta1": "v1beta1",
                "cluster.x-k8s.io/v1beta2": "v1beta2",
                "cluster.x-k8s.io/provider": PROVIDER_LABEL,
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "categories": ["cluster-api"],
            },
            "scope": "Namespaced",
            "conversion": _conversion(kind),
            "versions": [_version(kind, v) for v in VERSIONS],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as ``|`` literals, no anchors: stable, reviewable diffs."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)

HEADER: Final = (
    "# Generated by `python -m capi_remote.api generate` from capi_remote/api. Do not edit.\n"
)


def render(kind: Kind) -> str:
    """The CRD file of one kind: deterministic YAML (sorted keys, unfolded lines)."""
    body = yaml.dump(crd(kind), Dumper=_Dumper, sort_keys=True, width=10_000)
    return HEADER + "---\n" + body
