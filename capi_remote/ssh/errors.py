"""Typed failures of the SSH runner, each with a condition ``reason`` and a ``retryable`` flag.

``retryable`` answers one question for the caller: can the same job succeed later without anyone
changing anything (network blips, a busy host, a cancelled job)? ``False`` means a person has to
act (fix a key, a password, the bootstrap data, or decide about an interrupted step).

Messages never contain secrets: no keys, passwords, file contents or command lines. Steps appear
only through ``step.describe()``. Command output (which may hold tokens a bootstrap prints) is kept
out of ``str(exc)`` and offered separately as ``output_tail`` for the caller to publish or not.
"""

from __future__ import annotations

from typing import ClassVar


class SSHError(Exception):
    """Base class: ``reason`` is CamelCase, usable as a Kubernetes condition reason as is."""

    reason: ClassVar[str] = "SSHError"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HostKeyMismatch(SSHError):
    """The host presented a key other than the trusted one: possible man in the middle."""

    reason = "HostKeyMismatch"

    def __init__(self, host: str, expected: tuple[str, ...], presented: str, key_type: str) -> None:
        self.host = host
        self.expected = expected
        self.presented = presented
        self.key_type = key_type
        super().__init__(
            f"host key of {host} does not match: presented {key_type} {presented}, expected "
            f"{' or '.join(expected)}; if the host was reinstalled, verify the new key and "
            "update the trusted one"
        )


class HostKeyUnknown(SSHError):
    """No trusted key for this host, and the policy does not allow learning one."""

    reason = "HostKeyUnknown"

    def __init__(self, host: str, presented: str, key_type: str) -> None:
        self.host = host
        self.presented = presented
        self.key_type = key_type
        super().__init__(
            f"no trusted host key for {host} (it presented {key_type} {presented}); add it to "
            "known_hosts, pin its fingerprint, or use trust-on-first-use"
        )


class HostUnreachable(SSHError):
    """No SSH session could be set up: refused, timed out, no route, no banner, reset."""

    reason = "HostUnreachable"
    retryable = True

    def __init__(self, host: str, detail: str) -> None:
        self.host = host
        self.detail = detail
        super().__init__(f"cannot reach SSH on {host}: {detail}")


class ConnectionLost(SSHError):
    """An established session broke or stopped answering (sshd restarted, link cut)."""

    reason = "ConnectionLost"
    retryable = True

    def __init__(self, host: str, detail: str) -> None:
        self.host = host
        self.detail = detail
        super().__init__(f"SSH connection to {host} lost: {detail}")


class InvalidCredentials(SSHError):
    """The private key cannot be loaded (bad format, wrong or missing passphrase)."""

    reason = "InvalidCredentials"


class AuthenticationFailed(SSHError):
    """The host refused our key or password for this user."""

    reason = "AuthenticationFailed"

    def __init__(self, host: str, user: str, detail: str) -> None:
        self.host = host
        self.user = user
        super().__init__(f"authentication failed on {host}: {detail}")


class SudoFailed(SSHError):
    """The user cannot become root non-interactively (password required, wrong, not allowed)."""

    reason = "SudoFailed"

    def __init__(self, host: str, user: str, detail: str) -> None:
        self.host = host
        self.user = user
        super().__init__(f"sudo failed on {host}: {detail}")


class HostLocked(SSHError):
    """Another job holds the host's lock and its heartbeat is fresh."""

    reason = "HostLocked"
    retryable = True

    def __init__(self, host: str, owner: str, age_seconds: int | None) -> None:
        self.host = host
        self.owner = owner
        self.age_seconds = age_seconds
        age = "" if age_seconds is None else f" (heartbeat {age_seconds} s ago)"
        super().__init__(f"{host} is locked by {owner}{age}")


class BootstrapChanged(SSHError):
    """Steps of another plan already ran on this machine; re-running blindly could break it."""

    reason = "BootstrapChanged"

    def __init__(self, host: str, recorded: str, current: str) -> None:
        self.host = host
        self.recorded = recorded
        self.current = current
        super().__init__(
            f"bootstrap data changed after steps ran on {host} (recorded plan {recorded[:12]}, "
            f"now {current[:12]}); delete the state directory on the host to run the new plan"
        )


