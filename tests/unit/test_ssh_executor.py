"""The executor's decisions, against a fake transport that runs the helpers in a local ``sh``.

The fake is honest about the host side: the real helper scripts run, only with the on-host paths
(state root, lock, sentinel) moved into a temp dir. So these tests cover skip-done-steps,
``BootstrapChanged``, the sentinel, the lock, detached steps, kills and file semantics in
milliseconds, without SSH.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capi_remote.bootstrap import BootstrapPlan, MakeDirectory, RunCommand, WriteFile
from capi_remote.ssh import hostscript
from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.errors import (
    BootstrapChanged,
    BootstrapIncomplete,
    HostLocked,
    HostNotClean,
    JobCancelled,
    JobDetached,
    JobTimeout,
    StepFailed,
    StepInterrupted,
    StepTimeout,
)
from capi_remote.ssh.executor import Job, JobResult, execute, step_name
from capi_remote.ssh.hostkeys import HostKeyPolicy
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target
from capi_remote.ssh.transport import CommandTimedOut, ExecResult, OutputTail, Poll

OWNER = "unit-runner"
TARGET = Target(
    address="local.test",
    credentials=Credentials(password="unused"),
    host_key=HostKeyPolicy.skip_verification(),
)


class LocalConnection:
    """A :class:`~capi_remote.ssh.transport.Connection` that runs commands with the local ``sh``."""

    host = "local.test"
    host_key_fingerprint = "SHA256:" + "A" * 43
    bastion_host_key_fingerprint = None

    def __init__(self) -> None:
        self.commands: list[str] = []

    def exec(
        self,
        command: str,
        *,
        stdin: bytes = b"",
        timeout: float,
        tail_bytes: int = 65536,
        poll: Poll | None = None,
    ) -> ExecResult:
        self.commands.append(command)
        deadline = time.monotonic() + timeout
        proc = subprocess.Popen(
            ["sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        pending: bytes | None = stdin
        try:
            while True:
                try:
                    out, err = proc.communicate(pending, timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    pending = None
                if poll is not None:
                    poll()
                if time.monotonic() >= deadline:
                    raise CommandTimedOut(timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        tails = OutputTail(tail_bytes), OutputTail(tail_bytes)
        tails[0].feed(out)
        tails[1].feed(err)
        return ExecResult(proc.returncode, tails[0].data, tails[1].data, len(out), len(err))

    def close(self) -> None:
        pass


@attrs.frozen
class Host:
    """A temp dir standing in for a host's filesystem."""

    root: Path
    settings: SSHSettings

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    @property
    def sentinel(self) -> Path:
        return Path(self.settings.sentinel_path)

    @property
    def lock(self) -> Path:
        return Path(self.settings.lock_path)

    def state(self, uid: str = "m1") -> Path:
        return Path(self.settings.state_root) / uid

    def counter(self, name: str) -> int:
        path = self.path(f"/counters/{name}")
        return len(path.read_text().splitlines()) if path.exists() else 0

    def count(self, name: str, extra: str = "") -> RunCommand:
        """A shell step that appends a line to a counter file: proves how often it ran."""
        return RunCommand(shell=f"echo ran >> {self.path('/counters')}/{name}{extra}")

    def run(self, plan: BootstrapPlan, **job_args: object) -> JobResult:
        uid = job_args.pop("machine_uid", "m1")
        job = Job(target=TARGET, plan=plan, machine_uid=uid, **job_args)  # type: ignore[arg-type]
        return execute(job, LocalConnection(), self.settings, owner=OWNER)

    def finish_step(self) -> RunCommand:
        return RunCommand(shell=f"mkdir -p {self.sentinel.parent} && touch {self.sentinel}")


class LocalConnector:
    """Connects every target to the local shell."""

    def connect(self, target: Target, ticket: object = None) -> LocalConnection:
        return LocalConnection()


