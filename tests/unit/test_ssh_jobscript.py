"""The provisionJob scripts: the host script keeps the runner's markers (each resumes the other,
nothing runs twice), reports failures in the runner's terms, and its output reads back."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from capi_remote.bootstrap import BootstrapPlan, RunCommand, WriteFile
from capi_remote.ssh import jobscript
from capi_remote.ssh.errors import HostNotClean, StepFailed
from capi_remote.ssh.executor import step_name
from tests.unit.test_ssh_executor import Host, make_host, plan_of

OWNER = "job:ns/m-provision-1"
FINGERPRINT = "SHA256:" + "k" * 43


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)


def run_script(
    host: Host,
    plan: BootstrapPlan,
    *,
    uid: str = "m1",
    step_timeout: float | None = None,
    adopt: bool = False,
) -> subprocess.CompletedProcess[str]:
    script = jobscript.host_script(
        plan,
        machine_uid=uid,
        owner=OWNER,
        settings=host.settings,
        step_timeout=step_timeout,
        adopt=adopt,
    )
    path = host.root / f".capi-remote-bootstrap-{uid}.sh"
    path.write_bytes(script)
    proc = subprocess.run(
        ["sh", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert not path.exists(), "the script removes itself (it holds the bootstrap data)"
    return proc


def lines(proc: subprocess.CompletedProcess[str], kind: str) -> list[str]:
    return [
        line[len(f"capi-remote-job {kind}") :].strip()
        for line in proc.stdout.splitlines()
        if line.startswith(f"capi-remote-job {kind}")
    ]


def test_scripts_are_valid_posix_sh(host: Host) -> None:
    plan = plan_of(WriteFile(path="/etc/x", content=b"\x00\xff'$`\n"), host.count("a"))
    script = jobscript.host_script(plan, machine_uid="m1", owner=OWNER)
    for text in (script.decode(), jobscript.CONTAINER_SCRIPT):
        subprocess.run(["sh", "-n"], input=text, text=True, check=True)


def test_a_job_bootstraps_and_reports_then_finds_it_done(host: Host) -> None:
    target = host.path("/etc/app/config")
    content = b"binary \x00\x01 and 'quotes' $HOME `x`\n"
    plan = plan_of(
        WriteFile(path=str(target), content=content), host.count("a"), host.finish_step()
    )
    proc = run_script(host, plan)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines(proc, "step") == [
        f"{i + 1} 3 {step.describe()}" for i, step in enumerate(plan.steps)
    ]
    assert lines(proc, "result") == ["provisioned"]
    assert target.read_bytes() == content
    assert host.counter("a") == 1
    assert not host.lock.exists(), "the lock is released"
    assert (host.state() / "plan").read_text().strip() == plan.digest
    for index, step in enumerate(plan.steps):
        assert (host.state() / "steps" / f"{step_name(index, step)}.rc").read_text() == "0\n"
    report = jobscript.parse_report(proc.stdout)
    assert report is not None and not report.already_bootstrapped
    assert report.hostname

    again = run_script(host, plan)
    assert again.returncode == 0 and lines(again, "result") == ["already-bootstrapped"]
    assert host.counter("a") == 1
    # The runner agrees: the sentinel is there, nothing to do.
    assert host.run(plan).already_bootstrapped


def test_a_job_and_the_runner_agree_whose_sentinel_it_is(host: Host) -> None:
    plan = plan_of(host.count("a"), host.finish_step())
    assert run_script(host, plan).returncode == 0
    # Another machine claims the host: the sentinel is not its bootstrap, for both paths.
    other = run_script(host, plan, uid="m2")
    assert other.returncode == 1
    assert lines(other, "failed")[-1].startswith("HostNotClean ")
    assert jobscript.classify_failure(other.stdout).retryable
    with pytest.raises(HostNotClean):
        host.run(plan, machine_uid="m2")
    assert host.counter("a") == 1 and not host.lock.exists()
    # A machine provisioned before (adopting) takes it as its own.
    adopted = run_script(host, plan, uid="m3", adopt=True)
    assert lines(adopted, "result") == ["already-bootstrapped"]
    assert host.run(plan, machine_uid="m3", adopt=True).already_bootstrapped
    assert host.counter("a") == 1


def test_the_runner_resumes_what_a_job_left_and_the_other_way_round(host: Host) -> None:
    flag = host.path("/flag")
    plan = plan_of(
        host.count("first"),
        RunCommand(shell=f"echo ran >> {host.path('/counters/second')}; test -f {flag}"),
        host.count("third"),
        host.finish_step(),
    )
    failed = run_script(host, plan)
    assert failed.returncode == 1
    assert lines(failed, "failed")[-1].startswith("StepFailed step 2 ")
    assert not host.lock.exists(), "a failed job releases the lock"
    flag.touch()
    result = host.run(plan)  # the runner
    assert [s.status for s in result.steps] == ["skipped", "ran", "ran", "ran"]
    assert (host.counter("first"), host.counter("second"), host.counter("third")) == (1, 2, 1)

    # A runner job that failed half-way, resumed by a Job.
    flag2 = host.path("/flag2")
    other = plan_of(host.count("x"), RunCommand(shell=f"test -f {flag2}"), host.finish_step())
    host.sentinel.unlink()  # as on a host being bootstrapped for another machine
    with pytest.raises(StepFailed):
        host.run(other, machine_uid="m2")
    flag2.touch()
    proc = run_script(host, other, uid="m2")
    assert proc.returncode == 0, proc.stdout
    assert lines(proc, "skip") == ["1 3"]
    assert lines(proc, "step") == [f"{i} 3 {other.steps[i - 1].describe()}" for i in (2, 3)]
    assert host.counter("x") == 1


def test_a_failed_command_shows_its_output_tail_and_code(host: Host) -> None:
    plan = plan_of(RunCommand(shell="echo 'the disk is on fire' >&2; exit 3"), host.finish_step())
    proc = run_script(host, plan)
    assert proc.returncode == 1
    assert "the disk is on fire" in proc.stdout
    failure = jobscript.classify_failure(proc.stdout)
    assert failure.reason == "StepFailed" and failure.retryable
    assert "exited with 3" in failure.message


def test_a_foreign_lock_a_changed_plan_and_a_missing_sentinel(host: Host) -> None:
    host.lock.parent.mkdir(parents=True)
    uptime = Path("/proc/uptime").read_text().split(".")[0]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    host.lock.write_text(f"other-controller {uptime} {boot}\n")
    locked = run_script(host, plan_of(host.count("a"), host.finish_step()))
    assert jobscript.classify_failure(locked.stdout).reason == "HostLocked"
    assert "other-controller" in locked.stdout
    host.lock.unlink()

    first = run_script(host, plan_of(host.count("a")))
    assert jobscript.classify_failure(first.stdout).reason == "BootstrapIncomplete"
    assert not jobscript.classify_failure(first.stdout).retryable
    changed = run_script(host, plan_of(host.count("b"), host.finish_step()))
    failure = jobscript.classify_failure(changed.stdout)
    assert (failure.reason, failure.retryable) == ("BootstrapChanged", False)
    assert host.counter("b") == 0


def test_a_step_over_its_deadline_is_killed(host: Host) -> None:
    pidfile = host.path("/pid")
    plan = plan_of(RunCommand(shell=f"echo $$ > {pidfile}; exec sleep 60"), host.finish_step())
    started = time.monotonic()
    proc = run_script(host, plan, step_timeout=2)
    assert time.monotonic() - started < 20
    assert jobscript.classify_failure(proc.stdout).reason == "StepTimeout"
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not host.lock.exists()


def test_owner_must_be_one_word() -> None:
    with pytest.raises(ValueError):
        jobscript.host_script(plan_of(), machine_uid="m1", owner="two words")


def test_reports_and_failures_read_back() -> None:
    report = jobscript.parse_report(
        "capi-remote-job result provisioned\ncapi-remote-job hostname h1\n"
        "capi-remote-job address eth0 inet 10.0.0.2/24 global\n"
        "capi-remote-job address eth0@if3 inet6 fe80::1/64 link\n"
        f"capi-remote-job fingerprint {FINGERPRINT}\nnoise\n"
    )
    assert report == jobscript.JobReport(
        already_bootstrapped=False,
        hostname="h1",
        addresses=(
            ("eth0", "inet", "10.0.0.2/24", "global"),
            ("eth0@if3", "inet6", "fe80::1/64", "link"),
        ),
        fingerprint=FINGERPRINT,
    )
    assert jobscript.parse_report("capi-remote-job step 1 2 x\n") is None
    cases = {
        "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@": ("HostKeyMismatch", False),
        "No ED25519 host key is known for 10.0.0.2 and you have requested strict checking.\n"
        "Host key verification failed.": ("HostKeyUnknown", False),
        "root@10.0.0.2: Permission denied (publickey).": ("AuthenticationFailed", False),
        "ssh: connect to host 10.0.0.2 port 22: Connection refused": ("HostUnreachable", True),
        "sudo: a password is required": ("SudoFailed", False),
        "sh: 1: ssh: not found": ("ImageLacksSSH", False),
        "capi-remote-provision: 1: eval: tsh: not found": ("ImageLacksSSH", False),
        "something else entirely": ("Unknown", True),
        "capi-remote-job failed SSH ssh exited with 255": ("Unknown", True),
    }
    for output, (reason, retryable) in cases.items():
        failure = jobscript.classify_failure(output)
        assert (failure.reason, failure.retryable) == (reason, retryable), output


#: A stand-in for an ssh or scp client: records its words, one per line, and answers as the
#: host script does.
_CLIENT = """#!/bin/sh
for word in "$@"; do printf '%s\\n' "$word"; done > "$RECORD.$(basename "$0")"
case $(basename "$0") in
  fake-ssh) echo 'capi-remote-job result provisioned'; echo 'capi-remote-job hostname h1' ;;