class StepFailed(SSHError):
    """A step exited non-zero. A later job runs it again (done steps stay skipped)."""

    reason = "StepFailed"
    retryable = True

    def __init__(self, index: int, description: str, exit_code: int, output_tail: str) -> None:
        self.index = index
        self.description = description
        self.exit_code = exit_code
        self.output_tail = output_tail
        super().__init__(f"step {index + 1} ({description}) failed with exit code {exit_code}")


class StepTimeout(SSHError):
    """A step ran past its deadline; its process group was killed on the host."""

    reason = "StepTimeout"
    retryable = True

    def __init__(self, index: int, description: str, timeout: float, output_tail: str) -> None:
        self.index = index
        self.description = description
        self.timeout = timeout
        self.output_tail = output_tail
        super().__init__(
            f"step {index + 1} ({description}) did not finish within {timeout:g} s and was killed"
        )


class JobTimeout(SSHError):
    """The whole job ran past its deadline (a running step is killed, done steps stay done)."""

    reason = "JobTimeout"
    retryable = True

    def __init__(self, host: str, timeout: float) -> None:
        self.host = host
        self.timeout = timeout
        super().__init__(f"job on {host} did not finish within {timeout:g} s")


class StepInterrupted(SSHError):
    """A step started earlier but its process is gone without an exit code (host rebooted?).

    Whether re-running it is safe depends on the step: the caller decides (``Job.rerun_interrupted``
    or deleting the state directory).
    """

    reason = "StepInterrupted"

    def __init__(self, index: int, description: str) -> None:
        self.index = index
        self.description = description
        super().__init__(
            f"step {index + 1} ({description}) was started earlier but its process is gone "
            "without an exit code (host rebooted or process killed)"
        )


class BootstrapIncomplete(SSHError):
    """All steps ran but the bootstrap never wrote its success sentinel."""

    reason = "BootstrapIncomplete"

    def __init__(self, host: str, sentinel: str) -> None:
        self.host = host
        self.sentinel = sentinel
        super().__init__(f"all steps ran on {host} but {sentinel} does not exist")


class UnsafeLockDirectory(SSHError):
    """The host lock's directory is not one only root controls (a symlink, another owner, or
    writable by others): a local user could hold or forge the host's lock there. Nothing ran;
    a person must fix the host."""

    reason = "UnsafeLockDirectory"
    retryable = False

    def __init__(self, host: str, detail: str) -> None:
        self.host = host
        super().__init__(f"{host}: refusing the host lock's directory: {detail}")


class HostNotClean(SSHError):
    """The host carries another machine's success sentinel: it was not cleaned after its last
    machine (e.g. one the reference provider bootstrapped). Bootstrapping over it could join a
    host that still runs another node; retried, so cleaning the host is enough to go on."""

    reason = "HostNotClean"
    retryable = True

    def __init__(self, host: str, sentinel: str) -> None:
        self.host = host
        self.sentinel = sentinel
        super().__init__(
            f"{host} was bootstrapped for another machine ({sentinel} exists, and this machine"
            f" never ran here): clean the host (reset the node, remove {sentinel}) or reboot it"
        )


class JobCancelled(SSHError):
    """The caller cancelled the job; the running step's processes were killed."""

    reason = "JobCancelled"
    retryable = True


class JobDetached(SSHError):
    """The runner detached (graceful shutdown): it stopped waiting, but the running step keeps
    running on the host, its markers stay, and the next job for the machine awaits it."""

    reason = "JobDetached"
    retryable = True

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"stopped waiting for the job on {host} (the controller is shutting down); a running "
            "step keeps running there and the next attempt resumes it"
        )


class RemoteError(SSHError):
    """The host-side helper could not do its work (missing tool, full disk, read-only fs)."""

    reason = "RemoteError"
    retryable = True

    def __init__(self, host: str, detail: str) -> None:
        self.host = host
        self.detail = detail
        super().__init__(f"runner helper failed on {host}: {detail}")
