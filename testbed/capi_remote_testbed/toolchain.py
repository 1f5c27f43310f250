"""Binaries of the local control plane, built from pinned Go modules and cached outside the clone.

Why build: no registry reachable here ships kube-apiserver or the Cluster API manager, and the Go
module proxy is. Each component is a small wrapper module under ``toolchain/`` whose go.mod/go.sum
pin it; the cache directory name carries the version and a hash of those files, so a binary is
rebuilt exactly when its pins change.

Resolution order for each binary: ``TEST_ASSET_<NAME>`` (envtest's convention), then
``$KUBEBUILDER_ASSETS/<name>``, then the cache (building on a miss). The cache root is
``$CAPI_REMOTE_CACHE`` or ``~/.cache/capi-remote``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import attrs

from capi_remote_testbed.locks import build_lock

TOOLCHAIN_DIR = Path(__file__).parent / "toolchain"

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.10"
CLUSTER_API_VERSION = "v1.13.6"
CNI_PLUGINS_VERSION = "v1.9.1"
CERT_MANAGER_VERSION = "v1.21.2"
# The Cluster API Operator release built on CLUSTER_API_VERSION's minor (v0.29 requires CAPI v1.13).
CAPI_OPERATOR_VERSION = "v0.29.0"
#: The CoreDNS kubeadm v1.35 deploys (its ``constants.CoreDNSVersion``).
COREDNS_VERSION = "v1.13.1"


def cache_root() -> Path:
    return Path(os.environ.get("CAPI_REMOTE_CACHE") or Path.home() / ".cache" / "capi-remote")


@attrs.frozen
class Component:
    """One wrapper module and the commands it builds."""

    name: str
    version: str
    module_dir: str
    packages: tuple[str, ...]
    ldflags: str = "-s -w"

    @property
    def pin_hash(self) -> str:
        digest = hashlib.sha256()
        for file in ("go.mod", "go.sum", "main.go", "tools.go"):
            path = TOOLCHAIN_DIR / self.module_dir / file
            if path.exists():
                digest.update(file.encode() + b"\0" + path.read_bytes())
        digest.update(self.ldflags.encode())
        return digest.hexdigest()[:12]

    @property
    def cache_dir(self) -> Path:
        return cache_root() / "bin" / f"{self.name}-{self.version}-{self.pin_hash}"

    @property
    def binaries(self) -> tuple[str, ...]:
        return tuple(package.rstrip("/").rsplit("/", 1)[-1] for package in self.packages)


def _kubernetes_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    pairs = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        pairs += [
            f"{pkg}.gitVersion={version}",
            f"{pkg}.gitMajor={major}",
            f"{pkg}.gitMinor={minor}",
            f"{pkg}.gitTreeState=clean",
        ]
    return "-s -w " + " ".join(f"-X {pair}" for pair in pairs)


KUBERNETES = Component(
    name="kubernetes",
    version=KUBERNETES_VERSION,
    module_dir="kubernetes",
    packages=(
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kubectl",
    ),
    ldflags=_kubernetes_ldflags(KUBERNETES_VERSION),
)
ETCD = Component(
    name="etcd",
    version=ETCD_VERSION,
    module_dir="etcd",
    packages=("capi-remote.dev/toolchain/etcd",),
)
CLUSTER_API = Component(
    name="cluster-api",
    version=CLUSTER_API_VERSION,
    module_dir="clusterapi",
    packages=("sigs.k8s.io/cluster-api", "sigs.k8s.io/cluster-api/cmd/clusterctl"),
)
COMPONENTS = (ETCD, KUBERNETES, CLUSTER_API)
# The test bed's node, for Pods that must really run: kubelet, kube-scheduler to place them and
# kube-proxy for Services. Its own wrapper module (the same pins as KUBERNETES plus the node's extra
# dependencies) so adding it does not invalidate the control plane's cache; built by
# `make toolchain` or on first use (`ensure_node`).
NODE = Component(
    name="kubelet",
    version=KUBERNETES_VERSION,
    module_dir="kubelet",
    packages=(
        "k8s.io/kubernetes/cmd/kubelet",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kube-proxy",
    ),
    ldflags=_kubernetes_ldflags(KUBERNETES_VERSION),
)
# What an operator installs on a machine that becomes a real node (``kubeadm init``/``join`` from
# CABPK's bootstrap data): its own wrapper module with the same pins, so adding it invalidates no
# other cache entry.
KUBEADM = Component(
    name="kubeadm",
    version=KUBERNETES_VERSION,
    module_dir="kubeadm",
    packages=("k8s.io/kubernetes/cmd/kubeadm",),
    ldflags=_kubernetes_ldflags(KUBERNETES_VERSION),
)
# The node's Pod network: the CNI plugins containerd runs (the node's CNI configuration names them).
CNI_PLUGINS = Component(
    name="cni-plugins",
    version=CNI_PLUGINS_VERSION,
    module_dir="cni",
    packages=tuple(
        f"github.com/containernetworking/plugins/plugins/{plugin}"
        for plugin in ("main/bridge", "ipam/host-local", "main/loopback", "meta/portmap")
    ),
)
# PID 1 of every Pod sandbox: our own few lines (Kubernetes' pause is C), a static binary that the
# node's pause image holds.
PAUSE = Component(
    name="pause",
    version="v1",
    module_dir="pause",
    packages=("capi-remote.dev/toolchain/pause",),
)
# cert-manager for the deploy e2e (kustomize/default's webhook certificate): its certificate
# controllers and CA injector in one binary of our own (toolchain/certmanager/main.go says why),
# with the module's CRDs beside it; built on first use (`ensure_cert_manager`).
CERT_MANAGER = Component(
    name="cert-manager",
    version=CERT_MANAGER_VERSION,
    module_dir="certmanager",
    packages=("capi-remote.dev/toolchain/cert-manager",),
)
# The Cluster API Operator's manager (its package ``cmd``; the module holds no nested modules, so
# no main of our own) with the module's ``config/`` beside it (CRDs, RBAC, webhook, manager
# kustomizations); built on first use (`ensure_capi_operator`).
CAPI_OPERATOR = Component(
    name="cluster-api-operator",
    version=CAPI_OPERATOR_VERSION,
    module_dir="capi-operator",
    packages=("sigs.k8s.io/cluster-api-operator/cmd",),
)
# kubeadm's DNS addon (``addon/coredns``): CoreDNS with the plugins kubeadm's Corefile names
# (toolchain/coredns/main.go says why not all of them); built on first use (`ensure_binary`).
COREDNS = Component(
    name="coredns",
    version=COREDNS_VERSION,
    module_dir="coredns",
    packages=("capi-remote.dev/toolchain/coredns",),
)
# What tests run in Pods of real nodes to check DNS and Services from inside (the images made here
# have no shell or curl): our own few lines (toolchain/netprobe/main.go).
NETPROBE = Component(
    name="netprobe",
    version="v1",
    module_dir="netprobe",
    packages=("capi-remote.dev/toolchain/netprobe",),
)

# Supervises containerd and the kubelet on a test-bed host that becomes a real node (the hosts have
# no systemd) and, installed as systemctl, is how kubeadm (re)starts the kubelet: our own code.
NODE_SUPERVISOR = Component(
    name="nodesupervisor",
    version="v1",
    module_dir="nodesupervisor",
    packages=("capi-remote.dev/toolchain/nodesupervisor",),
)

# The CAPI module's root package builds a binary named after the module, the operator's package
# `cmd` one named `cmd`; give them clear names.
_RENAMES = {"cluster-api": "cluster-api-manager", "cmd": "cluster-api-operator"}


class ToolchainError(RuntimeError):
    """A binary could not be found or built; the message says which and why."""


@attrs.frozen
class Toolchain:
    """Paths of every binary and data file the local control plane needs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    capi_manager: Path
    clusterctl: Path
    capi_config: Path  # cluster-api's config/ directory: CRDs and webhook manifests


