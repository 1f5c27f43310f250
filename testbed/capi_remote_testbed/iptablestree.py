"""Debian's iptables for the kube-proxy image made here: kube-proxy in iptables mode runs
``iptables``, ``iptables-save``, ``iptables-restore`` and their IPv6 twins, which our static
kube-proxy binary cannot carry.

What goes in: this machine's ``xtables-nft-multi`` (the Debian package ``iptables``, installed by
``make system-deps``) under every name kube-proxy calls, its match and target extensions (loaded
with ``dlopen`` from the package's ``xtables`` directory), and the shared libraries those ELF files
need, the dynamic loader included, each at the path the loader searches. The nf_tables backend,
not the legacy one: both work in the hosts' network namespaces on this kernel (checked with the
rules kube-proxy writes), and nf_tables is Debian's default and the kernel's future.

Invariant: :func:`package_versions` names every package a file comes from, so an image built from
this tree is rebuilt when any of them is upgraded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

MULTI = Path("/usr/sbin/xtables-nft-multi")
EXTENSIONS = Path("/usr/lib/x86_64-linux-gnu/xtables")
#: The names kube-proxy runs; the multi-call binary picks its tool by the name it was run as.
COMMANDS = ("iptables", "iptables-save", "iptables-restore",
            "ip6tables", "ip6tables-save", "ip6tables-restore")  # fmt: skip
PACKAGES = ("iptables", "libxtables12", "libnftnl11", "libmnl0", "libnetfilter-conntrack3",
            "libnfnetlink0", "libc6")  # fmt: skip
# ldd's lines: "libx.so.1 => /lib/.../libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)".
_LIBRARY = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")


class IptablesError(RuntimeError):
    """iptables is not installed here, or ldd failed on one of its files."""


def package_versions() -> str:
    """``dpkg-query -W`` of the packages the tree's files come from (part of an image's recipe)."""
    proc = subprocess.run(
        ["dpkg-query", "-W", *PACKAGES], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not MULTI.is_file() or not EXTENSIONS.is_dir():
        raise IptablesError(
            f"the Debian package iptables is needed for kube-proxy's image (`make system-deps`): "
            f"{proc.stderr.strip() or MULTI}"
        )
    return proc.stdout


def _libraries(elf: Path) -> set[Path]:
    proc = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise IptablesError(f"ldd {elf} failed: {proc.stderr.strip()}")
    return {Path(m.group(1)) for line in proc.stdout.splitlines() if (m := _LIBRARY.match(line))}


def _copy(source: Path, tree: Path) -> None:
    """``source`` (symlinks followed) at the same path under ``tree``, directories 0755."""
    target = tree / source.relative_to("/")
    directory = tree
    for part in target.parent.relative_to(tree).parts:
        directory = directory / part
        directory.mkdir(exist_ok=True)
        directory.chmod(0o755)  # not the umask's
    shutil.copyfile(source.resolve(), target)
    target.chmod(0o755)


def build_tree(tree: Path) -> Path:
    """Write the iptables files under the (new, empty) directory ``tree``; returns it."""
    package_versions()
    extensions = sorted(EXTENSIONS.glob("*.so"))
    elves = [MULTI, *extensions]
    files = set(elves).union(*(_libraries(elf) for elf in elves))
    tree.mkdir(mode=0o755)
    for source in sorted(files):
        _copy(source, tree)
    for command in COMMANDS:
        (tree / MULTI.parent.relative_to("/") / command).symlink_to(MULTI.name)
    return tree
