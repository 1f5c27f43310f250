"""API version v1beta2: the storage version and conversion hub; what the reconcilers use.

Differences from v1beta1 (see ``conversion.py``): ``cleanUpCommands`` instead of
``customCleanUpCommands``; readiness in ``status.initialization.provisioned`` instead of
``status.ready``; metav1 conditions in ``status.conditions``, with the v1beta1-only failure fields
and Cluster API v1beta1 conditions under ``status.deprecated.v1beta1``.
"""

from typing import Final, Literal

import attrs

from capi_remote.api.cluster import (
    RemoteClusterSpec,
    RemoteClusterTemplateSpec,
)
from capi_remote.api.common import (
    API_VERSION_DOC,
    KIND_DOC,
    METADATA_DOC,
    clean_up_commands_doc,
)
from capi_remote.api.connection import (
    MachineSpecBase,
    PooledMachineSpecBase,
)
from capi_remote.api.fields import doc, object_rules
from capi_remote.api.meta import ObjectMeta
from capi_remote.api.status import (
    CLAIM_DOC,
    Condition,
    MachineStatusBase,
    PoolClaim,
    PooledRemoteMachineStatus,
    V1Beta1Condition,
    conditions_doc,
    v1beta1_conditions_doc,
)
from capi_remote.api.templates import (
    RemoteMachineTemplateSpec,
    RemoteMachineTemplateStatus,
)

API_VERSION: Final = "infrastructure.cluster.x-k8s.io/v1beta2"


@attrs.frozen(kw_only=True)
class Initialization:
    provisioned: bool = attrs.field(
        metadata=doc("True once the infrastructure is fully provisioned (Cluster API contract).")
    )


@object_rules(min_properties=1)
@attrs.frozen(kw_only=True)
class V1Beta1DeprecatedStatus:
    failure_reason: str | None = attrs.field(
        default=None, metadata=doc("Terminal failure reason, for v1beta1 clients.")
    )
    failure_message: str | None = attrs.field(
        default=None, metadata=doc("Terminal failure message, for v1beta1 clients.")
    )
    conditions: tuple[V1Beta1Condition, ...] | None = attrs.field(
        default=None, metadata=v1beta1_conditions_doc()
    )


@attrs.frozen(kw_only=True)
class DeprecatedStatus:
    v1beta1: V1Beta1DeprecatedStatus = attrs.field(
        metadata=doc("Fields that exist only for v1beta1 clients; they will be removed.")
    )


# ---------------------------------------------------------------------------------------------
# RemoteMachine


@attrs.frozen(kw_only=True)
class RemoteMachineSpec(MachineSpecBase):
    clean_up_commands: tuple[str, ...] | None = attrs.field(
        default=None, metadata=clean_up_commands_doc()
    )


@attrs.frozen(kw_only=True)
class RemoteMachineStatus(MachineStatusBase):
    initialization: Initialization | None = attrs.field(
        default=None, metadata=doc("Provisioning progress read by Cluster API.")
    )
    conditions: tuple[Condition, ...] | None = attrs.field(default=None, metadata=conditions_doc())
    deprecated: DeprecatedStatus | None = attrs.field(
        default=None, metadata=doc("Fields kept for older clients.")
    )


@attrs.frozen(kw_only=True)
class RemoteMachine:
    api_version: Literal["infrastructure.cluster.x-k8s.io/v1beta2"] = attrs.field(
        default=API_VERSION, metadata=API_VERSION_DOC
    )
    kind: Literal["RemoteMachine"] = attrs.field(default="RemoteMachine", metadata=KIND_DOC)
    metadata: ObjectMeta = attrs.field(factory=ObjectMeta, metadata=METADATA_DOC)
    spec: RemoteMachineSpec = attrs.field(
        metadata=doc("How to reach the host and bootstrap it into a Cluster API Machine.")
    )
    status: RemoteMachineStatus | None = attrs.field(
        default=None, metadata=doc("Observed state of the machine.")
    )


# ---------------------------------------------------------------------------------------------
# PooledRemoteMachine


