"""What the clusterctl tests share: the template variables beyond clusterctl's flags, and stand-in
CRDs for the k0smotron kinds the default and pool flavors reference."""

from __future__ import annotations

from typing import Any

# Kinds of other providers the templates reference, as (group, kind).
K0SMOTRON_KINDS = (
    ("bootstrap.cluster.x-k8s.io", "K0sWorkerConfig"),
    ("bootstrap.cluster.x-k8s.io", "K0sWorkerConfigTemplate"),
    ("controlplane.cluster.x-k8s.io", "K0smotronControlPlane"),
)
# Variables every template needs beyond what clusterctl's flags set.
TEMPLATE_ENV = {
    "REMOTE_MACHINE_ADDRESS": "192.0.2.10",
    "REMOTE_CONTROL_PLANE_ENDPOINT_HOST": "192.0.2.1",
}


def stand_in_crd(group: str, kind: str) -> dict[str, Any]:
    """A CRD that stores any ``spec`` and ``status`` for ``kind``: for kinds of providers the test
    bed does not build (k0smotron), so templates naming them can be created."""
    plural = kind.lower() + "s"
    free_form = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "labels": {"cluster.x-k8s.io/v1beta1": "v1beta1"},
        },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1beta1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": free_form, "status": free_form},
                        }
                    },
                    "subresources": {"status": {}},
                }
            ],
        },
    }
