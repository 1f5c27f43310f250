"""The controller image, built locally with podman where no container registry is reachable.

- Base image: the public Containerfile starts from python:3.11-slim, which cannot be pulled here.
  ``debootstrap --variant=minbase bookworm`` with python3 and python3-venv (Debian's python3 is
  3.11) gives an equivalent. Its tarball is cached under ``<cache>/images/`` and imported with
  ``podman import`` as ``localhost/capi-remote-base:bookworm``, labelled with the recipe hash so a
  changed recipe is never served from an old import. Builds name it by digest
  (``localhost/capi-remote-base@sha256:...``), as they must name any base.
- podman 4.3 (Debian) fails with its defaults on this kind of machine (crun setrlimit errors): we
  point it at our own containers.conf (runc, explicit ulimits) through ``CONTAINERS_CONF`` rather
  than changing the machine's configuration.
- pip inside the build meets a TLS-intercepting proxy whose CA lives in
  /usr/local/share/ca-certificates: the host's CA bundle goes in as a build *secret* (mounted for
  one step, never in a layer). ``--offline`` instead builds a wheelhouse on the host
  (``pip wheel``) and the build installs from it with ``--no-index``.

``python -m capi_remote_testbed.image base|build`` (``make image``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from capi_remote_testbed.locks import build_lock
from capi_remote_testbed.toolchain import cache_root

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CONTAINERFILE = REPO_ROOT / "Containerfile"
#: Relative to the build context (.containerignore lets it in).
WHEELHOUSE = Path("build/wheels")

SUITE = "bookworm"
BASE_REPOSITORY = "localhost/capi-remote-base"
BASE_IMAGE = f"{BASE_REPOSITORY}:{SUITE}"
DEFAULT_TAG = "localhost/capi-remote:dev"
MIRROR = "http://deb.debian.org/debian"
#: python3-venv brings ensurepip; ca-certificates and netbase are what python:3.11-slim also has.
BASE_PACKAGES = ("ca-certificates", "netbase", "python3", "python3-venv")
#: Bump when the base image recipe below changes.
BASE_RECIPE_VERSION = 1
_RECIPE_LABEL = "io.capi-remote.base-recipe"
#: Set on the Containerfile's builder stage.
_BUILDER_LABEL = "io.capi-remote.stage=builder"
#: Removed from the base rootfs: nothing a Python process needs at run time.
_STRIP = ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man", "usr/share/info")

CONTAINERS_CONF = """\
# Written by capi_remote_testbed.image; used through CONTAINERS_CONF by our podman calls only.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""

_HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_EXTRA_CAS = Path("/usr/local/share/ca-certificates")


class ImageError(RuntimeError):
    """podman, debootstrap or pip failed; the message carries the command and its output tail."""


def images_dir() -> Path:
    path = cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def containers_conf() -> Path:
    path = images_dir() / "containers.conf"
    if not path.is_file() or path.read_text() != CONTAINERS_CONF:
        path.write_text(CONTAINERS_CONF)
    return path


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run podman with our containers.conf; raises :class:`ImageError` on failure if ``check``."""
    if shutil.which("podman") is None:
        raise ImageError("podman is not installed: run `make system-deps` (podman, runc)")
    env = {**os.environ, "CONTAINERS_CONF": str(containers_conf())}
    proc = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:3])} failed: {_tail(proc.stderr or proc.stdout)}")
    return proc


def default_ca_bundle() -> Path | None:
    """The host's CA bundle when the machine trusts extra CAs (a re-signing proxy), else None."""
    if _HOST_BUNDLE.is_file() and any(_EXTRA_CAS.glob("**/*.crt")):
        return _HOST_BUNDLE
    return None


def base_recipe() -> str:
    """Identifies the base image's contents: part of the tarball's name and the image's label."""
    digest = hashlib.sha256(
        "\n".join([SUITE, str(BASE_RECIPE_VERSION), *BASE_PACKAGES]).encode()
    ).hexdigest()
    return digest[:12]