esac
"""


def run_container(
    tmp_path: Path, *, secret: dict[str, str], **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    """CONTAINER_SCRIPT with fake clients; returns its run and each client's words."""
    secrets = tmp_path / "secret"
    secrets.mkdir()
    for name, content in {"bootstrap.sh": "#!/bin/sh\n", **secret}.items():
        (secrets / name).write_text(content)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("fake-ssh", "fake-scp"):
        (bin_dir / name).write_text(_CLIENT)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / "record"
    settings = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "RECORD": str(record),
        "CAPI_REMOTE_SECRET_DIR": str(secrets),
        "CAPI_REMOTE_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "CAPI_REMOTE_ADDRESS": "node-1.example",
        "CAPI_REMOTE_PORT": "2222",
        "CAPI_REMOTE_USER": "root",
        "CAPI_REMOTE_PRIVILEGE": "root",
        "CAPI_REMOTE_CONNECT_TIMEOUT": "15",
        "CAPI_REMOTE_MACHINE_UID": "uid-1",
        **env,
    }
    proc = subprocess.run(
        ["sh", "-c", jobscript.CONTAINER_SCRIPT, "capi-remote-provision"],
        env=settings,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    words = {
        name: (tmp_path / f"record.{name}").read_text().splitlines()
        for name in ("fake-ssh", "fake-scp")
        if (tmp_path / f"record.{name}").exists()
    }
    return proc, words


def test_commands_that_log_in_themselves_get_only_the_port_and_destination(
    tmp_path: Path,
) -> None:
    # k0smotron's Teleport guide: sshCommand "tsh -i <identity> --proxy <proxy> ssh"; quoted
    # words are words, as in k0smotron's Job script (its integration test quotes an option).
    proc, words = run_container(
        tmp_path,
        secret={"known_hosts": "", "fingerprints": ""},
        CAPI_REMOTE_HOST_KEYS=jobscript.COMMAND_VERIFIES,
        CAPI_REMOTE_SSH='fake-ssh --proxy "teleport.example.com:443" ssh',
        CAPI_REMOTE_SCP="fake-scp --proxy 'teleport.example.com:443' scp",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    remote = ".capi-remote-bootstrap-uid-1.sh"
    assert words["fake-scp"][:4] == ["--proxy", "teleport.example.com:443", "scp", "-P"]
    assert words["fake-scp"][4] == "2222"
    assert words["fake-scp"][-1] == f"root@node-1.example:{remote}"
    assert len(words["fake-scp"]) == 7, "no option of ours: the command verifies the host"
    assert words["fake-ssh"][:5] == ["--proxy", "teleport.example.com:443", "ssh", "-p", "2222"]
    assert words["fake-ssh"][5] == "root@node-1.example"
    assert words["fake-ssh"][6].startswith(f"sh ./{remote};")
    assert "result provisioned" in (tmp_path / "termination-log").read_text()


def test_a_policy_without_a_key_verifies_the_host_and_offers_no_identity(
    tmp_path: Path,
) -> None:
    proc, words = run_container(
        tmp_path,
        secret={"known_hosts": "[node-1.example]:2222 ssh-ed25519 AAAA\n", "fingerprints": ""},
        CAPI_REMOTE_HOST_KEYS="known-hosts",
        CAPI_REMOTE_SSH='fake-ssh -o "StrictHostKeyChecking=no"',
        CAPI_REMOTE_SCP="fake-scp",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ssh = words["fake-ssh"]
    assert ssh[:2] == ["-o", "StrictHostKeyChecking=no"]
    assert "StrictHostKeyChecking=yes" in ssh and "BatchMode=yes" in ssh
    assert not any(word.startswith(("IdentityFile=", "IdentitiesOnly=")) for word in ssh)
    assert "-q" in words["fake-scp"]


def test_a_key_is_offered_as_the_only_identity(tmp_path: Path) -> None:
    proc, words = run_container(
        tmp_path,
        secret={"ssh-privatekey": "KEY\n", "known_hosts": "", "fingerprints": ""},
        CAPI_REMOTE_HOST_KEYS="insecure",
        CAPI_REMOTE_SSH="fake-ssh",
        CAPI_REMOTE_SCP="fake-scp",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for client in ("fake-ssh", "fake-scp"):
        assert "IdentitiesOnly=yes" in words[client]
        assert any(word.startswith("IdentityFile=") for word in words[client])
        assert "StrictHostKeyChecking=no" in words[client]
