"""The host lock (issue 13, point 6): it lives in a directory only root controls. In a
world-writable directory (``/run/lock``, where it used to be) a local user of the host could
pre-create the lock or its guard and hold the host, or plant symlinks at the names the root-run
helper writes; so the helper creates its directory mode 0700 and refuses one that is a symlink,
owned by another user or writable by others, saying why, before it touches anything there. Its
temporary file has an unpredictable name all the same."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from capi_remote.ssh import SSHSettings, UnsafeLockDirectory, hostscript, jobscript
from tests.unit.test_ssh_executor import make_host, plan_of
from tests.unit.test_ssh_jobscript import run_script

NOBODY = 65534


def begin(lock: Path, prefix: str = "") -> subprocess.CompletedProcess[str]:
    """The begin helper as root, after the shell command ``prefix`` (in the same process)."""
    helper = hostscript.begin(
        state_root=str(lock.parent.parent / "state"),
        machine_uid="uid",
        plan_digest="d" * 64,
        lock=str(lock),
        owner="controller-1",
        stale_after=60,
        sentinel=str(lock.parent.parent / "sentinel"),
    )
    script = f"{prefix} && exec {helper}" if prefix else f"exec {helper}"
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def refused(result: subprocess.CompletedProcess[str]) -> str:
    reply = hostscript.Reply.parse(result.stdout.encode())
    answer = reply.get("unsafe-lock")
    assert answer is not None, result.stdout + result.stderr
    assert not reply.has("ready")
    return " ".join(answer)


def test_the_default_lock_is_not_in_a_world_writable_directory() -> None:
    assert not SSHSettings().lock_path.startswith("/run/lock/")


def test_a_missing_lock_directory_is_created_private_and_used(tmp_path: Path) -> None:
    lock = tmp_path / "run" / "capi-remote" / "host.lock"
    result = begin(lock)
    assert hostscript.Reply.parse(result.stdout.encode()).has("ready"), result.stderr
    assert (lock.parent.stat().st_mode & 0o777) == 0o700
    assert lock.read_text().split()[0] == "controller-1"


def test_a_world_writable_directory_with_a_planted_lock_is_refused(tmp_path: Path) -> None:
    """The attack: a local user pre-creates the lock (a live-looking owner) in /run/lock."""
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir()
    lock_dir.chmod(0o1777)
    lock = lock_dir / "host.lock"
    lock.write_text("attacker 1 boot\n")
    assert "writable by others (mode 1777)" in refused(begin(lock))
    assert lock.read_text() == "attacker 1 boot\n"  # neither taken over nor trusted
    assert not (lock_dir / "host.lock.guard").exists()
    assert not (tmp_path / "state").exists(), "nothing else was touched"


def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory away")
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir(mode=0o700)
    os.chown(lock_dir, NOBODY, NOBODY)
    assert f"owned by uid {NOBODY}, not 0" in refused(begin(lock_dir / "host.lock"))


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "lock").symlink_to(elsewhere)
    assert "is not a directory" in refused(begin(tmp_path / "lock" / "host.lock"))
    assert list(elsewhere.iterdir()) == []


def test_a_planted_symlink_at_the_old_temporary_name_is_not_followed(tmp_path: Path) -> None:
    lock_dir = tmp_path / "lock"
    lock_dir.mkdir(mode=0o700)
    lock = lock_dir / "host.lock"
    victim = tmp_path / "shadow"
    victim.write_text("root:secret-hash\n")
    plant = f'ln -s {shlex.quote(str(victim))} "{lock}.$$"'
    result = begin(lock, plant)
    assert hostscript.Reply.parse(result.stdout.encode()).has("ready"), result.stderr
    assert victim.read_text() == "root:secret-hash\n"
    assert lock.read_text().split()[0] == "controller-1" and not lock.is_symlink()


def test_the_runner_and_a_provisioning_job_refuse_it_and_run_nothing(tmp_path: Path) -> None:
    """Both drivers of the helpers say so in their own terms; no step runs."""
    host = make_host(tmp_path)
    host.lock.parent.mkdir(parents=True)
    host.lock.parent.chmod(0o1777)
    plan = plan_of(host.count("a"), host.finish_step())
    with pytest.raises(UnsafeLockDirectory) as raised:
        host.run(plan)
    assert not raised.value.retryable and "writable by others" in raised.value.message
    failure = jobscript.classify_failure(run_script(host, plan).stdout)
    assert (failure.reason, failure.retryable) == ("UnsafeLockDirectory", False)
    assert "writable by others" in failure.message
    assert host.counter("a") == 0
