"""What the operator asked for on the command line, as one frozen object."""

from __future__ import annotations

from pathlib import Path

import attrs

from capi_remote.migrate.record import DEFAULT_NAMESPACE


@attrs.frozen
class Options:
    rollback: bool = False
    dry_run: bool = False
    #: Stop a k0smotron Deployment that runs all of k0smotron's controllers, not only its
    #: Remote Machine provider (its control-plane and bootstrap providers stop too).
    stop_all_in_one: bool = False
    #: Accept the host keys the hosts present now, without asking.
    trust_on_first_use: bool = False
    #: A known_hosts file the operator verified: keys are taken from it instead of asked for.
    known_hosts: Path | None = None
    #: Components to apply (the release's infrastructure-components.yaml); CRDs from it replace
    #: the reference's, the rest starts the controller. None: the built-in CRDs, and the
    #: operator starts the controller.
    components: Path | None = None
    record_namespace: str = DEFAULT_NAMESPACE
    #: How long a step waits for the cluster (the controller to act, pods to go) before it stops
    #: and asks to be run again.
    wait: float = 300.0
    #: Rollback only: the operator confirms capi-remote's controller is stopped (when it does not
    #: run as a Deployment migrate can scale).
    capi_remote_stopped: bool = False
    scan_timeout: float = 10.0
