"""The migration's progress, kept in the cluster (a ConfigMap), so any run can continue another.

A run reads the record, skips the steps it lists as done, and writes the record *before* each
change it is about to make whose undo needs to know the state before it (which Clusters were
paused by their owners, how many replicas the reference's Deployments had, the reference's CRDs).
So a run killed at any point leaves a record that the next run, forward or back, can finish from.

Invariants: writes use the ConfigMap's resourceVersion (two runs at once: one fails with a
conflict, nothing is lost); the saved CRDs are stored gzip-compressed, within ``MAX_SAVED_BYTES``
(a ConfigMap holds at most 1 MiB); the record is only read from the namespace the operator names,
which tenants must not be able to write (default ``kube-system``).
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any, Literal

import attrs

from capi_remote.kube.client import ApiError, KubeClient
from capi_remote.migrate.errors import MigrationError
from capi_remote.resources import CONFIGMAPS

JSONDict = dict[str, Any]
Direction = Literal["migrate", "rollback"]
RECORD_NAME = "capi-remote-migration"
DEFAULT_NAMESPACE = "kube-system"
MAX_SAVED_BYTES = 900 * 1024
_STATE_KEY = "state.json"
_CRD_PREFIX = "crd."


@attrs.define
class State:
    """What is recorded. ``paused_before`` is None until a pause step has looked (then: the
    Clusters their owners had paused, which no unpause of ours touches)."""

    direction: Direction = "migrate"
    done: list[str] = attrs.field(factory=list)
    targets: list[str] = attrs.field(factory=list)
    paused_before: list[str] | None = None
    replicas: dict[str, int] = attrs.field(factory=dict)
    our_replicas: dict[str, int] = attrs.field(factory=dict)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> State:
        data = json.loads(text)
        fields = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@attrs.define
class Record:
    kube: KubeClient
    namespace: str
    state: State = attrs.field(factory=State)
    saved_crds: dict[str, JSONDict] = attrs.field(factory=dict)
    _version: str | None = None

    @classmethod
    async def load(cls, kube: KubeClient, namespace: str) -> Record:
        record = cls(kube, namespace)
        try:
            obj = await kube.get(CONFIGMAPS, namespace, RECORD_NAME)
        except ApiError as error:
            if error.not_found:
                return record
            raise
        record._version = obj["metadata"]["resourceVersion"]
        data = obj.get("data") or {}
        if _STATE_KEY in data:
            record.state = State.from_json(data[_STATE_KEY])
        for name, value in (obj.get("binaryData") or {}).items():
            if name.startswith(_CRD_PREFIX):
                record.saved_crds[name.removeprefix(_CRD_PREFIX)] = json.loads(
                    gzip.decompress(base64.b64decode(value))
                )
        return record

    @property
    def exists(self) -> bool:
        return self._version is not None

    def begin(self, direction: Direction) -> None:
        """Start or continue a run in ``direction``; turning around starts its steps afresh
        (what the other direction recorded about the cluster's former state is kept)."""
        if self.state.direction != direction:
            self.state.direction = direction
            self.state.done = []

    async def mark_done(self, step: str) -> None:
        if step not in self.state.done:
            self.state.done.append(step)
        await self.save()

    async def save(self) -> None:
        binary = {
            _CRD_PREFIX + name: base64.b64encode(
                gzip.compress(json.dumps(crd, sort_keys=True).encode())
            ).decode()
            for name, crd in sorted(self.saved_crds.items())
        }
        if sum(len(v) for v in binary.values()) > MAX_SAVED_BYTES:
            raise MigrationError("the reference's CRDs are too large to keep in the record")
        obj: JSONDict = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": RECORD_NAME,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "capi-remote-migrate"},
            },
            "data": {_STATE_KEY: self.state.to_json()},
            "binaryData": binary,
        }
        try:
            if self._version is None:
                saved = await self.kube.create(CONFIGMAPS, obj)
            else:
                obj["metadata"]["resourceVersion"] = self._version
                saved = await self.kube.replace(CONFIGMAPS, obj)
        except ApiError as error:
            if error.conflict:
                raise MigrationError(
                    f"the record {self.namespace}/{RECORD_NAME} changed meanwhile: is another "
                    "migrate running? Run again when it has finished"
                ) from error
            raise
        self._version = saved["metadata"]["resourceVersion"]
