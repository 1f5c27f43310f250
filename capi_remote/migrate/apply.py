"""Server-side apply of arbitrary objects (CRDs, a release's components) and Deployment scaling.

Applies as field manager ``capi-remote`` with ``force``: fields another manager owns (the
reference's installer) are taken over, as ``kubectl apply --server-side --force-conflicts`` does.
The resource of each object is found by API discovery (no guessed plurals).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import yaml

from capi_remote.kube.client import APPLY_PATCH, KubeClient, Resource
from capi_remote.migrate.errors import MigrationError
from capi_remote.migrate.inventory import CRDS, DEPLOYMENTS
from capi_remote.migrate.poll import until_none_pending

JSONDict = dict[str, Any]
FIELD_MANAGER = "capi-remote"
#: A components file is the operator's, but still parsed with a cap.
MAX_COMPONENTS_BYTES = 16 * 1024 * 1024


def load_components(path: Path) -> tuple[list[JSONDict], list[JSONDict]]:
    """The CRDs and the other objects of a YAML stream (e.g. infrastructure-components.yaml)."""
    try:
        if path.stat().st_size > MAX_COMPONENTS_BYTES:
            raise MigrationError(f"{path} is larger than {MAX_COMPONENTS_BYTES} bytes")
        documents = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as error:
        raise MigrationError(f"cannot read {path}: {error}") from error
    crds = [d for d in documents if d.get("kind") == "CustomResourceDefinition"]
    return crds, [d for d in documents if d.get("kind") != "CustomResourceDefinition"]


@attrs.define
class Applier:
    kube: KubeClient
    _resources: dict[tuple[str, str], Resource] = attrs.field(factory=dict)

    async def resource(self, api_version: str, kind: str) -> Resource:
        if (api_version, kind) not in self._resources:
            group, _, version = api_version.rpartition("/")
            path = f"/apis/{api_version}" if group else f"/api/{version}"
            listing = await self.kube.get_path(path)
            for item in listing.get("resources") or []:
                if "/" not in item.get("name", ""):
                    found = Resource(group, version, item["name"], item["kind"], item["namespaced"])
                    self._resources[(api_version, item["kind"])] = found
        if (api_version, kind) not in self._resources:
            raise MigrationError(f"the API server does not serve {kind} in {api_version}")
        return self._resources[(api_version, kind)]

    async def apply(self, obj: JSONDict) -> JSONDict:
        resource = await self.resource(str(obj.get("apiVersion")), str(obj.get("kind")))
        meta = obj.get("metadata") or {}
        return await self.kube.patch(
            resource,
            meta.get("namespace") if resource.namespaced else None,
            str(meta.get("name")),
            obj,
            content_type=APPLY_PATCH,
            field_manager=FIELD_MANAGER,
            force=True,
        )


async def apply_crd(kube: KubeClient, crd: JSONDict) -> None:
    name = crd["metadata"]["name"]
    await kube.patch(
        CRDS, None, name, crd, content_type=APPLY_PATCH, field_manager=FIELD_MANAGER, force=True
    )


async def wait_established(kube: KubeClient, names: list[str], within: float) -> list[str]:
    """The CRDs among ``names`` not Established after ``within`` seconds (empty: all are)."""

    async def pending() -> list[str]:
        left = []
        for name in names:
            conditions = ((await kube.get(CRDS, None, name)).get("status") or {}).get(
                "conditions"
            ) or []
            if not any(
                c.get("type") == "Established" and c.get("status") == "True" for c in conditions
            ):
                left.append(name)
        return left

    return await until_none_pending(pending, within)


async def scale(kube: KubeClient, ref: str, replicas: int) -> None:
    namespace, _, name = ref.partition("/")
    await kube.patch(DEPLOYMENTS, namespace, name, {"spec": {"replicas": replicas}})


async def wait_scaled_down(kube: KubeClient, refs: list[str], within: float) -> list[str]:
    """The Deployments among ``refs`` still running pods after ``within`` seconds."""

    async def pending() -> list[str]:
        left = []
        for ref in refs:
            namespace, _, name = ref.partition("/")
            if ((await kube.get(DEPLOYMENTS, namespace, name)).get("status") or {}).get("replicas"):
                left.append(ref)
        return left

    return await until_none_pending(pending, within)
