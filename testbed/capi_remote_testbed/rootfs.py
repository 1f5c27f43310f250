"""A minimal Debian root filesystem for the namespaced test hosts, built once and cached.

The hosts mount it read-only as the lowest overlay layer, so one copy on disk serves every host of
every fleet. It is built with ``debootstrap --variant=minbase`` into a temporary directory that is
renamed into place only when complete: an interrupted build is never mistaken for a good cache.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from capi_remote_testbed.locks import build_lock

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: What a test host needs: sshd, sudo for the privilege tests, ip/ps for debugging inside a host,
#: and python3 because configuration tools (and our bootstrap scripts) commonly expect it.
PACKAGES: tuple[str, ...] = (
    "openssh-server",
    "sudo",
    "iproute2",
    "procps",
    "python3-minimal",
    # Bootstrap scripts in the e2e suite talk to an API server, as real ones do.
    "curl",
    "ca-certificates",
)
#: Bump when the post-processing below changes, so old caches are not reused.
RECIPE_VERSION = 1
#: Written last inside the build directory; a cache entry without it is not trusted.
COMPLETE_MARKER = ".capi-remote-rootfs-complete"

# Paths (relative to the rootfs) removed after the build: nothing a test host needs at run time.
_STRIP = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/linda",
    "usr/share/locale",
)


def cache_root() -> Path:
    """Where test-bed caches live: ``$CAPI_REMOTE_CACHE`` or ``~/.cache/capi-remote``."""
    env = os.environ.get("CAPI_REMOTE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "capi-remote"


def rootfs_name(suite: str = SUITE, packages: Sequence[str] = PACKAGES) -> str:
    """Cache key: changes whenever the suite, the package list or the recipe changes."""
    digest = hashlib.sha256(
        "\n".join([suite, str(RECIPE_VERSION), *sorted(set(packages))]).encode()
    ).hexdigest()[:12]
    return f"{suite}-minbase-{digest}"


def rootfs_path(suite: str = SUITE, packages: Sequence[str] = PACKAGES) -> Path:
    """The directory the rootfs lives in once built (it may not exist yet)."""
    return cache_root() / "rootfs" / rootfs_name(suite, packages)


def is_complete(path: Path) -> bool:
    """True if ``path`` is a finished build (renamed into place, with its marker)."""
    return (path / COMPLETE_MARKER).is_file() and (path / "usr/sbin/sshd").is_file()


def ensure_rootfs(
    suite: str = SUITE,
    packages: Sequence[str] = PACKAGES,
    *,
    mirror: str = MIRROR,
    log: Path | None = None,
) -> Path:
    """Return the cached rootfs, building it first if needed (needs root and network to the mirror).

    Takes ~20-60 s cold; instant afterwards.
    """
    final = rootfs_path(suite, packages)
    if is_complete(final):
        return final
    if os.geteuid() != 0:
        raise PermissionError("building the test-host rootfs needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise FileNotFoundError("debootstrap is not installed: run `make system-deps`")
    parent = final.parent
    with build_lock(parent / f".{final.name}.lock"):
        if is_complete(final):  # another process built it while we waited
            return final
        _remove_stale_builds(parent, final.name)
        if final.exists():  # a complete-looking dir without its marker: not trusted
            _remove_tree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=parent))
        try:
            _debootstrap(tmp, suite, packages, mirror, log or parent / f"{final.name}.build.log")
            _postprocess(tmp)
            (tmp / COMPLETE_MARKER).write_text(f"{suite} {' '.join(sorted(packages))}\n")
            tmp.chmod(0o755)
            tmp.rename(final)  # atomic: same directory, same filesystem
        except BaseException:
            _remove_tree(tmp)
            raise
    return final


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Delete temp dirs left by interrupted builds (we hold the build lock, so none is live)."""
    for stale in parent.glob(f".tmp-{name}-*"):
        _remove_tree(stale)


def _remove_tree(path: Path) -> None:
    """rmtree that first detaches mounts below ``path``.

    A killed debootstrap leaves /proc (and possibly /dev, /sys) mounted inside its target, and a
    plain rmtree would walk into them: into the real /dev, in the worst case.
    """
    prefix = f"{path.resolve()}/"
    points = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    still = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    if still:
        raise RuntimeError(f"cannot unmount {still}; not deleting {path}")
    shutil.rmtree(path, ignore_errors=True)


def _debootstrap(target: Path, suite: str, packages: Sequence[str], mirror: str, log: Path) -> None:
    """Run debootstrap; its (long) output goes to a log file, quoted on failure."""
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(sorted(set(packages)))}",
        "--components=main",
        suite,
        str(target),
        mirror,
    ]
    with open(log, "wb") as out:
        # Own process group, so an interrupted build can kill debootstrap's children too.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(
            f"debootstrap failed (exit {proc.returncode}); log {log}:\n" + "\n".join(tail)
        )


def _postprocess(root: Path) -> None:
    """Make the tree small and host-neutral: no caches, docs, or host keys of its own."""
    for rel in _STRIP:
        path = root / rel
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    for logfile in (root / "var/log").rglob("*"):
        if logfile.is_file() and not logfile.is_symlink():
            logfile.write_bytes(b"")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Each host gets its own identity at start; a shared one would make hosts indistinguishable.
    for rel in ("etc/machine-id", "var/lib/dbus/machine-id"):
        path = root / rel
        if path.is_file() and not path.is_symlink():
            path.write_text("")
    # The build machine's resolver config means nothing inside a host without a route out.
    resolv = root / "etc/resolv.conf"
    if resolv.exists() or resolv.is_symlink():
        resolv.unlink()
    resolv.write_text("")
    # Mount points the host init script uses.
    for rel in ("proc", "sys", "dev", "run", "tmp", ".oldroot"):
        (root / rel).mkdir(exist_ok=True)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capi_remote_testbed.rootfs",
        description="Build (or find in the cache) the rootfs of the namespaced test hosts.",
    )
    parser.parse_args(argv)
    start = time.monotonic()
    path = ensure_rootfs()
    print(f"{path} ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
