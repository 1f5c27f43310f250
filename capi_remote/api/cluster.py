"""RemoteCluster and RemoteClusterTemplate parts shared by both API versions."""

import attrs

from capi_remote.api.fields import doc
from capi_remote.api.meta import TemplateMeta


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