def make_host(tmp_path: Path) -> Host:
    root = tmp_path / "host"
    (root / "counters").mkdir(parents=True)
    settings = SSHSettings(
        state_root=str(root / "var/lib/capi-remote"),
        lock_path=str(root / "run/lock/capi-remote.lock"),
        sentinel_path=str(root / "run/cluster-api/bootstrap-success.complete"),
        command_timeout=20,
        kill_grace=1,
        lock_heartbeat_interval=0.3,
        lock_stale_after=3,
    )
    return Host(root, settings)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)


def plan_of(*steps: WriteFile | MakeDirectory | RunCommand) -> BootstrapPlan:
    return BootstrapPlan(steps=steps)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# -- the happy path and exactly-once ---------------------------------------------------------------


def test_runs_every_step_then_reports_already_bootstrapped(host: Host) -> None:
    calls: list[tuple[int, int, str]] = []
    plan = plan_of(
        WriteFile(path=str(host.path("/etc/app/config")), content=b"x=1\n"),
        host.count("a"),
        host.finish_step(),
    )
    result = host.run(plan, on_progress=lambda *args: calls.append(args))
    assert not result.already_bootstrapped
    assert [s.status for s in result.steps] == ["ran", "ran", "ran"]
    assert result.host_key_fingerprint == LocalConnection.host_key_fingerprint
    assert [c[:2] for c in calls] == [(0, 3), (1, 3), (2, 3)]
    assert calls[0][2] == plan.steps[0].describe()
    assert host.counter("a") == 1
    assert not host.lock.exists(), "the lock is released after the job"
    assert (host.state() / "plan").read_text().strip() == plan.digest
    assert stat.S_IMODE(host.state().stat().st_mode) == 0o700

    again = host.run(plan)
    assert again.already_bootstrapped and again.steps == ()
    assert host.counter("a") == 1


def test_done_steps_are_skipped_and_a_failed_step_runs_again(host: Host) -> None:
    flag = host.path("/flag")
    plan = plan_of(
        host.count("first"),
        RunCommand(shell=f"echo ran >> {host.path('/counters/second')}; test -f {flag}"),
        host.count("third"),
        host.finish_step(),
    )
    with pytest.raises(StepFailed) as failed:
        host.run(plan)
    assert failed.value.index == 1 and failed.value.exit_code == 1
    assert failed.value.retryable and failed.value.reason == "StepFailed"
    assert not host.lock.exists(), "a failed job releases the lock too"

    flag.touch()
    result = host.run(plan)
    assert [s.status for s in result.steps] == ["skipped", "ran", "ran", "ran"]
    assert (host.counter("first"), host.counter("second"), host.counter("third")) == (1, 2, 1)


def test_a_changed_plan_after_steps_ran_is_refused(host: Host) -> None:
    first = plan_of(host.count("a"), RunCommand(argv=("false",)))
    with pytest.raises(StepFailed):
        host.run(first)
    second = plan_of(host.count("a"), host.count("b"), host.finish_step())
    with pytest.raises(BootstrapChanged) as changed:
        host.run(second)
    assert changed.value.recorded == first.digest and changed.value.current == second.digest
    assert not changed.value.retryable
    assert host.counter("b") == 0 and not host.lock.exists()
    # Deleting the state directory is how an operator forces the new plan.
    subprocess.run(["rm", "-rf", str(host.state())], check=True)
    assert [s.status for s in host.run(second).steps] == ["ran", "ran", "ran"]
    assert host.counter("a") == 2


def test_a_changed_plan_before_any_step_ran_is_fine(host: Host) -> None:
    host.state().joinpath("steps").mkdir(parents=True)
    host.state().joinpath("plan").write_text("0" * 64 + "\n")
    result = host.run(plan_of(host.count("a"), host.finish_step()))
    assert [s.status for s in result.steps] == ["ran", "ran"]


