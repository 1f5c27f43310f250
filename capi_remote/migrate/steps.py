"""The steps of a migration to capi-remote, each safe to run again after an interruption.

Each step first records what its undo needs (see :mod:`.record`), then makes its changes with
operations that are no-ops when already made (merge patches to a value, server-side apply, adding
known_hosts lines), then returns; the runner marks it done. A step killed half-way is run whole
again.
"""

from __future__ import annotations

from typing import Any

import attrs

from capi_remote.api import crdgen
from capi_remote.kube.client import ApiError, KubeClient
from capi_remote.migrate import apply, checks, hostkeys
from capi_remote.migrate.display import Progress, Word, shown
from capi_remote.migrate.errors import WaitingForOperator
from capi_remote.migrate.inventory import (
    CRD_NAMES,
    Inventory,
    cluster_of,
    key,
    list_all,
    provisioned,
)
from capi_remote.migrate.options import Options
from capi_remote.migrate.plan import paused
from capi_remote.migrate.poll import until_none_pending
from capi_remote.migrate.record import Record
from capi_remote.resources import CLUSTERS, POOLED_REMOTE_MACHINES, REMOTE_MACHINES

JSONDict = dict[str, Any]
#: capi-remote's condition on the RemoteMachines of a paused Cluster; the reference has none.
PAUSED = "Paused"
_VOLATILE_METADATA = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields")


@attrs.define
class Context:
    kube: KubeClient
    inventory: Inventory
    options: Options
    record: Record
    progress: Progress
    confirm: hostkeys.Confirm

    def say(self, step: str, message: str, word: Word = "info") -> None:
        self.progress.line(word, step, message)


async def set_paused(kube: KubeClient, ref: str, value: bool) -> None:
    namespace, _, name = ref.partition("/")
    try:
        await kube.patch(CLUSTERS, namespace, name, {"spec": {"paused": value}})
    except ApiError as error:
        if not error.not_found:
            raise


async def pause(ctx: Context) -> None:
    state = ctx.record.state
    targets = sorted(set(state.targets) | set(ctx.inventory.target_clusters()))
    if state.paused_before is None:
        state.paused_before = [t for t in targets if paused(ctx.inventory, t)]
    state.targets = targets
    await ctx.record.save()
    for ref in targets:
        if ref not in state.paused_before:
            await set_paused(ctx.kube, ref, True)
            ctx.say("pause", f"paused Cluster {shown(ref)}")


async def unpause(ctx: Context) -> None:
    state = ctx.record.state
    for ref in state.targets:
        if ref not in (state.paused_before or []):
            await set_paused(ctx.kube, ref, False)
            ctx.say("unpause", f"unpaused Cluster {shown(ref)}")
    state.paused_before = None
    state.targets = []


async def stop_reference(ctx: Context) -> None:
    found = [key(d) for d in checks.reference_deployments(ctx.inventory, ctx.options)]
    await stop_deployments(ctx, "stop-reference", found, ctx.record.state.replicas)


async def stop_deployments(
    ctx: Context, step: str, refs: list[str], recorded: dict[str, int]
) -> None:
    """Scale Deployments to 0, having recorded their replicas once (the first run's are the
    ones to restore), and wait until their pods are gone."""
    by_key = {key(d): d for d in ctx.inventory.provider_deployments}
    for ref in refs:
        recorded.setdefault(ref, int((by_key[ref].get("spec") or {}).get("replicas", 1)))
    await ctx.record.save()
    for ref in refs:
        await apply.scale(ctx.kube, ref, 0)
        ctx.say(step, f"scaled Deployment {shown(ref)} to 0")
    left = await apply.wait_scaled_down(ctx.kube, refs, ctx.options.wait)
    if left:
        raise WaitingForOperator(
            f"pods of {', '.join(map(shown, left))} are still running after "
            f"{ctx.options.wait:g} s: run again once they are gone"
        )


def _bare(obj: JSONDict) -> JSONDict:
    """An object as one would apply it: no status, no server-set metadata."""
    metadata = {k: v for k, v in obj["metadata"].items() if k not in _VOLATILE_METADATA}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": metadata}


def our_crds(options: Options) -> list[JSONDict]:
    if options.components is not None:
        crds, _ = apply.load_components(options.components)
        if crds:
            return crds
    return [crdgen.crd(kind) for kind in crdgen.KINDS]