def ensure_base_image(log: Callable[[str], None] = print) -> str:
    """Import the cached base tarball (building it first if needed) unless podman has it already.

    Returns the base by digest, ``localhost/capi-remote-base@sha256:...``.
    """
    recipe = base_recipe()
    with build_lock(images_dir() / ".base.lock"):
        if _image_label(BASE_IMAGE, _RECIPE_LABEL) != recipe:
            _import_base(recipe, log)
        return pinned(BASE_IMAGE, BASE_REPOSITORY)


def pinned(image: str, repository: str) -> str:
    """The local ``image`` as ``repository@sha256:...``, the form a build's FROM must take."""
    digest = podman("image", "inspect", "--format", "{{.Digest}}", image).stdout.strip()
    if not digest.startswith("sha256:"):
        raise ImageError(f"podman reports no digest for {image}: {digest!r}")
    return f"{repository}@{digest}"


def _import_base(recipe: str, log: Callable[[str], None]) -> None:
    """Under the base lock: the tarball (built if missing) imported as ``BASE_IMAGE``."""
    tarball = images_dir() / f"capi-remote-base-{SUITE}-{recipe}.tar"
    if not tarball.is_file():
        log(f"building the base image rootfs with debootstrap into {tarball} (about a minute)")
        _build_base_tarball(tarball)
    log(f"importing {tarball} as {BASE_IMAGE}")
    podman(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        f"LABEL {_RECIPE_LABEL}={recipe}",
        "--change",
        'CMD ["python3"]',
        str(tarball),
        BASE_IMAGE,
    )


def build_image(
    tag: str = DEFAULT_TAG,
    *,
    base: str | None = None,
    offline: bool = False,
    ca_bundle: Path | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Build the Containerfile into ``tag`` on ``base`` (``name@sha256:...``; default: the local
    Debian base, by its digest)."""
    if base is not None and "@sha256:" not in base:
        raise ImageError(f"--base {base}: name the base by digest (name@sha256:...), not a tag")
    args = ["build", "--file", str(CONTAINERFILE), "--tag", tag]
    args += ["--build-arg", f"BASE_IMAGE={base or ensure_base_image(log)}"]
    if offline:
        _build_wheelhouse(log)
        args += ["--build-arg", f"WHEELHOUSE={WHEELHOUSE}"]
    elif ca_bundle is not None:
        args += ["--secret", f"id=ca-certificates,src={ca_bundle}"]
    # One build at a time: the clean-up below must not prune a concurrent build's builder stage.
    with build_lock(images_dir() / ".build.lock"):
        previous = _image_id(tag)
        log(f"building {tag}")
        podman(*args, str(REPO_ROOT))
        # A rebuild leaves the untagged builder stage and the previous image (~300 MB each).
        podman("image", "prune", "--force", "--filter", f"label={_BUILDER_LABEL}")
        if previous and previous != _image_id(tag):
            podman("image", "rm", previous, check=False)  # kept if a container still uses it
    return tag


def saved_image(ref: str, archive: Path) -> Path:
    """`make image` tagged ``ref``, saved to ``archive`` for a node's ``ctr images import`` (what
    docs/deployment.md tells a user with a cluster that cannot pull from the build machine)."""
    tag = build_image(ref, ca_bundle=default_ca_bundle())
    podman("save", "-o", str(archive), tag)
    return archive


def _build_wheelhouse(log: Callable[[str], None]) -> None:
    """Wheels of the project and every dependency, made by the host's pip (which has its CAs).

    Compiled wheels are for the host's Python, so it must be the image's: 3.11.
    """
    if sys.version_info[:2] != (3, 11):
        raise ImageError(
            f"--offline builds wheels for this Python ({sys.version.split()[0]}); "
            "run it with Python 3.11, the image's"
        )
    target = REPO_ROOT / WHEELHOUSE
    shutil.rmtree(target, ignore_errors=True)
    log(f"building the wheelhouse in {target}")
    _clean_setuptools_build()  # files deleted from the tree must not linger in the wheel
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(target), "."],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        _clean_setuptools_build()
    if proc.returncode != 0:
        raise ImageError(f"pip wheel failed: {_tail(proc.stderr or proc.stdout)}")


def _clean_setuptools_build() -> None:
    """setuptools' in-tree scratch directories (build/lib, build/bdist.*)."""
    for scratch in [REPO_ROOT / "build" / "lib", *(REPO_ROOT / "build").glob("bdist.*")]:
        shutil.rmtree(scratch, ignore_errors=True)


