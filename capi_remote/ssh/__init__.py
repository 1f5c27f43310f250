"""Run bootstrap plans on Linux hosts over SSH: verified host keys, exactly-once steps.

Independent of Kubernetes (an import-linter contract keeps it that way). The pieces:

- :class:`Target` (address, :class:`Credentials`, :class:`HostKeyPolicy`, optional bastion),
- :class:`Job` (target, plan, machine UID) → ``Runner.submit(job)`` → :class:`JobResult`,
- :func:`probe` / ``Runner.probe`` → :class:`HostFacts`,
- errors in :mod:`capi_remote.ssh.errors`, each with ``reason`` and ``retryable``.

See docs/ssh-runner.md for what happens on the host.
"""

from __future__ import annotations

from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.errors import (
    AuthenticationFailed,
    BootstrapChanged,
    BootstrapIncomplete,
    ConnectionLost,
    HostKeyMismatch,
    HostKeyUnknown,
    HostLocked,
    HostNotClean,
    HostUnreachable,
    InvalidCredentials,
    JobCancelled,
    JobDetached,
    JobTimeout,
    RemoteError,
    SSHError,
    StepFailed,
    StepInterrupted,
    StepTimeout,
    SudoFailed,
    UnsafeLockDirectory,
)
from capi_remote.ssh.executor import Job, JobResult, StepOutcome, execute
from capi_remote.ssh.hostkeys import HostKeyPolicy, KnownHosts, fingerprint
from capi_remote.ssh.probe import HostAddress, HostFacts, probe
from capi_remote.ssh.runner import Runner
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target

__all__ = [
    "AuthenticationFailed",
    "BootstrapChanged",
    "BootstrapIncomplete",
    "ConnectionLost",
    "Credentials",
    "HostAddress",
    "HostFacts",
    "HostKeyMismatch",
    "HostKeyPolicy",
    "HostKeyUnknown",
    "HostLocked",
    "HostNotClean",
    "HostUnreachable",
    "InvalidCredentials",
    "Job",
    "JobCancelled",
    "JobDetached",
    "JobResult",
    "JobTimeout",
    "KnownHosts",
    "RemoteError",
    "Runner",
    "SSHError",
    "SSHSettings",
    "StepFailed",
    "StepInterrupted",
    "StepOutcome",
    "StepTimeout",
    "SudoFailed",
    "Target",
    "UnsafeLockDirectory",
    "execute",
    "fingerprint",
    "probe",
]
