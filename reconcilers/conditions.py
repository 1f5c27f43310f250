"""Condition types and reasons shared by the reconcilers: what `kubectl describe` shows.

Each wait and each outcome has its own reason, so a user can tell "waiting for the pool" from
"host unreachable" without reading controller logs. docs/troubleshooting.md explains each one.
"""

from __future__ import annotations

from typing import Final

# Condition types
READY: Final = "Ready"
PAUSED: Final = "Paused"
BOOTSTRAP_SUCCEEDED: Final = "BootstrapExecSucceeded"  # the reference provider's name

# Reasons: waits
WAITING_FOR_MACHINE_OWNER: Final = "WaitingForMachineOwner"
WAITING_FOR_CLUSTER: Final = "WaitingForCluster"
WAITING_FOR_CLUSTER_INFRASTRUCTURE: Final = "WaitingForClusterInfrastructure"
WAITING_FOR_BOOTSTRAP_DATA: Final = "WaitingForBootstrapData"
WAITING_FOR_POOL_MACHINE: Final = "WaitingForPoolMachine"
WAITING_FOR_SECRET: Final = "WaitingForSecret"

# Reasons: progress and outcomes
PROVISIONING: Final = "Provisioning"
PROVISIONED: Final = "Provisioned"
ALREADY_BOOTSTRAPPED: Final = "AlreadyBootstrapped"
INVALID_BOOTSTRAP_DATA: Final = "InvalidBootstrapData"
BOOTSTRAP_WARNINGS: Final = "BootstrapWarnings"
INVALID_SSH_KEY: Final = "InvalidSSHKey"
INVALID_SECRET_DATA: Final = "InvalidSecretData"
INVALID_HOST_KEY_POLICY: Final = "InvalidHostKeyPolicy"
UNVERIFIED_HOST_FOR_SECRET: Final = "UnverifiedHostForSecret"
HOST_KEY_MISMATCH: Final = "HostKeyMismatch"
HOST_KEY_UNKNOWN: Final = "HostKeyUnknown"
HOST_UNREACHABLE: Final = "HostUnreachable"
AUTHENTICATION_FAILED: Final = "AuthenticationFailed"
SUDO_FAILED: Final = "SudoFailed"
HOST_LOCKED: Final = "HostLocked"
# provisionJob mode (reconcilers/remotemachine/job_backend.py)
PROVISIONING_JOB_RUNNING: Final = "ProvisioningJobRunning"
PROVISIONING_JOB_FAILED: Final = "ProvisioningJobFailed"
PROVISIONING_JOB_INVALID: Final = "ProvisioningJobInvalid"
IMAGE_LACKS_SSH: Final = "ImageLacksSSH"
HOST_PINS_RESTORED: Final = "HostPinsRestored"  # an Event
CLAIMED: Final = "Claimed"  # an Event: the first start binds the machine to its pooled host
# PooledRemoteMachine Events (reconcilers/pool/)
STALE_CLAIM_RELEASED: Final = "StaleClaimReleased"
#: the claimant was deleted (or made anew) before its first start: an ordinary release
CLAIM_RELEASED: Final = "ClaimReleased"
HOST_NOT_CLEAN: Final = "HostNotClean"  # also a RemoteMachine reason (capi_remote.ssh.errors)
DELETING: Final = "Deleting"
CLEANUP_FAILED: Final = "CleanupFailed"

# Reasons: pause and clusters
PAUSED_REASON: Final = "Paused"
NOT_PAUSED: Final = "NotPaused"
ENDPOINT_MISMATCH: Final = "ControlPlaneEndpointMismatch"
