"""The Cluster API Operator for the test bed: its release components and the image its Deployment
runs, both made here from the cached ``sigs.k8s.io/cluster-api-operator`` module.

Why it looks the way it does:

- No registry or GitHub release is reachable, so the operator's release asset
  (``operator-components.yaml``) is made the way its release makes it: ``kubectl kustomize
  config/default`` of the module's ``config/`` (kept beside the cached binary), with the manager's
  image set to ours. Its webhooks get their certificate from cert-manager, which the test bed
  runs as processes (:mod:`capi_remote_testbed.incluster`).
- The operator runs as a Pod, as users run it: its image holds the one static binary at
  ``/manager`` (the command of its Deployment), like the Cluster API managers' images
  (:mod:`capi_remote_testbed.clusterctlrepo`).

Invariant: the image archive's name carries the binary's cache directory (its pins) and appears
atomically under a lock (:func:`capi_remote_testbed.locks.build_once`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs

from capi_remote_testbed import clusterctlrepo, toolchain
from capi_remote_testbed.locks import build_once, recipe_hash
from capi_remote_testbed.nodeimages import write_binary_images

IMAGE = f"{clusterctlrepo.IMAGE_REPOSITORY}/cluster-api-operator:{toolchain.CAPI_OPERATOR_VERSION}"
NAMESPACE = "capi-operator-system"
DEPLOYMENT = "capi-operator-controller-manager"
#: Bump when the image recipe below changes.
RECIPE_VERSION = 1


@attrs.frozen
class Operator:
    components: str  # operator-components.yaml, running IMAGE
    images: Path  # OCI archive holding IMAGE


def ensure(kubectl: Path, log: Callable[[str], None] = print) -> Operator:
    """The operator's components and image archive (the binary built on a miss)."""
    built = toolchain.ensure_capi_operator(log)
    recipe = recipe_hash(str(RECIPE_VERSION), f"{IMAGE}={built.manager}")
    archive = build_once(
        toolchain.cache_root() / "images" / f"capi-operator-images-{recipe}.oci.tar",
        lambda path: write_binary_images(path, [(IMAGE, built.manager, "manager")]),
        log,
    )
    components = clusterctlrepo.kustomized_components(kubectl, built.config, IMAGE)
    return Operator(components, archive)
