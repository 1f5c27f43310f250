"""Typed models of the provider's API, their CRDs, and conversion between versions.

Pure data: no Kubernetes client here. Reconcilers use the hub version (v1beta2), re-exported below;
``v1beta1`` exists for the conversion webhook and for clients that still speak it.

- ``from_dict(Model, obj)`` / ``to_dict(model)``: JSON form ⇄ frozen attrs models.
- ``convert(obj, "v1beta2")`` and ``review_response(review)``: the conversion webhook's logic.
- ``python -m capi_remote.api generate|check``: CRDs in ``manifests/crds`` and
  ``docs/api-reference.md`` from the models.
"""

from capi_remote.api.cluster import (
    APIEndpoint,
    RemoteClusterSpec,
)
from capi_remote.api.common import (
    BASTION_HOST_KEY_FINGERPRINT_ANNOTATION,
    GROUP,
    HOST_KEY_FINGERPRINT_ANNOTATION,
    PROVIDER_ID_SET_FOR_ANNOTATION,
    parse_duration,
)
from capi_remote.api.connection import (
    Bastion,
    HostKeyPolicy,
    KnownHostsRef,
    NamespacedName,
    ProvisionJob,
    SecretKeyRef,
    SSHKeyRef,
    Timeouts,
)
from capi_remote.api.conversion import ConversionError, convert, review_response
from capi_remote.api.meta import ObjectMeta, OwnerReference, TemplateMeta
from capi_remote.api.serde import from_dict, to_dict
from capi_remote.api.status import (
    BootstrapProgress,
    Condition,
    Health,
    HostFacts,
    MachineAddress,
    PoolClaim,
    PooledRemoteMachineStatus,
    V1Beta1Condition,
)
from capi_remote.api.templates import (
    NodeInfo,
    RemoteMachineTemplateStatus,
)
from capi_remote.api.v1beta2 import (
    API_VERSION,
    DeprecatedStatus,
    Initialization,
    PooledMachineSpec,
    PooledRemoteMachine,
    PooledRemoteMachineSpec,
    RemoteCluster,
    RemoteClusterStatus,
    RemoteClusterTemplate,
    RemoteMachine,
    RemoteMachineSpec,
    RemoteMachineStatus,
    RemoteMachineTemplate,
    V1Beta1DeprecatedStatus,
)

__all__ = [
    "API_VERSION",
    "BASTION_HOST_KEY_FINGERPRINT_ANNOTATION",
    "GROUP",
    "HOST_KEY_FINGERPRINT_ANNOTATION",
    "PROVIDER_ID_SET_FOR_ANNOTATION",
    "APIEndpoint",
    "Bastion",
    "BootstrapProgress",
    "Condition",
    "ConversionError",
    "DeprecatedStatus",
    "Health",
    "HostFacts",
    "HostKeyPolicy",
    "Initialization",
    "KnownHostsRef",
    "MachineAddress",
    "NamespacedName",
    "NodeInfo",
    "ObjectMeta",
    "OwnerReference",
    "PoolClaim",
    "PooledMachineSpec",
    "PooledRemoteMachine",
    "PooledRemoteMachineSpec",
    "PooledRemoteMachineStatus",
    "ProvisionJob",
    "RemoteCluster",
    "RemoteClusterSpec",
    "RemoteClusterStatus",
    "RemoteClusterTemplate",
    "RemoteMachine",
    "RemoteMachineSpec",
    "RemoteMachineStatus",
    "RemoteMachineTemplate",
    "RemoteMachineTemplateStatus",
    "SSHKeyRef",
    "SecretKeyRef",
    "TemplateMeta",
    "Timeouts",
    "V1Beta1Condition",
    "V1Beta1DeprecatedStatus",
    "convert",
    "from_dict",
    "parse_duration",
    "review_response",
    "to_dict",
]