@attrs.frozen(kw_only=True)
class PooledMachineSpec(PooledMachineSpecBase):
    clean_up_commands: tuple[str, ...] | None = attrs.field(
        default=None, metadata=clean_up_commands_doc()
    )


@attrs.frozen(kw_only=True)
class PooledRemoteMachineSpec:
    pool: str = attrs.field(metadata=doc("Name of the pool.", min_length=1, max_length=253))
    machine: PooledMachineSpec = attrs.field(metadata=doc("The host and how to reach it."))
    claim: PoolClaim | None = attrs.field(
        default=None,
        metadata=CLAIM_DOC,
    )


@attrs.frozen(kw_only=True)
class PooledRemoteMachine:
    api_version: Literal["infrastructure.cluster.x-k8s.io/v1beta2"] = attrs.field(
        default=API_VERSION, metadata=API_VERSION_DOC
    )
    kind: Literal["PooledRemoteMachine"] = attrs.field(
        default="PooledRemoteMachine", metadata=KIND_DOC
    )
    metadata: ObjectMeta = attrs.field(factory=ObjectMeta, metadata=METADATA_DOC)
    spec: PooledRemoteMachineSpec = attrs.field(
        metadata=doc("A host offered to RemoteMachines of a pool.")
    )
    status: PooledRemoteMachineStatus | None = attrs.field(
        default=None, metadata=doc("Reservation and health of the host.")
    )


# ---------------------------------------------------------------------------------------------
# RemoteMachineTemplate


@attrs.frozen(kw_only=True)
class RemoteMachineTemplate:
    api_version: Literal["infrastructure.cluster.x-k8s.io/v1beta2"] = attrs.field(
        default=API_VERSION, metadata=API_VERSION_DOC
    )
    kind: Literal["RemoteMachineTemplate"] = attrs.field(
        default="RemoteMachineTemplate", metadata=KIND_DOC
    )
    metadata: ObjectMeta = attrs.field(factory=ObjectMeta, metadata=METADATA_DOC)
    spec: RemoteMachineTemplateSpec = attrs.field(
        metadata=doc("Template for the RemoteMachines of a MachineDeployment or control plane.")
    )
    status: RemoteMachineTemplateStatus | None = attrs.field(
        default=None, metadata=doc("Capacity of the template's pool.")
    )


# ---------------------------------------------------------------------------------------------
# RemoteCluster


@attrs.frozen(kw_only=True)
class RemoteClusterStatus:
    initialization: Initialization | None = attrs.field(
        default=None, metadata=doc("Provisioning progress read by Cluster API.")
    )
    conditions: tuple[Condition, ...] | None = attrs.field(default=None, metadata=conditions_doc())
    deprecated: DeprecatedStatus | None = attrs.field(
        default=None, metadata=doc("Fields kept for older clients.")
    )


@attrs.frozen(kw_only=True)
class RemoteCluster:
    api_version: Literal["infrastructure.cluster.x-k8s.io/v1beta2"] = attrs.field(
        default=API_VERSION, metadata=API_VERSION_DOC
    )
    kind: Literal["RemoteCluster"] = attrs.field(default="RemoteCluster", metadata=KIND_DOC)
    metadata: ObjectMeta = attrs.field(factory=ObjectMeta, metadata=METADATA_DOC)
    spec: RemoteClusterSpec | None = attrs.field(
        default=None, metadata=doc("Infrastructure of a cluster made of remote machines.")
    )
    status: RemoteClusterStatus | None = attrs.field(
        default=None, metadata=doc("Observed state of the cluster infrastructure.")
    )


@attrs.frozen(kw_only=True)
class RemoteClusterTemplate:
    api_version: Literal["infrastructure.cluster.x-k8s.io/v1beta2"] = attrs.field(
        default=API_VERSION, metadata=API_VERSION_DOC
    )
    kind: Literal["RemoteClusterTemplate"] = attrs.field(
        default="RemoteClusterTemplate", metadata=KIND_DOC
    )
    metadata: ObjectMeta = attrs.field(factory=ObjectMeta, metadata=METADATA_DOC)
    spec: RemoteClusterTemplateSpec = attrs.field(
        metadata=doc("Template for RemoteClusters, used by ClusterClass.")
    )
