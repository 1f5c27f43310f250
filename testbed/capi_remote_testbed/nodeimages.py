"""The container images of the test bed's node, made here because no registry is reachable.

One OCI archive, imported into containerd (``ctr images import``), with three images:
:data:`SSH_CLIENT_IMAGE`, whose one layer is the test hosts' Debian rootfs (``sh``, ``ssh``,
``scp``, ``python3``, ``curl``), for Jobs and test Pods; :data:`TSH_IMAGE`, that rootfs plus a
layer with a stand-in for Teleport's ``tsh`` and an identity of its own (a key pair made with the
archive; :func:`image_identity` gives its public half, for a test to authorise on its hosts), for
provisioning Jobs whose commands log in themselves; and :data:`PAUSE_IMAGE`, whose one layer is
our static ``pause`` binary (built from ``toolchain/pause``), containerd's sandbox image. Pods
must use ``imagePullPolicy: Never`` or ``IfNotPresent``.

Invariant: the archive's name carries a hash of its recipe (:data:`IMAGE_RECIPE_VERSION`, the
rootfs, the pause binary's pins, the tags), and it appears atomically under a lock, so a cached
archive is never stale or half-written.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capi_remote_testbed import rootfs
from capi_remote_testbed.locks import build_lock
from capi_remote_testbed.toolchain import cache_root

SSH_CLIENT_IMAGE = "localhost/capi-remote-sshclient:test"
TSH_IMAGE = "localhost/capi-remote-tsh:test"
PAUSE_IMAGE = "localhost/capi-remote-pause:test"
#: Bump when the image recipe below changes (the tsh stand-in's text is part of the recipe).
IMAGE_RECIPE_VERSION = 3
#: Where TSH_IMAGE keeps its identity: the path k0smotron's Teleport guide mounts it at.
TSH_IDENTITY = "/identity-output/identity"

#: ``tsh [-i identity] [--proxy address] ssh|scp ARGS...`` through OpenSSH with the identity. Like
#: tsh it verifies the host itself: against the known_hosts lines in $TSH_KNOWN_HOSTS (Teleport
#: checks a node's certificate against its cluster's CA), and it refuses to run without them.
_TSH_STANDIN = f"""#!/bin/sh
# capi-remote test bed: a stand-in for Teleport's tsh (ssh and scp only).
identity={TSH_IDENTITY}
while [ $# -gt 0 ]; do
  case $1 in
    -i) identity=$2; shift 2 ;;
    --proxy) shift 2 ;;
    --proxy=*) shift ;;
    ssh|scp) break ;;
    *) echo "tsh: unknown option $1" >&2; exit 2 ;;
  esac
done
case ${{1:-}} in
  ssh|scp) ;;
  *) echo "tsh: usage: tsh [-i file] [--proxy addr] ssh|scp" >&2; exit 2 ;;
esac
if [ -z "${{TSH_KNOWN_HOSTS:-}}" ]; then
  echo "tsh: no trusted host keys (TSH_KNOWN_HOSTS)" >&2
  exit 2
fi
tool=$1; shift
known=$(mktemp) || exit 2
printf '%s\n' "$TSH_KNOWN_HOSTS" > "$known"
"$tool" -i "$identity" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
  -o "UserKnownHostsFile=$known" -o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR "$@"
