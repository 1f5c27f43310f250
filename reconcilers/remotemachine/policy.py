"""How often and how soon a machine's bootstrap and cleanup are tried again: one frozen policy
for both backends, so the runner path and the Job path cannot drift apart."""

from __future__ import annotations

import attrs


@attrs.frozen
class AttemptPolicy:
    """After the n-th failed attempt wait min(cap, base*2^(n-1)) seconds (10 s, 20 s ... 300 s)."""

    backoff_base: float = 10.0
    backoff_cap: float = 300.0
    #: failed cleanup attempts after which the host is released anyway (with an Event)
    cleanup_attempts: int = 3
    #: a cleanup that finds the host locked by a live job waits this long (from the deletion's
    #: start) before locked counts as a failed attempt: a lock goes stale 60 s after its holder
    #: died
    cleanup_lock_patience: float = 180.0
    #: how often a job looks again at a host another job holds locked
    lock_retry: float = 10.0
    #: a running attempt's progress ("step k of n") is written this long after its start
    #: first: most bootstraps (a kubeadm join, the 30 s of benchmark E2) end sooner and write
    #: only their outcome, so a progress write each cost the API server and Cluster API (each
    #: RemoteMachine write is a Machine reconcile) a write per machine for nothing
    first_progress: float = 45.0
    #: ... and then at most this often, the latest state each time
    progress_interval: float = 15.0

    def backoff(self, attempts: int) -> float:
        return float(min(self.backoff_cap, self.backoff_base * 2 ** max(0, attempts - 1)))
