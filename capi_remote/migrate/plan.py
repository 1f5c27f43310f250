"""The plan: the ordered steps of a migration (or a rollback), each with what it will do here.

Pure: computed from the :class:`Inventory`, the options and the recorded :class:`State`, so
``--dry-run`` prints exactly what a run would do, and unit tests check the plan without a cluster.
Step names are stable: they are what the record lists as done and what progress lines show.
"""

from __future__ import annotations

import attrs

from capi_remote.migrate import checks, hostkeys
from capi_remote.migrate.display import shown
from capi_remote.migrate.inventory import CRD_NAMES, Inventory, key
from capi_remote.migrate.options import Options
from capi_remote.migrate.record import State

MIGRATE_STEPS = (
    "check",
    "pause",
    "stop-reference",
    "crds",
    "host-keys",
    "controller",
    "unpause",
    "report",
)
ROLLBACK_STEPS = (
    "check",
    "pause",
    "stop-capi-remote",
    "restore-crds",
    "start-reference",
    "unpause",
    "touch",
    "report",
)
#: Steps that change nothing, so they run on every run instead of being skipped once done.
ALWAYS = frozenset({"check", "report"})


@attrs.frozen
class PlannedStep:
    name: str
    summary: str
    details: tuple[str, ...] = ()
    done: bool = False


def steps(options: Options) -> tuple[str, ...]:
    return ROLLBACK_STEPS if options.rollback else MIGRATE_STEPS


def make(inventory: Inventory, options: Options, state: State) -> list[PlannedStep]:
    direction = "rollback" if options.rollback else "migrate"
    done = set(state.done) if state.direction == direction else set()
    describe = {
        "check": _check,
        "pause": _pause,
        "stop-reference": _stop_reference,
        "crds": _crds,
        "host-keys": _host_keys,
        "controller": _controller,
        "unpause": _unpause,
        "report": _report,
        "stop-capi-remote": _stop_ours,
        "restore-crds": _restore_crds,
        "start-reference": _start_reference,
        "touch": _touch,
    }
    planned = []
    for name in steps(options):
        summary, details = describe[name](inventory, options, state)
        planned.append(
            PlannedStep(name, summary, tuple(details), name in done and name not in ALWAYS)
        )
    return planned


Described = tuple[str, list[str]]


def _names(refs: list[str]) -> str:
    return ", ".join(shown(r) for r in refs) if refs else "none"


def _check(inventory: Inventory, options: Options, state: State) -> Described:
    return "read-only checks (versions, controllers, validation, provisioning)", []


def _pause(inventory: Inventory, options: Options, state: State) -> Described:
    targets = _targets(inventory, state)
    before = _before(inventory, state, targets)
    return f"pause {len(targets)} Clusters (spec.paused)", [
        f"Clusters: {_names(targets)}",
        f"already paused by their owners (left paused at the end): {_names(before)}",
    ]


def _targets(inventory: Inventory, state: State) -> list[str]:
    return sorted(set(state.targets) | set(inventory.target_clusters()))


def _before(inventory: Inventory, state: State, targets: list[str]) -> list[str]:
    """Clusters their owners paused: as recorded, or (nothing recorded yet) as they are now."""
    if state.paused_before is not None:
        return list(state.paused_before)
    return [t for t in targets if paused(inventory, t)]


def paused(inventory: Inventory, ref: str) -> bool:
    return bool(((inventory.cluster(ref) or {}).get("spec") or {}).get("paused"))


def _stop_reference(inventory: Inventory, options: Options, state: State) -> Described:
    found = checks.reference_deployments(inventory, options)
    lines = [
        f"Deployment {shown(key(d))}: replicas {(d.get('spec') or {}).get('replicas', 1)} -> 0"
        for d in found
    ]
    return "stop the reference's controller (scale its Deployments to 0)", lines or [
        "no Deployment found: make sure the reference's Remote Machine controller is stopped"
    ]


def _crds(inventory: Inventory, options: Options, state: State) -> Described:
    source = str(options.components) if options.components else "the built-in CRDs"
    return "replace the CRDs (server-side apply, forcing the reference's field manager)", [
        f"from {shown(source)}: {', '.join(CRD_NAMES)}",
        "the reference's CRDs are kept in the record, for a rollback",
    ]


def _host_keys(inventory: Inventory, options: Options, state: State) -> Described:
    found = hostkeys.unkeyed(inventory)
    hosts = sorted({u.host for u in found})
    if options.known_hosts is not None:
        how = f"keys from {shown(options.known_hosts)}"
    elif options.trust_on_first_use:
        how = "keys the hosts present now, trusted on first use"
    else:
        how = "keys the hosts present now, each shown for you to confirm"
    namespaces = sorted({u.namespace for u in found})
    return f"host keys for {len(hosts)} hosts of {len(found)} objects without a policy", [
        how,
        f"stored in ConfigMap {hostkeys.CONFIGMAP} of namespaces: {_names(namespaces)}",
        *(
            f"{u.kind} {shown(u.namespace + '/' + u.name)} at {shown(u.address)}:{u.port}"
            for u in found
        ),
    ]


def _controller(inventory: Inventory, options: Options, state: State) -> Described:
    if options.components is not None:
        start = f"apply the other components of {shown(options.components)}"
    else:
        start = "you start capi-remote's controller (docs/deployment.md); migrate waits for it"
    return "start capi-remote's controller and wait until it has taken over", [
        start,
        "taken over: every RemoteMachine of a paused Cluster has capi-remote's Paused condition",
    ]


def _unpause(inventory: Inventory, options: Options, state: State) -> Described:
    targets = _targets(inventory, state)
    before = set(_before(inventory, state, targets))
    return "unpause the Clusters paused by this migration", [
        f"Clusters: {_names([t for t in targets if t not in before])}"
    ]


def _report(inventory: Inventory, options: Options, state: State) -> Described:
    return "show every RemoteMachine's and PooledRemoteMachine's state", []


def _stop_ours(inventory: Inventory, options: Options, state: State) -> Described:
    found = checks.our_deployments(inventory)
    lines = [f"Deployment {shown(key(d))}: replicas -> 0" for d in found]
    return "stop capi-remote's controller", lines or [
        "no capi-remote Deployment found: stop the controller yourself and pass "
        "--capi-remote-stopped"
    ]


def _restore_crds(inventory: Inventory, options: Options, state: State) -> Described:
    return "put the reference's CRDs back (as kept in the record)", []


def _start_reference(inventory: Inventory, options: Options, state: State) -> Described:
    lines = [f"Deployment {shown(k)}: replicas -> {n}" for k, n in sorted(state.replicas.items())]
    return "start the reference's controller again", lines or ["nothing recorded to start"]


def _touch(inventory: Inventory, options: Options, state: State) -> Described:
    return "annotate each RemoteMachine so the reference reconciles it", [
        "k0smotron does not watch Clusters: after an unpause it acts on a machine only when the "
        "machine itself changes"
    ]