rc=$?
rm -f "$known"
exit $rc
"""


def _layer_tar(source: Path, out: io.BufferedWriter) -> None:
    """A reproducible tar of the directory ``source`` (sorted, fixed mtimes for nothing:
    ownership and modes are what matter), or of the one file ``source`` as ``/<its name>``."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if source.is_file():
            with source.open("rb") as data:
                tar.addfile(tar.gettarinfo(str(source), source.name), data)
            return
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                full = Path(dirpath) / name
                arcname = str(full.relative_to(source))
                if arcname == rootfs.COMPLETE_MARKER:
                    continue
                info = tar.gettarinfo(str(full), arcname)
                if info.isreg():
                    with full.open("rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)


def _blob(directory: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (directory / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layer(work: Path, source: Path) -> tuple[dict[str, Any], str]:
    """Write ``source`` as a gzip layer blob; returns its descriptor and its diff id."""
    raw = work / "layer.tar"
    with raw.open("wb") as out:
        _layer_tar(source, out)
    diff_id = hashlib.sha256()
    with raw.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            diff_id.update(chunk)
    gz_path = work / "layer.tar.gz"
    with raw.open("rb") as data, gzip.GzipFile(gz_path, "wb", compresslevel=1, mtime=0) as gz:
        shutil.copyfileobj(data, gz, 1 << 20)
    raw.unlink()
    layer_digest = hashlib.sha256()
    with gz_path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            layer_digest.update(chunk)
    layer = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": f"sha256:{layer_digest.hexdigest()}",
        "size": gz_path.stat().st_size,
    }
    gz_path.rename(work / "blobs" / "sha256" / layer_digest.hexdigest())
    return layer, f"sha256:{diff_id.hexdigest()}"


def _identity_path(archive: Path) -> Path:
    return archive.with_name(f"{archive.name}.identity.pub")


def image_identity(archive: Path) -> str:
    """The public key (``ssh-ed25519 AAAA...``) of TSH_IMAGE's identity in ``archive``."""
    return _identity_path(archive).read_text().strip()


def _tsh_layer(directory: Path, private_openssh: str) -> Path:
    """The files TSH_IMAGE adds to the rootfs: the stand-in and its identity (root only)."""
    tool = directory / "usr" / "local" / "bin" / "tsh"
    tool.parent.mkdir(parents=True)
    tool.write_text(_TSH_STANDIN)
    tool.chmod(0o755)
    identity = directory / TSH_IDENTITY.lstrip("/")
    identity.parent.mkdir(parents=True)
    identity.write_text(private_openssh)
    identity.chmod(0o600)
    return directory


def build_image_archive(path: Path, source: Path, pause: Path) -> None:
    """An OCI archive (``oci-layout`` + ``index.json`` + blobs) holding the three images, and
    next to it the public half of TSH_IMAGE's identity (:func:`image_identity`)."""
    work = Path(tempfile.mkdtemp(prefix=".oci-", dir=path.parent))
    try:
        (work / "blobs" / "sha256").mkdir(parents=True)
        # Here: the hosts package builds its node layer from this module's images.
        from capi_remote_testbed.hosts.keys import SshKey

        identity = SshKey.generate()
        rootfs_layer = oci_layer(work, source)
        tsh_layer = oci_layer(work, _tsh_layer(work / "tsh-layer", identity.private_openssh))
        images = (
            (SSH_CLIENT_IMAGE, [rootfs_layer], {"Cmd": ["/bin/sh"]}),
            (TSH_IMAGE, [rootfs_layer, tsh_layer], {"Cmd": ["/bin/sh"]}),
            (PAUSE_IMAGE, [oci_layer(work, pause)], {"Entrypoint": [f"/{pause.name}"]}),
        )
        manifests = [oci_image(work, ref, layers, command) for ref, layers, command in images]
        _identity_path(path).write_text(identity.public + "\n")
        write_oci_archive(path, work, manifests)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def oci_image(
    work: Path, ref: str, layers: Sequence[tuple[dict[str, Any], str]], command: dict[str, Any]
) -> dict[str, Any]:
    """One image's config and manifest blobs in ``work`` over ``layers`` (from
    :func:`oci_layer`, bottom first); returns its index entry."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            **command,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
    }
    config_blob = _blob(work, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": [layer for layer, _ in layers],
    }
    manifest_blob = _blob(work, json.dumps(manifest, sort_keys=True).encode())
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **manifest_blob,
        "annotations": {"io.containerd.image.name": ref},
        "platform": {"architecture": "amd64", "os": "linux"},
    }


def write_oci_archive(path: Path, work: Path, manifests: list[dict[str, Any]]) -> None:
    """Tar ``work``'s OCI layout with ``manifests`` as its index; appears atomically at ``path``."""
    (work / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (work / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": manifests}, sort_keys=True)
    )
    staging = path.with_name(f".{path.name}.tmp")
    with tarfile.open(staging, "w") as archive:
        for entry in ("oci-layout", "index.json", "blobs"):
            archive.add(work / entry, entry)
    staging.rename(path)


def write_binary_images(
    path: Path,
    images: Sequence[tuple[str, Path, str]],
    bases: Mapping[str, Path] | None = None,
) -> None:
    """An OCI archive at ``path`` of single-binary images: for each ``(ref, binary, inside)``,
    one layer holding ``binary`` at ``inside`` (a relative path), which is its entrypoint, over
    the directory ``bases[ref]`` as a layer of its own if there is one (what the binary runs)."""
    work = Path(tempfile.mkdtemp(prefix=".oci-", dir=path.parent))
    try:
        (work / "blobs" / "sha256").mkdir(parents=True)
        manifests = []
        for ref, binary, inside in images:
            base = (bases or {}).get(ref)
            layers = [oci_layer(work, base)] if base else []
            tree = work / "tree"
            target = tree / inside
            target.parent.mkdir(parents=True)
            for directory in (tree, *target.parent.relative_to(tree).parents, target.parent):
                (tree / directory).chmod(0o755)  # not the umask's
            try:
                os.link(binary, target)  # same file system as the cache: no copy
            except OSError:
                shutil.copy2(binary, target)
            layers.append(oci_layer(work, tree))
            command = {"Entrypoint": [f"/{inside}"]}
            manifests.append(oci_image(work, ref, layers, command))
            shutil.rmtree(tree)
        write_oci_archive(path, work, manifests)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_image_archive(pause: Path, log: Callable[[str], None] = print) -> Path:
    """The cached OCI archive of the node's images, built from the hosts' rootfs and the ``pause``
    binary (its cache directory's name carries its pins) on a miss."""
    source = rootfs.ensure_rootfs()
    recipe = hashlib.sha256(
        f"{IMAGE_RECIPE_VERSION}\n{source.name}\n{pause.parent.name}\n{_TSH_STANDIN}\n"
        f"{SSH_CLIENT_IMAGE}\n{TSH_IMAGE}\n{PAUSE_IMAGE}".encode()
    ).hexdigest()[:12]
    images = cache_root() / "images"
    archive = images / f"node-images-{recipe}.oci.tar"
    with build_lock(images / ".node-images.lock"):
        if not archive.is_file():
            log(f"building the node's images from {source} into {archive}")
            build_image_archive(archive, source, pause)
    return archive