def test_a_sentinel_another_machine_left_is_not_this_machines_bootstrap(host: Host) -> None:
    # A host reused after another machine (e.g. one the reference provider bootstrapped): the
    # sentinel is there, but this machine never ran here.
    host.sentinel.parent.mkdir(parents=True)
    host.sentinel.touch()
    with pytest.raises(HostNotClean) as caught:
        host.run(plan_of(host.count("a")))
    assert caught.value.retryable and str(host.sentinel) in caught.value.message
    assert host.counter("a") == 0
    assert not host.state().exists() and not host.lock.exists()
    host.sentinel.unlink()  # the operator cleaned the host: the bootstrap runs
    assert not host.run(plan_of(host.count("a"), host.finish_step())).already_bootstrapped
    assert host.counter("a") == 1


def test_a_machine_provisioned_before_adopts_the_sentinel(host: Host) -> None:
    host.sentinel.parent.mkdir(parents=True)
    host.sentinel.touch()
    result = host.run(plan_of(host.count("a")), adopt=True)
    assert result.already_bootstrapped
    assert host.counter("a") == 0
    assert not host.state().exists() and not host.lock.exists()


def test_sentinel_present_releases_a_lock_we_left_behind(host: Host) -> None:
    host.sentinel.parent.mkdir(parents=True)
    host.sentinel.touch()
    write_lock(host, OWNER, age=0)
    assert host.run(plan_of(host.count("a")), adopt=True).already_bootstrapped
    assert not host.lock.exists()
    write_lock(host, "someone-else", age=0)
    with pytest.raises(HostNotClean):
        host.run(plan_of(host.count("a")))
    assert host.lock.exists(), "only our own lock is released"


def test_a_chatty_login_shell_does_not_confuse_the_helpers(host: Host) -> None:
    class Chatty(LocalConnection):
        def exec(self, command: str, **kwargs: Any) -> ExecResult:
            banner = "echo 'Welcome to host!'; echo 'capi-remote is not me'; "
            return super().exec(banner + command, **kwargs)

    job = Job(target=TARGET, plan=plan_of(host.count("a"), host.finish_step()), machine_uid="m1")
    result = execute(job, Chatty(), host.settings, owner=OWNER)
    assert [s.status for s in result.steps] == ["ran", "ran"] and host.counter("a") == 1


def test_sentinel_missing_after_all_steps(host: Host) -> None:
    plan = plan_of(host.count("a"))
    with pytest.raises(BootstrapIncomplete) as incomplete:
        host.run(plan)
    assert incomplete.value.sentinel == host.settings.sentinel_path
    assert not host.lock.exists()
    with pytest.raises(BootstrapIncomplete):  # and again: the step is not repeated
        host.run(plan)
    assert host.counter("a") == 1


# -- the host lock ---------------------------------------------------------------------------------


def write_lock(host: Host, owner: str, age: int) -> None:
    """A lock as a helper writes it: owner, heartbeat (seconds since boot), boot id."""
    uptime = int(float(Path("/proc/uptime").read_text().split()[0]))
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    host.lock.parent.mkdir(parents=True, exist_ok=True)
    host.lock.write_text(f"{owner} {uptime - age} {boot_id}\n")


def test_a_fresh_foreign_lock_is_respected(host: Host) -> None:
    write_lock(host, "other-controller", age=0)
    with pytest.raises(HostLocked) as locked:
        host.run(plan_of(host.count("a"), host.finish_step()))
    assert locked.value.owner == "other-controller" and locked.value.retryable
    assert host.counter("a") == 0
    assert host.lock.read_text().startswith("other-controller ")


def test_a_stale_lock_is_taken_over(host: Host) -> None:
    write_lock(host, "crashed-controller", age=host.settings.lock_stale_after + 1)
    result = host.run(plan_of(host.count("a"), host.finish_step()))
    assert result.lock_taken_over_from == "crashed-controller"
    assert host.counter("a") == 1 and not host.lock.exists()


def test_our_own_lock_is_reacquired_at_once(host: Host) -> None:
    write_lock(host, OWNER, age=0)  # e.g. this controller restarted mid-job
    result = host.run(plan_of(host.count("a"), host.finish_step()))
    assert result.lock_taken_over_from is None and host.counter("a") == 1


