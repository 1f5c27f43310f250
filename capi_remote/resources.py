"""Where each kind the provider touches lives in the API (group, version, plural)."""

from __future__ import annotations

from capi_remote.api import GROUP
from capi_remote.kube.client import Resource

INFRA_VERSION = "v1beta2"
CAPI_GROUP = "cluster.x-k8s.io"
CAPI_VERSION = "v1beta2"

REMOTE_MACHINES = Resource(GROUP, INFRA_VERSION, "remotemachines", "RemoteMachine")
POOLED_REMOTE_MACHINES = Resource(
    GROUP, INFRA_VERSION, "pooledremotemachines", "PooledRemoteMachine"
)
REMOTE_MACHINE_TEMPLATES = Resource(
    GROUP, INFRA_VERSION, "remotemachinetemplates", "RemoteMachineTemplate"
)
REMOTE_CLUSTERS = Resource(GROUP, INFRA_VERSION, "remoteclusters", "RemoteCluster")
REMOTE_CLUSTER_TEMPLATES = Resource(
    GROUP, INFRA_VERSION, "remoteclustertemplates", "RemoteClusterTemplate"
)

MACHINES = Resource(CAPI_GROUP, CAPI_VERSION, "machines", "Machine")
CLUSTERS = Resource(CAPI_GROUP, CAPI_VERSION, "clusters", "Cluster")

SECRETS = Resource("", "v1", "secrets", "Secret")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod")
JOBS = Resource("batch", "v1", "jobs", "Job")
