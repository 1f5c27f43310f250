"""The node's image archive: three images, the pause image holding only our static binary as its
entrypoint (so no sandbox image is ever pulled), all addressable by digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from capi_remote_testbed import kubeadmimages
from capi_remote_testbed.nodeimages import (
    PAUSE_IMAGE,
    SSH_CLIENT_IMAGE,
    TSH_IDENTITY,
    TSH_IMAGE,
    build_image_archive,
    image_identity,
)


def _read(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    assert member is not None
    return member.read()


def _blob(archive: tarfile.TarFile, descriptor: dict[str, Any]) -> bytes:
    data = _read(archive, "blobs/sha256/" + descriptor["digest"].removeprefix("sha256:"))
    assert hashlib.sha256(data).hexdigest() == descriptor["digest"].removeprefix("sha256:")
    assert len(data) == descriptor["size"]
    return data


def test_the_archive_holds_a_rootfs_image_a_tsh_image_and_a_pause_image_of_one_binary(
    tmp_path: Path,
) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "sh").write_bytes(b"#!shell")
    pause = tmp_path / "bin" / "pause"
    pause.parent.mkdir()
    pause.write_bytes(b"\x7fELF pause")
    archive_path = tmp_path / "images.oci.tar"

    build_image_archive(archive_path, rootfs, pause)

    images: dict[str, tuple[dict[str, Any], list[list[str]], dict[str, bytes]]] = {}
    with tarfile.open(archive_path) as archive:
        index = json.loads(_read(archive, "index.json"))
        for entry in index["manifests"]:
            manifest = json.loads(_blob(archive, entry))
            config = json.loads(_blob(archive, manifest["config"]))
            raws = [gzip.decompress(_blob(archive, layer)) for layer in manifest["layers"]]
            assert config["rootfs"]["diff_ids"] == [
                f"sha256:{hashlib.sha256(raw).hexdigest()}" for raw in raws
            ]
            layers, files = [], {}
            for raw in raws:
                with tarfile.open(fileobj=io.BytesIO(raw)) as layer_tar:
                    layers.append(layer_tar.getnames())
                    for member in layer_tar.getmembers():
                        data = layer_tar.extractfile(member) if member.isreg() else None
                        if data is not None:
                            files[member.name] = data.read()
            images[entry["annotations"]["io.containerd.image.name"]] = (
                config["config"],
                layers,
                files,
            )

    assert set(images) == {SSH_CLIENT_IMAGE, TSH_IMAGE, PAUSE_IMAGE}
    pause_config, pause_layers, _ = images[PAUSE_IMAGE]
    assert pause_layers == [["pause"]]
    assert pause_config["Entrypoint"] == ["/pause"]
    client_config, client_layers, _ = images[SSH_CLIENT_IMAGE]
    assert "bin/sh" in client_layers[0] and len(client_layers) == 1
    assert client_config["Cmd"] == ["/bin/sh"]
    # The tsh image is the same rootfs plus the stand-in and its identity, whose public half is
    # next to the archive for tests to authorise.
    _, tsh_layers, tsh_files = images[TSH_IMAGE]
    assert tsh_layers[0] == client_layers[0]
    assert "usr/local/bin/tsh" in tsh_layers[1]
    identity = tsh_files[TSH_IDENTITY.lstrip("/")].decode()
    public = image_identity(archive_path)
    key = serialization.load_ssh_private_key(identity.encode(), password=None)
    derived = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert public.split()[:2] == derived.decode().split()[:2]


def test_kubeadm_images_hold_one_binary_each_under_the_image_repository(tmp_path: Path) -> None:
    binaries = {}
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy",
                 "etcd", "pause", "coredns", "netprobe"):  # fmt: skip
        binaries[name] = tmp_path / "bin" / name
        binaries[name].parent.mkdir(exist_ok=True)
        binaries[name].write_bytes(b"\x7fELF " + name.encode())
    archive_path = tmp_path / "kubeadm.oci.tar"

    kubeadmimages.build_archive(archive_path, binaries)

    found: dict[str, tuple[list[str], list[list[str]]]] = {}
    with tarfile.open(archive_path) as archive:
        for entry in json.loads(_read(archive, "index.json"))["manifests"]:
            manifest = json.loads(_blob(archive, entry))
            config = json.loads(_blob(archive, manifest["config"]))
            layers = []
            for layer in manifest["layers"]:
                data = io.BytesIO(gzip.decompress(_blob(archive, layer)))
                with tarfile.open(fileobj=data) as tar:
                    layers.append([m.name for m in tar.getmembers() if not m.isdir()])
            found[entry["annotations"]["io.containerd.image.name"]] = (
                config["config"]["Entrypoint"],
                layers,
            )
    refs = kubeadmimages.image_refs()
    assert set(found) == set(refs.values())
    assert refs["kube-apiserver"] == f"{kubeadmimages.IMAGE_REPOSITORY}/kube-apiserver:v1.35.4"
    assert refs["etcd"].endswith(f"/etcd:{kubeadmimages.ETCD_IMAGE_TAG}")  # never upstream's tag
    assert refs["pause"] == kubeadmimages.PAUSE_IMAGE
    assert refs["coredns"] == f"{kubeadmimages.IMAGE_REPOSITORY}/coredns:v1.13.1"  # kubeadm's
    for name, ref in refs.items():
        entrypoint, layers = found[ref]
        assert entrypoint == [f"/usr/local/bin/{name}"]
        assert layers[-1] == [f"usr/local/bin/{name}"]
        # kube-proxy runs iptables: a layer of Debian's below its binary, nobody else has one.
        assert len(layers) == (2 if name == "kube-proxy" else 1)
    (iptables, _) = found[refs["kube-proxy"]][1]
    assert {"usr/sbin/iptables", "usr/sbin/ip6tables-restore", "usr/sbin/xtables-nft-multi",
            "lib64/ld-linux-x86-64.so.2"} <= set(iptables)  # fmt: skip
    assert any(name.endswith("/xtables/libxt_statistic.so") for name in iptables)