def _image_id(image: str) -> str | None:
    proc = podman("image", "inspect", "--format", "{{.Id}}", image, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _image_label(image: str, label: str) -> str | None:
    proc = podman(
        "image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', image, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _build_base_tarball(tarball: Path) -> None:
    """debootstrap into a scratch directory, slim it, tar it; the tarball appears atomically."""
    if os.geteuid() != 0:
        raise ImageError("building the base image needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: run `make system-deps`")
    # Under the base lock: leftovers of interrupted builds and tarballs of older recipes go.
    for stale in [*tarball.parent.glob(".base-*"), *tarball.parent.glob("capi-remote-base-*.tar")]:
        if stale.is_dir():
            _discard(stale)
        else:
            stale.unlink()
    scratch = Path(tempfile.mkdtemp(prefix=".base-", dir=tarball.parent))
    root = scratch / "rootfs"
    partial = scratch / "base.tar"
    try:
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "--components=main",
                SUITE,
                str(root),
                MIRROR,
            ],
            "debootstrap",
        )
        for rel in _STRIP:
            shutil.rmtree(root / rel, ignore_errors=True)
            (root / rel).mkdir(parents=True, exist_ok=True)
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], "tar")
        partial.rename(tarball)
    finally:
        _discard(scratch)


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(
            f"{what} failed (exit {proc.returncode}): {_tail(proc.stdout + proc.stderr)}"
        )


def _discard(path: Path) -> None:
    """rmtree that first unmounts what an interrupted debootstrap left mounted (/proc, /sys), and
    refuses if that fails rather than walk into the real /proc or /dev."""
    for point in sorted(_mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if remaining := _mounts_below(path):
        raise ImageError(f"cannot unmount {remaining}; not deleting {path}")
    shutil.rmtree(path, ignore_errors=True)


def _mounts_below(path: Path) -> list[str]:
    prefix = f"{path.resolve()}/"
    points = (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return [point for point in points if point.startswith(prefix)]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capi_remote_testbed.image",
        description="Build the controller image with podman, without a container registry.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("base", help=f"build or import {BASE_IMAGE}; prints it by digest")
    build = commands.add_parser("build", help="build the controller image")
    build.add_argument("--tag", default=DEFAULT_TAG)
    build.add_argument(
        "--base",
        help=f"base image by digest (default: {BASE_IMAGE}, built locally, by its digest); "
        "e.g. python:3.11-slim@sha256:...",
    )
    build.add_argument(
        "--offline",
        action="store_true",
        help=f"install from a wheelhouse built on the host ({WHEELHOUSE}) instead of PyPI",
    )
    build.add_argument(
        "--ca-bundle",
        type=Path,
        default=default_ca_bundle(),
        help="CA bundle for pip inside the build, passed as a secret "
        "(default: the host's, if it trusts extra CAs)",
    )
    build.add_argument("--no-ca-bundle", dest="ca_bundle", action="store_const", const=None)
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    start = time.monotonic()
    try:
        if args.command == "base":
            image = ensure_base_image(log)
        else:
            image = build_image(
                args.tag, base=args.base, offline=args.offline, ca_bundle=args.ca_bundle, log=log
            )
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{image} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