def test_heartbeat_keeps_the_lock_fresh_during_a_long_step(host: Host) -> None:
    beats: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if host.lock.exists():
                beats.append(host.lock.read_text().split()[1])
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        host.run(plan_of(RunCommand(shell="sleep 2.2"), host.finish_step()))
    finally:
        done.set()
        watcher.join()
    assert len(set(beats)) >= 2, "the heartbeat timestamp advanced while the step ran"


# -- detached steps --------------------------------------------------------------------------------


def start_detached(host: Host, index: int, step: RunCommand, uid: str = "m1") -> None:
    """Start a step's helper as a crashed runner would have: it keeps running after we leave."""
    connection = LocalConnection()
    base = f"{host.state(uid)}/steps/{step_name(index, step)}"
    script = (step.to_shell() + "\n").encode()
    command = hostscript.run_step(
        base=base, script_sha256=hostscript.sha256(script), rerun_interrupted=False, tail_bytes=64
    )
    with pytest.raises(CommandTimedOut):
        connection.exec(command, stdin=hostscript.payload(script), timeout=0.5)


def test_a_step_still_running_is_awaited_not_started_again(host: Host) -> None:
    slow = RunCommand(shell=f"echo ran >> {host.path('/counters/slow')}; sleep 4; echo finished")
    plan = plan_of(host.count("a"), slow, host.finish_step())
    host.state().joinpath("steps").mkdir(parents=True)
    host.state().joinpath("plan").write_text(plan.digest + "\n")
    start_detached(host, 1, slow)
    assert host.counter("slow") == 1

    result = host.run(plan)
    assert [s.status for s in result.steps] == ["ran", "resumed", "ran"]
    assert result.steps[1].output_tail == "finished\n"
    assert result.output_tail == "", "the last step that ran printed nothing"
    assert host.counter("slow") == 1


def test_a_started_step_whose_process_vanished_is_reported(host: Host) -> None:
    step = host.count("a")
    plan = plan_of(step, host.finish_step())
    steps = host.state() / "steps"
    steps.mkdir(parents=True)
    (host.state() / "plan").write_text(plan.digest + "\n")
    base = steps / step_name(0, step)
    base.with_suffix(".start").touch()
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    dead = subprocess.Popen(["true"])
    dead.wait()
    base.with_suffix(".pid").write_text(f"{dead.pid} {boot_id} 1\n")

    with pytest.raises(StepInterrupted) as interrupted:
        host.run(plan)
    assert interrupted.value.index == 0 and not interrupted.value.retryable
    assert host.counter("a") == 0

    result = host.run(plan, rerun_interrupted=True)
    assert [s.status for s in result.steps] == ["ran", "ran"] and host.counter("a") == 1


def once_counted(host: Host, name: str, event: threading.Event) -> None:
    """Set ``event`` once the step that counts ``name`` has begun (not after a fixed delay: on a
    loaded machine the job may not have reached the step yet)."""

    def watch() -> None:
        while not host.counter(name) and not event.is_set():
            time.sleep(0.05)
        event.set()

    threading.Thread(target=watch, daemon=True).start()


def test_a_step_past_its_deadline_is_killed(host: Host) -> None:
    token = f"{os.getpid()}.{time.monotonic_ns() % 1000}"
    step = RunCommand(shell=f"echo started; sleep 3{token}")
    plan = plan_of(step, host.finish_step())
    with pytest.raises(StepTimeout) as timeout:  # the step alone would sleep for days
        host.run(plan, step_timeout=0.5)
    assert timeout.value.output_tail == "started\n"
    found = subprocess.run(["pgrep", "-f", f"sleep 3{token}"], capture_output=True, check=False)
    assert found.stdout == b"", "the step's processes are gone"
    base = host.state() / "steps" / step_name(0, step)
    assert not base.with_suffix(".start").exists(), "a killed step will run again"
    assert not host.lock.exists()


