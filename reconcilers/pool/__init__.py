"""Pools of hosts: the claim protocol (``claims.py``) and the PooledRemoteMachine reconciler that
keeps each host's health fresh (``reconciler.py``)."""

from reconcilers.pool.claims import (
    CLAIM_INDEX,
    FREE_INDEX,
    INDEXERS,
    POOL_INDEX,
    RECHECK_ANNOTATION,
    PoolClaims,
    claimant_key,
    held_host,
    host_spec_for,
    is_free,
    pin_edits,
    pool_members,
    release,
    release_held,
    unclaim_if_bound_elsewhere,
    with_host_pins,
)
from reconcilers.pool.reconciler import first_use_pins, pool_informer, probe_with, setup

__all__ = [
    "CLAIM_INDEX",
    "FREE_INDEX",
    "INDEXERS",
    "POOL_INDEX",
    "RECHECK_ANNOTATION",
    "PoolClaims",
    "claimant_key",
    "first_use_pins",
    "held_host",
    "host_spec_for",
    "is_free",
    "pin_edits",
    "pool_informer",
    "pool_members",
    "probe_with",
    "release",
    "release_held",
    "setup",
    "unclaim_if_bound_elsewhere",
    "with_host_pins",
]
