"""The host lock's temporary file (issue 13, point 6): its name is unpredictable, so a local user
of the host who plants a symlink at the old name (``<lock>.<pid>``) in a world-writable lock
directory cannot make the root-run helper overwrite another file."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from capi_remote.ssh import hostscript


def run_with_planted_symlink(lock: Path, victim: Path) -> subprocess.CompletedProcess[str]:
    """Plant ``<lock>.$$`` -> victim, then exec the helper in the same process (same pid)."""
    helper = hostscript.begin(
        state_root=str(lock.parent.parent / "state"),
        machine_uid="uid",
        plan_digest="d" * 64,
        lock=str(lock),
        owner="controller-1",
        stale_after=60,
        sentinel=str(lock.parent.parent / "sentinel"),
    )
    attacker = f'ln -s {shlex.quote(str(victim))} "{lock}.$$" && exec {helper}'
    return subprocess.run(
        ["sh", "-c", attacker], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_planted_symlink_at_the_old_temporary_name_is_not_followed(tmp_path: Path) -> None:
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir(mode=0o1777)
    lock = lock_dir / "capi-remote.lock"
    victim = tmp_path / "shadow"
    victim.write_text("root:secret-hash\n")
    result = run_with_planted_symlink(lock, victim)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "root:secret-hash\n"
    owner, _, _ = lock.read_text().split()
    assert owner == "controller-1" and not lock.is_symlink()
    leftovers = sorted(p.name for p in lock_dir.iterdir() if not p.is_symlink())
    assert leftovers == ["capi-remote.lock", "capi-remote.lock.guard"]