def test_the_job_deadline_applies_to_steps(host: Host) -> None:
    short = attrs.evolve(host.settings, job_timeout=1.0)
    job = Job(target=TARGET, plan=plan_of(RunCommand(shell="sleep 5")), machine_uid="m1")
    with pytest.raises(JobTimeout):
        execute(job, LocalConnection(), short, owner=OWNER)


def test_a_job_deadline_of_its_own_overrides_the_runners(host: Host) -> None:
    roomy = attrs.evolve(host.settings, job_timeout=3600.0)
    plan = plan_of(RunCommand(shell="sleep 3600"))  # only the job's own deadline ends it
    job = Job(target=TARGET, plan=plan, machine_uid="m1", job_timeout=1.0)
    with pytest.raises(JobTimeout, match="within 1 s"):
        execute(job, LocalConnection(), roomy, owner=OWNER)


def test_cancel_kills_the_running_step(host: Host) -> None:
    token = f"{os.getpid()}{time.monotonic_ns() % 1000}"
    step = RunCommand(shell=f"echo ran >> {host.path('/counters/a')}; sleep 4{token}")
    job = Job(target=TARGET, plan=plan_of(step, host.count("b")), machine_uid="m1")
    cancel = threading.Event()
    once_counted(host, "a", cancel)
    with pytest.raises(JobCancelled):
        execute(job, LocalConnection(), host.settings, owner=OWNER, cancel=cancel)
    assert host.counter("a") == 1 and host.counter("b") == 0
    found = subprocess.run(["pgrep", "-f", f"sleep 4{token}"], capture_output=True, check=False)
    assert found.stdout == b""
    assert not host.lock.exists()


def test_detach_stops_waiting_but_leaves_the_step_to_the_next_owner(host: Host) -> None:
    token = f"{os.getpid()}{time.monotonic_ns() % 1009}"
    step = RunCommand(shell=f"echo ran >> {host.path('/counters/a')}; sleep 5.{token}; echo end")
    plan = plan_of(step, host.count("b"), host.finish_step())
    job = Job(target=TARGET, plan=plan, machine_uid="m1")
    detach = threading.Event()
    once_counted(host, "a", detach)
    with pytest.raises(JobDetached) as detached:
        execute(job, LocalConnection(), host.settings, owner=OWNER, detach=detach)
    assert detached.value.reason == "JobDetached" and detached.value.retryable
    found = subprocess.run(["pgrep", "-f", f"sleep 5.{token}"], capture_output=True, check=False)
    assert found.stdout != b"", "the step was not killed (nor waited for)"
    base = host.state() / "steps" / step_name(0, step)
    assert base.with_suffix(".start").exists() and base.with_suffix(".pid").exists()
    assert not base.with_suffix(".rc").exists()
    assert not host.lock.exists(), "the lock is released for the next owner"

    # Another owner awaits the still-running step instead of starting it again.
    result = execute(job, LocalConnection(), host.settings, owner="next-controller")
    assert [s.status for s in result.steps] == ["resumed", "ran", "ran"]
    assert result.steps[0].output_tail == "end\n"
    assert (host.counter("a"), host.counter("b")) == (1, 1)


def test_cancel_wins_over_detach(host: Host) -> None:
    token = f"{os.getpid()}{time.monotonic_ns() % 1013}"
    job = Job(target=TARGET, plan=plan_of(RunCommand(shell=f"sleep 4{token}")), machine_uid="m1")
    cancel, detach = threading.Event(), threading.Event()

    def both() -> None:
        cancel.set()
        detach.set()

    threading.Timer(0.7, both).start()
    with pytest.raises(JobCancelled):
        execute(job, LocalConnection(), host.settings, owner=OWNER, cancel=cancel, detach=detach)
    found = subprocess.run(["pgrep", "-f", f"sleep 4{token}"], capture_output=True, check=False)
    assert found.stdout == b""


