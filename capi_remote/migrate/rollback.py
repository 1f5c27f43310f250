"""The steps back to the reference (``capi-remote migrate --rollback``), each safe to re-run.

Pausing, unpausing and the report are the migration's own steps. The others undo the migration
from what its record kept: capi-remote's controller is stopped, the reference's CRDs are applied
back as they were (a full replace, so no field of capi-remote's CRDs or of whoever applied them
since stays behind), the reference's Deployments get their replicas back, and each
RemoteMachine is annotated once the Clusters run again, since k0smotron does not watch Clusters
(and loses a providerID capi-remote set ahead of a bootstrap that has not succeeded).
Host-key policies and the known_hosts ConfigMaps stay: the reference ignores them.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from capi_remote.api import PROVIDER_ID_SET_FOR_ANNOTATION, crdgen
from capi_remote.kube.client import ApiError
from capi_remote.migrate import apply, checks
from capi_remote.migrate.display import shown
from capi_remote.migrate.errors import MigrationError, WaitingForOperator
from capi_remote.migrate.inventory import CRD_NAMES, CRDS, cluster_of, key, list_all
from capi_remote.migrate.steps import PAUSED, Context, stop_deployments
from capi_remote.resources import REMOTE_MACHINES

TOUCH_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/rolled-back-at"


async def stop_capi_remote(ctx: Context) -> None:
    found = [key(d) for d in checks.our_deployments(ctx.inventory)]
    if not found and not ctx.options.capi_remote_stopped:
        raise WaitingForOperator(
            "no capi-remote Deployment found to stop: stop its controller yourself, then run "
            "`capi-remote migrate --rollback --capi-remote-stopped`"
        )
    await stop_deployments(ctx, "stop-capi-remote", found, ctx.record.state.our_replicas)


async def restore_crds(ctx: Context) -> None:
    saved = ctx.record.saved_crds
    ours = [
        name
        for name in CRD_NAMES
        if checks.provider_label(ctx.inventory.crds.get(name) or {}) == crdgen.PROVIDER_LABEL
    ]
    missing = [name for name in ours if name not in saved]
    if missing:
        raise MigrationError(
            f"the record keeps no reference CRD for {', '.join(missing)}: apply the reference's "
            "CRDs yourself (kubectl apply --server-side --force-conflicts), then run again"
        )
    for name in ours:
        current = await ctx.kube.get(CRDS, None, name)
        body = copy.deepcopy(saved[name])
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await ctx.kube.replace(CRDS, body)
        ctx.say("restore-crds", f"put back the reference's CRD {name}")
    left = await apply.wait_established(ctx.kube, ours, ctx.options.wait)
    if left:
        raise WaitingForOperator(f"CRDs not established yet: {', '.join(left)}")


async def start_reference(ctx: Context) -> None:
    state = ctx.record.state
    for ref, replicas in sorted(state.replicas.items()):
        try:
            await apply.scale(ctx.kube, ref, replicas)
        except ApiError as error:
            if not error.not_found:
                raise
            ctx.say("start-reference", f"Deployment {shown(ref)} is gone", "warn")
            continue
        ctx.say("start-reference", f"scaled Deployment {shown(ref)} back to {replicas}")
    state.replicas = {}


async def touch(ctx: Context) -> None:
    """Runs after the unpause, which cleared the record's list of Clusters: every RemoteMachine
    with a Cluster is annotated (an annotation change wakes the reference up, nothing else), and
    loses capi-remote's ``Paused`` condition, which would otherwise stay behind (the reference
    never updates it) and make a later migration believe capi-remote had taken over."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for rm in await list_all(ctx.kube, REMOTE_MACHINES):
        if cluster_of(rm) is None:
            continue
        meta = rm["metadata"]
        try:
            await _drop_paused_condition(ctx, rm)
            patch = touch_patch(rm, stamp)
            await ctx.kube.patch(REMOTE_MACHINES, meta["namespace"], meta["name"], patch)
        except ApiError as error:
            if not error.not_found:
                raise
    ctx.say("touch", f"annotated RemoteMachines with {TOUCH_ANNOTATION}")


def touch_patch(rm: dict[str, Any], stamp: str) -> dict[str, Any]:
    """The touch; for a machine whose providerID capi-remote set ahead of a bootstrap that has
    not succeeded, also that providerID taken back: the reference skips every RemoteMachine that
    has one, and would never bootstrap it."""
    annotations: dict[str, Any] = {TOUCH_ANNOTATION: stamp}
    patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
    meta = rm["metadata"]
    ahead = (meta.get("annotations") or {}).get(PROVIDER_ID_SET_FOR_ANNOTATION) == meta["uid"]
    provisioned = ((rm.get("status") or {}).get("initialization") or {}).get("provisioned")
    if ahead and not provisioned and (rm.get("spec") or {}).get("providerID"):
        annotations[PROVIDER_ID_SET_FOR_ANNOTATION] = None
        patch["spec"] = {"providerID": None}
    return patch


async def _drop_paused_condition(ctx: Context, rm: dict[str, Any]) -> None:
    conditions = (rm.get("status") or {}).get("conditions") or []
    kept = [c for c in conditions if c.get("type") != PAUSED]
    if len(kept) != len(conditions):
        rm["status"]["conditions"] = kept
        await ctx.kube.replace(REMOTE_MACHINES, rm, subresource="status")
