"""A clusterctl local repository and configuration for the test bed: Cluster API core and the
kubeadm bootstrap and control-plane providers made from the cached v1.13.6 module, next to our
provider's release assets (``make release-manifests``), and the images their Deployments run.

Why it looks the way it does:

- No registry or GitHub release is reachable, so the Cluster API providers' release assets are
  made the way their release does it: ``kubectl kustomize config/default`` of the module's
  ``config/`` (kept beside the cached binaries), with the managers' ``imagePullPolicy: Always``
  turned into ``IfNotPresent`` (their release does the same), and a ``metadata.yaml`` naming the
  release series and its contract.
- The images hold one static binary each, at ``/manager`` (the command of the providers'
  Deployments); clusterctl's ``images:`` configuration points the Deployments at them, keeping
  the upstream image names (``<repository>/cluster-api-controller:<tag>``).
- cert-manager is not in the repository: the test bed runs it as processes
  (:mod:`capi_remote_testbed.incluster`), and ``clusterctl init`` accepts any cert-manager whose
  API takes its test Issuer and Certificate (docs/deployment.md says so).

Invariant: the images archive's name carries the binaries' cache directories (their pins) and
appears atomically under a lock, like :mod:`capi_remote_testbed.nodeimages`.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs
import yaml

from capi_remote_testbed import kubeadm_providers, toolchain
from capi_remote_testbed.locks import build_lock
from capi_remote_testbed.nodeimages import write_binary_images

IMAGE_REPOSITORY = "localhost/capi-remote-testbed"
IMAGE_TAG = toolchain.CLUSTER_API_VERSION
#: Bump when the image recipe below changes.
RECIPE_VERSION = 1


@attrs.frozen
class CapiProvider:
    """One Cluster API provider as clusterctl sees it."""

    name: str  # clusterctl's provider name
    type: str  # clusterctl's provider type
    label: str  # the repository directory and the ``images:`` key
    components: str  # the components file clusterctl looks for
    image: str  # the upstream image name its Deployment runs


CORE = CapiProvider(
    "cluster-api", "CoreProvider", "cluster-api", "core-components.yaml", "cluster-api-controller"
)
BOOTSTRAP = CapiProvider(
    "kubeadm",
    "BootstrapProvider",
    "bootstrap-kubeadm",
    "bootstrap-components.yaml",
    "kubeadm-bootstrap-controller",
)
CONTROL_PLANE = CapiProvider(
    "kubeadm",
    "ControlPlaneProvider",
    "control-plane-kubeadm",
    "control-plane-components.yaml",
    "kubeadm-control-plane-controller",
)
CAPI_PROVIDERS = (CORE, BOOTSTRAP, CONTROL_PLANE)


@attrs.frozen
class Repository:
    config: Path  # clusterctl.yaml (``--config``)
    images: Path  # OCI archive of the Cluster API managers' images
    infrastructure: Path  # infrastructure-remote/<version>/, our release assets


def _managers(log: Callable[[str], None]) -> dict[CapiProvider, tuple[Path, Path]]:
    """Each provider's manager binary and ``config/`` directory (built on a miss)."""
    core = toolchain.ensure(log=log)
    kubeadm = kubeadm_providers.ensure(log=log)
    return {
        CORE: (core.capi_manager, core.capi_config),
        BOOTSTRAP: (kubeadm.bootstrap_manager, kubeadm.bootstrap_config),
        CONTROL_PLANE: (kubeadm.control_plane_manager, kubeadm.control_plane_config),
    }


def image_ref(provider: CapiProvider) -> str:
    return f"{IMAGE_REPOSITORY}/{provider.image}:{IMAGE_TAG}"


def ensure_images(log: Callable[[str], None] = print) -> Path:
    """The cached OCI archive of the three managers' images (built on a miss)."""
    binaries = {provider: binary for provider, (binary, _) in _managers(log).items()}
    recipe = hashlib.sha256(
        "\n".join(
            [str(RECIPE_VERSION), *(f"{image_ref(p)}={b}" for p, b in binaries.items())]
        ).encode()
    ).hexdigest()[:12]
    images = toolchain.cache_root() / "images"
    images.mkdir(parents=True, exist_ok=True)
    archive = images / f"capi-images-{recipe}.oci.tar"
    with build_lock(images / ".capi-images.lock"):
        if not archive.is_file():
            log(f"building the Cluster API managers' images into {archive}")
            refs = [(image_ref(p), binary, "manager") for p, binary in binaries.items()]
            write_binary_images(archive, refs)
    return archive


def kustomized_components(kubectl: Path, config: Path, image: str | None = None) -> str:
    """``kubectl kustomize config/default`` with the managers pulled only if missing (and running
    ``image`` if given): a provider's release components, made as its release makes them."""
    built = subprocess.run(
        [str(kubectl), "kustomize", str(config / "default")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    documents = [doc for doc in yaml.safe_load_all(built) if doc]
    for doc in documents:
        if doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["imagePullPolicy"] = "IfNotPresent"
                if image is not None:
                    container["image"] = image
    return yaml.safe_dump_all(documents, sort_keys=False)


def _metadata() -> str:
    major, minor = toolchain.CLUSTER_API_VERSION.lstrip("v").split(".")[:2]
    metadata = {
        "apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3",
        "kind": "Metadata",
        "releaseSeries": [{"major": int(major), "minor": int(minor), "contract": "v1beta2"}],
    }
    return yaml.safe_dump(metadata, sort_keys=False)


def write_repository(
    root: Path,
    repo_dir: Path,
    kubectl: Path,
    our_image: dict[str, str],
    log: Callable[[str], None] = print,
) -> Repository:
    """The local repository under ``root`` and its ``clusterctl.yaml``; our release assets come
    from ``make release-manifests`` in ``repo_dir`` (the clone), as a user makes them, and our
    Deployment runs ``our_image`` (clusterctl's ``repository`` and ``tag`` override)."""
    root.mkdir(parents=True, exist_ok=True)
    providers = []
    images = {}
    for provider, (_, config) in _managers(log).items():
        directory = root / provider.label / toolchain.CLUSTER_API_VERSION
        directory.mkdir(parents=True, exist_ok=True)
        (directory / provider.components).write_text(kustomized_components(kubectl, config))
        (directory / "metadata.yaml").write_text(_metadata())
        providers.append(
            {
                "name": provider.name,
                "type": provider.type,
                "url": f"file://{directory / provider.components}",
            }
        )
        images[provider.label] = {"repository": IMAGE_REPOSITORY, "tag": IMAGE_TAG}
    made = subprocess.run(
        ["make", "-s", "release-manifests", f"RELEASE_DIR={root}", f"KUBECTL={kubectl}"],
        cwd=repo_dir,
        check=True,
        capture_output=True,
        text=True,
    )
    infrastructure = Path(made.stdout.strip().rsplit(" ", 1)[-1])
    providers.append(
        {
            "name": "remote",
            "type": "InfrastructureProvider",
            "url": f"file://{infrastructure.resolve() / 'infrastructure-components.yaml'}",
        }
    )
    images["infrastructure-remote"] = our_image
    config_file = root / "clusterctl.yaml"
    config_file.write_text(
        yaml.safe_dump({"providers": providers, "images": images}, sort_keys=False)
    )
    return Repository(config_file, ensure_images(log), infrastructure.resolve())