def test_output_tail_is_bounded(host: Host) -> None:
    step = RunCommand(shell="head -c 300000 /dev/zero | tr '\\0' x; echo; echo last line")
    result = host.run(plan_of(step, host.finish_step()))
    tail = result.steps[0].output_tail
    assert result.output_tail == ""  # the sentinel step ran last and printed nothing
    assert len(tail.encode()) == host.settings.output_tail_bytes
    assert tail.endswith("x\nlast line\n")


def test_failed_step_error_carries_exit_code_and_tail_but_no_command(host: Host) -> None:
    secret = "join-token-abc123"
    step = RunCommand(argv=("sh", "-c", "echo oops >&2; exit 7", secret))
    with pytest.raises(StepFailed) as failed:
        host.run(plan_of(step))
    assert failed.value.exit_code == 7 and failed.value.output_tail == "oops\n"
    assert secret not in str(failed.value) and "sh with 3 argument(s)" in str(failed.value)


# -- files and directories -------------------------------------------------------------------------


def test_write_file_semantics(host: Host) -> None:
    content = b"quotes ' \" `x` $HOME \\ \n\x00\xff binary\n"
    target = host.path("/deep/new/dir/secret.key")
    appended = host.path("/etc/appended")
    appended.parent.mkdir(parents=True, exist_ok=True)
    appended.write_bytes(b"existing\n")
    plan = plan_of(
        WriteFile(path=str(target), content=content, mode=0o600),
        WriteFile(path=str(appended), content=b"more\n", append=True, mode=0o640),
        MakeDirectory(path=str(host.path("/srv/data")), mode=0o2750),
        host.finish_step(),
    )
    host.run(plan)
    assert target.read_bytes() == content
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    for parent in (target.parent, target.parent.parent):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o755
    assert appended.read_bytes() == b"existing\nmore\n"
    assert stat.S_IMODE(appended.stat().st_mode) == 0o640
    assert stat.S_IMODE(host.path("/srv/data").stat().st_mode) == 0o2750
    assert not list(target.parent.glob(".capi-remote.*")), "no temp files left behind"
    assert not list((host.state() / "steps").glob("*.in*")), "no received content left behind"


def test_append_is_not_repeated_after_a_crash_between_rename_and_marker(host: Host) -> None:
    path = host.path("/etc/hosts.extra")
    step = WriteFile(path=str(path), content=b"10.0.0.1 cp\n", append=True)
    plan = plan_of(step, host.finish_step())
    # What a runner that died right after the rename leaves: the new content and .pending.
    path.parent.mkdir(parents=True)
    path.write_bytes(b"old\n10.0.0.1 cp\n")
    steps = host.state() / "steps"
    steps.mkdir(parents=True)
    (host.state() / "plan").write_text(plan.digest + "\n")
    pending = hashlib.sha256(path.read_bytes()).hexdigest()
    (steps / f"{step_name(0, step)}.pending").write_text(pending + "\n")
    host.run(plan)
    assert path.read_bytes() == b"old\n10.0.0.1 cp\n"


def test_a_file_step_that_fails_is_a_step_failure(host: Host) -> None:
    blocker = host.path("/blocker")
    blocker.write_text("a file where a directory should be")
    with pytest.raises(StepFailed) as failed:
        host.run(plan_of(WriteFile(path=str(blocker / "child"), content=b"x")))
    assert failed.value.index == 0 and "blocker" in failed.value.output_tail


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(first=st.binary(max_size=2000), second=st.binary(max_size=200))
def test_any_bytes_arrive_intact(host: Host, first: bytes, second: bytes) -> None:
    path = host.path(f"/data/{hashlib.sha256(first + second).hexdigest()[:16]}")
    uid = f"m-{path.name}"
    plan = plan_of(
        WriteFile(path=str(path), content=first),
        WriteFile(path=str(path), content=second, append=True),
    )
    with pytest.raises(BootstrapIncomplete):
        host.run(plan, machine_uid=uid)
    assert path.read_bytes() == first + second
