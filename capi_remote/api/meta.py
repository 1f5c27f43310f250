"""Kubernetes object metadata as typed models.

Every field of ``metav1.ObjectMeta`` is modelled, so an object read from the apiserver survives
``from_dict``/``to_dict`` unchanged; timestamps stay RFC 3339 strings for the same reason. The CRD
schema of a root ``metadata`` is just ``type: object`` (the apiserver owns it); templates carry
the narrower :class:`TemplateMeta`, whose labels and annotations are copied onto cloned objects.
"""

from collections.abc import Mapping
from typing import Any

import attrs

from capi_remote.api.fields import doc


@attrs.frozen(kw_only=True)
class OwnerReference:
    api_version: str = attrs.field(metadata=doc("API version of the owner."))
    kind: str = attrs.field(metadata=doc("Kind of the owner."))
    name: str = attrs.field(metadata=doc("Name of the owner."))
    uid: str = attrs.field(metadata=doc("UID of the owner."))
    controller: bool | None = attrs.field(
        default=None, metadata=doc("True when the owner is the managing controller.")
    )
    block_owner_deletion: bool | None = attrs.field(
        default=None, metadata=doc("True when the owner cannot be deleted before this object.")
    )


@attrs.frozen(kw_only=True)
class ObjectMeta:
    name: str | None = attrs.field(default=None, metadata=doc("Object name."))
    generate_name: str | None = attrs.field(default=None, metadata=doc("Name prefix."))
    namespace: str | None = attrs.field(default=None, metadata=doc("Namespace."))
    self_link: str | None = attrs.field(default=None, metadata=doc("Deprecated self link."))
    uid: str | None = attrs.field(default=None, metadata=doc("Unique ID."))
    resource_version: str | None = attrs.field(default=None, metadata=doc("Resource version."))
    generation: int | None = attrs.field(default=None, metadata=doc("Spec generation."))
    creation_timestamp: str | None = attrs.field(default=None, metadata=doc("Creation time."))
    deletion_timestamp: str | None = attrs.field(default=None, metadata=doc("Deletion time."))
    deletion_grace_period_seconds: int | None = attrs.field(
        default=None, metadata=doc("Grace period before deletion.")
    )
    labels: Mapping[str, str] | None = attrs.field(default=None, metadata=doc("Labels."))
    annotations: Mapping[str, str] | None = attrs.field(default=None, metadata=doc("Annotations."))
    owner_references: tuple[OwnerReference, ...] | None = attrs.field(
        default=None, metadata=doc("Owners.")
    )
    finalizers: tuple[str, ...] | None = attrs.field(default=None, metadata=doc("Finalizers."))
    managed_fields: tuple[Mapping[str, Any], ...] | None = attrs.field(
        default=None, metadata=doc("Server-side apply field ownership, kept verbatim.")
    )


@attrs.frozen(kw_only=True)
class TemplateMeta:
    labels: Mapping[str, str] | None = attrs.field(
        default=None,
        metadata=doc("Labels copied onto objects created from this template."),
    )
    annotations: Mapping[str, str] | None = attrs.field(
        default=None,
        metadata=doc("Annotations copied onto objects created from this template."),
    )
