"""The container images of the test bed's node, made here because no registry is reachable.

One OCI archive, imported into containerd (``ctr images import``), with two images:
:data:`SSH_CLIENT_IMAGE`, whose one layer is the test hosts' Debian rootfs (``sh``, ``ssh``,
``scp``, ``python3``, ``curl``), for Jobs and test Pods; and :data:`PAUSE_IMAGE`, whose one layer
is our static ``pause`` binary (built from ``toolchain/pause``), containerd's sandbox image. Pods
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capi_remote_testbed import rootfs
from capi_remote_testbed.locks import build_lock
from capi_remote_testbed.toolchain import cache_root

SSH_CLIENT_IMAGE = "localhost/capi-remote-sshclient:test"
PAUSE_IMAGE = "localhost/capi-remote-pause:test"
#: Bump when the image recipe below changes.
IMAGE_RECIPE_VERSION = 2


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


def _layer(work: Path, source: Path) -> tuple[dict[str, Any], str]:
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


def build_image_archive(path: Path, source: Path, pause: Path) -> None:
    """An OCI archive (``oci-layout`` + ``index.json`` + blobs) holding both images."""
    work = Path(tempfile.mkdtemp(prefix=".oci-", dir=path.parent))
    try:
        (work / "blobs" / "sha256").mkdir(parents=True)
        images = (
            (SSH_CLIENT_IMAGE, source, {"Cmd": ["/bin/sh"]}),
            (PAUSE_IMAGE, pause, {"Entrypoint": [f"/{pause.name}"]}),
        )
        manifests = [oci_image(work, ref, source, command) for ref, source, command in images]
        write_oci_archive(path, work, manifests)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def oci_image(work: Path, ref: str, layer_source: Path, command: dict[str, Any]) -> dict[str, Any]:
    """One single-layer image's blobs in ``work``; returns its index entry."""
    layer, diff_id = _layer(work, layer_source)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            **command,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_blob = _blob(work, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": [layer],
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


def ensure_image_archive(pause: Path, log: Callable[[str], None] = print) -> Path:
    """The cached OCI archive of the node's images, built from the hosts' rootfs and the ``pause``
    binary (its cache directory's name carries its pins) on a miss."""
    source = rootfs.ensure_rootfs()
    recipe = hashlib.sha256(
        f"{IMAGE_RECIPE_VERSION}\n{source.name}\n{pause.parent.name}\n"
        f"{SSH_CLIENT_IMAGE}\n{PAUSE_IMAGE}".encode()
    ).hexdigest()[:12]
    images = cache_root() / "images"
    archive = images / f"node-images-{recipe}.oci.tar"
    with build_lock(images / ".node-images.lock"):
        if not archive.is_file():
            log(f"building the node's images from {source} into {archive}")
            build_image_archive(archive, source, pause)
    return archive