def _from_environment(binary: str) -> Path | None:
    explicit = os.environ.get("TEST_ASSET_" + binary.upper().replace("-", "_"))
    if explicit:
        return Path(explicit)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / binary).is_file():
        return Path(assets) / binary
    return None


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ToolchainError(
            "the Go toolchain is needed to build the local control plane (go not on PATH); "
            "install Go >= 1.25 or point KUBEBUILDER_ASSETS at prebuilt binaries"
        )
    return go


def _run_go(args: list[str], cwd: Path, what: str) -> str:
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}
    proc = subprocess.run(
        [_go(), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-30:])
        raise ToolchainError(f"{what} failed (go {' '.join(args[:2])} in {cwd}):\n{tail}")
    return proc.stdout


def _build(component: Component, log: Callable[[str], None]) -> None:
    target = component.cache_dir
    with build_lock(target.with_suffix(".lock")):
        if all((target / _RENAMES.get(b, b)).is_file() for b in component.binaries):
            return
        log(
            f"building {component.name} {component.version} into {target} "
            "(a cold build takes several minutes on 2 cores)"
        )
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _run_go(
                [
                    "build",
                    "-trimpath",
                    "-ldflags",
                    component.ldflags,
                    "-o",
                    str(staging) + "/",
                    *component.packages,
                ],
                cwd=TOOLCHAIN_DIR / component.module_dir,
                what=f"building {component.name} {component.version}",
            )
            for original, renamed in _RENAMES.items():
                if (staging / original).exists():
                    (staging / original).rename(staging / renamed)
            if component is CLUSTER_API:
                _copy_module_dir(CLUSTER_API, "sigs.k8s.io/cluster-api", "config", staging)
            if component is CERT_MANAGER:
                _copy_module_dir(
                    CERT_MANAGER, "github.com/cert-manager/cert-manager", "deploy/crds", staging
                )
            if component is CAPI_OPERATOR:
                _copy_module_dir(
                    CAPI_OPERATOR, "sigs.k8s.io/cluster-api-operator", "config", staging
                )
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _copy_module_dir(component: Component, module: str, subdir: str, staging: Path) -> None:
    """Keep a directory of the module (CAPI's CRDs and webhook manifests, cert-manager's CRDs)
    beside the binary, under its last path element, so runs need no module cache."""
    listing = _run_go(
        ["mod", "download", "-json", f"{module}@{component.version}"],
        cwd=TOOLCHAIN_DIR / component.module_dir,
        what=f"locating the {module} module",
    )
    target = staging / subdir.rsplit("/", 1)[-1]
    shutil.copytree(Path(json.loads(listing)["Dir"]) / subdir, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def ensure(log: Callable[[str], None] = print) -> Toolchain:
    """Find or build every binary; raises ToolchainError naming the missing piece."""
    found: dict[str, Path] = {}
    for component in COMPONENTS:
        wanted = {b: _from_environment(_RENAMES.get(b, b)) for b in component.binaries}
        if component is not CLUSTER_API and all(wanted.values()):
            found.update({b: p for b, p in wanted.items() if p is not None})
            continue
        _build(component, log)
        for binary in component.binaries:
            name = _RENAMES.get(binary, binary)
            found[name] = wanted[binary] or component.cache_dir / name
    return Toolchain(
        etcd=found["etcd"],
        kube_apiserver=found["kube-apiserver"],
        kube_controller_manager=found["kube-controller-manager"],
        kubectl=found["kubectl"],
        capi_manager=found["cluster-api-manager"],
        clusterctl=found["clusterctl"],
        capi_config=CLUSTER_API.cache_dir / "config",
    )


def kubectl(log: Callable[[str], None]) -> Path:
    """The toolchain's kubectl (built on a miss): the ``capi_remote.kubectl`` entry point, which
    ``capi-remote manifests`` uses when there is no kubectl on PATH."""
    return ensure(log=log).kubectl


@attrs.frozen
class NodeBinaries:
    kubelet: Path
    kube_scheduler: Path
    kube_proxy: Path
    cni_bin_dir: Path  # bridge, host-local, loopback, portmap
    pause: Path


def ensure_node(log: Callable[[str], None] = print) -> NodeBinaries:
    """Find (``TEST_ASSET_KUBELET``, ``TEST_ASSET_KUBE_PROXY``, ..., ``$KUBEBUILDER_ASSETS``) or
    build the kubelet, kube-scheduler and kube-proxy; build (or find in the cache) the CNI plugins
    and pause."""
    wanted = {b: _from_environment(b) for b in NODE.binaries}
    if not all(wanted.values()):
        _build(NODE, log)
    found = {b: wanted[b] or NODE.cache_dir / b for b in NODE.binaries}
    _build(CNI_PLUGINS, log)
    _build(PAUSE, log)
    return NodeBinaries(
        kubelet=found["kubelet"],
        kube_scheduler=found["kube-scheduler"],
        kube_proxy=found["kube-proxy"],
        cni_bin_dir=CNI_PLUGINS.cache_dir,
        pause=PAUSE.cache_dir / "pause",
    )


@attrs.frozen
class CertManager:
    binary: Path  # `cert-manager controller|cainjector --kubeconfig PATH`
    crds: Path  # the module's deploy/crds


def ensure_cert_manager(log: Callable[[str], None] = print) -> CertManager:
    """Build (or find in the cache) cert-manager's controllers and injector and its CRDs."""
    _build(CERT_MANAGER, log)
    return CertManager(
        binary=CERT_MANAGER.cache_dir / "cert-manager", crds=CERT_MANAGER.cache_dir / "crds"
    )


@attrs.frozen
class CapiOperator:
    manager: Path  # the operator's manager binary
    config: Path  # the module's config/ (``kubectl kustomize config/default`` is its release)


def ensure_capi_operator(log: Callable[[str], None] = print) -> CapiOperator:
    """Build (or find in the cache) the Cluster API Operator's manager and its config/."""
    _build(CAPI_OPERATOR, log)
    return CapiOperator(
        manager=CAPI_OPERATOR.cache_dir / "cluster-api-operator",
        config=CAPI_OPERATOR.cache_dir / "config",
    )


def ensure_kubeadm(log: Callable[[str], None] = print) -> Path:
    """Find (``TEST_ASSET_KUBEADM``, ``$KUBEBUILDER_ASSETS``) or build kubeadm."""
    found = _from_environment("kubeadm")
    if found is None:
        _build(KUBEADM, log)
        found = KUBEADM.cache_dir / "kubeadm"
    return found


def ensure_binary(component: Component, log: Callable[[str], None] = print) -> Path:
    """Build (or find in the cache) a one-binary component (CoreDNS, the network probe, the node
    supervisor); returns its binary."""
    (binary,) = component.binaries
    _build(component, log)
    return component.cache_dir / binary


def ensure_node_supervisor(log: Callable[[str], None] = print) -> Path:
    """Build (or find in the cache) the hosts' node supervisor."""
    return ensure_binary(NODE_SUPERVISOR, log)


@attrs.frozen
class KubeadmBinary:
    kubeadm: Path
    node_supervisor: Path


def main(argv: list[str] | None = None) -> int:
    """Print the control plane's binaries, or with ``node``/``kubeadm``/``cert-manager``/
    ``capi-operator`` the node's, kubeadm's, cert-manager's or the Cluster API Operator's
    (building the missing)."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["node"], ["kubeadm"], ["cert-manager"], ["capi-operator"]):
        print(
            "usage: python -m capi_remote_testbed.toolchain "
            "[node|kubeadm|cert-manager|capi-operator]",
            file=sys.stderr,
        )
        return 2
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        built: Toolchain | NodeBinaries | KubeadmBinary | CertManager | CapiOperator
        if args == ["kubeadm"]:
            built = KubeadmBinary(ensure_kubeadm(log), ensure_node_supervisor(log))
        elif args == ["cert-manager"]:
            built = ensure_cert_manager(log)
        elif args == ["capi-operator"]:
            built = ensure_capi_operator(log)
        else:
            built = ensure_node(log) if args else ensure(log)
    except ToolchainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for field in attrs.fields(type(built)):
        print(f"{field.name}: {getattr(built, field.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