async def replace_crds(ctx: Context) -> None:
    record = ctx.record
    for name, crd in ctx.inventory.crds.items():
        reference = checks.provider_label(crd) != crdgen.PROVIDER_LABEL
        if name in CRD_NAMES and name not in record.saved_crds and reference:
            record.saved_crds[name] = _bare(crd)
    await record.save()
    crds = our_crds(ctx.options)
    for crd in crds:
        await apply.apply_crd(ctx.kube, crd)
        ctx.say("crds", f"applied CRD {shown(crd['metadata']['name'])}")
    names = [crd["metadata"]["name"] for crd in crds]
    left = await apply.wait_established(ctx.kube, names, ctx.options.wait)
    if left:
        raise WaitingForOperator(f"CRDs not established yet: {', '.join(left)}")


async def host_keys(ctx: Context) -> None:
    found = hostkeys.unkeyed(ctx.inventory)
    if not found:
        ctx.say("host-keys", "every host has a host-key policy")
        return
    hosts = {u.host for u in found}
    if ctx.options.known_hosts is not None:
        lines = hostkeys.from_file(ctx.options.known_hosts, hosts)
    else:
        lines = await hostkeys.from_hosts(
            hosts,
            ctx.options.scan_timeout,
            None if ctx.options.trust_on_first_use else ctx.confirm,
            lambda host, detail: ctx.say(
                "host-keys", f"{shown(host[0])}:{host[1]}: {shown(detail)}", "warn"
            ),
        )
    for namespace in sorted({u.namespace for u in found}):
        mine = sorted(
            {line for u in found if u.namespace == namespace for line in lines.get(u.host, [])}
        )
        if mine:
            await hostkeys.store(ctx.kube, namespace, mine)
    for u in found:
        where = f"{u.kind} {shown(u.namespace + '/' + u.name)}"
        if u.host not in lines:
            ctx.say("host-keys", f"{where}: no trusted key, left without a policy", "warn")
            continue
        try:
            await hostkeys.set_policy(ctx.kube, u)
        except ApiError as error:
            if not error.not_found:
                raise
        ctx.say("host-keys", f"{where}: knownHostsRef {hostkeys.CONFIGMAP}")


async def controller(ctx: Context) -> None:
    state = ctx.record.state
    for ref, replicas in sorted(state.our_replicas.items()):
        await apply.scale(ctx.kube, ref, replicas)
        ctx.say("controller", f"scaled Deployment {shown(ref)} back to {replicas}")
    others = apply.load_components(ctx.options.components)[1] if ctx.options.components else []
    applier = apply.Applier(ctx.kube)
    for obj in others:
        await applier.apply(obj)
        ctx.say(
            "controller", f"applied {shown(obj.get('kind'))} {shown(obj['metadata'].get('name'))}"
        )
    if not others and not state.our_replicas:
        ctx.say(
            "controller",
            "start capi-remote's controller now (docs/deployment.md; its CRDs are in place): "
            f"waiting up to {ctx.options.wait:g} s for it to take over",
            "wait",
        )
    left = await until_none_pending(
        lambda: not_taken_over(ctx.kube, state.targets), ctx.options.wait
    )
    if left:
        raise WaitingForOperator(
            f"capi-remote's controller has not taken over {len(left)} RemoteMachines (e.g. "
            f"{shown(left[0])}): start it, then run the same command again"
        )
    state.our_replicas = {}


async def not_taken_over(kube: KubeClient, targets: list[str]) -> list[str]:
    """RemoteMachines of the paused Clusters without capi-remote's ``Paused`` condition (the
    reference never writes one)."""
    left = []
    for rm in await list_all(kube, REMOTE_MACHINES):
        meta = rm.get("metadata") or {}
        owned = any(o.get("kind") == "Machine" for o in meta.get("ownerReferences") or [])
        if cluster_of(rm) not in targets or not owned or meta.get("deletionTimestamp"):
            continue
        conditions = (rm.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == PAUSED and c.get("status") == "True" for c in conditions):
            left.append(key(rm))
    return left


async def report(ctx: Context) -> None:
    for rm in await list_all(ctx.kube, REMOTE_MACHINES):
        conditions = {c.get("type"): c for c in (rm.get("status") or {}).get("conditions") or []}
        ready = conditions.get("Ready") or {}
        ctx.say(
            "report",
            f"RemoteMachine {shown(key(rm))} cluster={shown(cluster_of(rm) or '-')} "
            f"provisioned={'yes' if provisioned(rm) else 'no'} "
            f"ready={shown(ready.get('status', '-'))}/{shown(ready.get('reason', '-'))}",
        )
    for host in await list_all(ctx.kube, POOLED_REMOTE_MACHINES):
        spec = host.get("spec") or {}
        health = (host.get("status") or {}).get("health") or {}
        address = (spec.get("machine") or {}).get("address", "-")
        claim = (spec.get("claim") or {}).get("name", "-")
        ctx.say(
            "report",
            f"PooledRemoteMachine {shown(key(host))} address={shown(address)} "
            f"health={shown(health.get('state', '-'))} claimed-by={shown(claim)}",
        )
