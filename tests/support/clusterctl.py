"""What the clusterctl tests share: the template variables beyond clusterctl's flags, and stand-in
CRDs for the k0smotron kinds the default and pool flavors reference."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
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


def run_clusterctl(
    binary: Path,
    kubeconfig: Path,
    config: Path,
    *args: str,
    check: bool = True,
    variables: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``clusterctl ARGS --config CONFIG`` on ``kubeconfig``'s cluster, with TEMPLATE_ENV and
    ``variables`` for the templates; with ``check``, a failure fails the test with its stderr."""
    env = {
        **os.environ,
        **TEMPLATE_ENV,
        **(variables or {}),
        "KUBECONFIG": str(kubeconfig),
        # No call home to GitHub, no writes to the real user's config directory.
        "CLUSTERCTL_DISABLE_VERSIONCHECK": "true",
        "XDG_CONFIG_HOME": str(config.parent),
    }
    proc = subprocess.run(
        [str(binary), *args, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"clusterctl {' '.join(args)}: {proc.stderr[-4000:]}"
    return proc
