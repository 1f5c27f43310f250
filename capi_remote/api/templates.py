"""RemoteMachineTemplate parts shared by both API versions."""

from collections.abc import Mapping

import attrs

from capi_remote.api.connection import ProvisionJob
from capi_remote.api.fields import doc
from capi_remote.api.meta import TemplateMeta


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
