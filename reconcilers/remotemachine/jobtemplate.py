"""What a tenant may ask of the provisioning Job's Pod: an allow-list of jobSpecTemplate fields.

Whoever may create a RemoteMachine may not, in general, create Pods. Without this list the
template would be a Pod-create grant: any service account of the namespace, its token, other
Secrets as volumes or ``valueFrom``, extra containers, privileged containers.

Invariants:
- Every field not listed here is refused with :class:`InvalidProvisionJob` naming its path; none
  is dropped silently, so the user learns why (except the four Job fields the controller always
  drops, see ``jobspec.render_job``).
- The Pod runs as the namespace's ``default`` service account with no token
  (:data:`SERVICE_ACCOUNT`, ``automountServiceAccountToken: false``), one container, and no
  volume but the controller's own Secret.
- Fields that are privileges the namespace's Pod Security admission governs (``hostNetwork``)
  are kept: that admission applies to the Job's Pods as to any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

#: The service account every provisioning Pod runs as; it gets no token.
SERVICE_ACCOUNT: Final = "default"
ROOT: Final = "spec.provisionJob.jobSpecTemplate"


class InvalidProvisionJob(ValueError):
    """spec.provisionJob (or what it needs from the rest of the spec) cannot work."""


Check = Callable[[Any, str], None]
Shape = Mapping[str, "Shape | Check | None"]  # None: any value


def _refuse(path: str, why: str) -> None:
    raise InvalidProvisionJob(f"{path} {why}: the provisioning Pod does not allow it")


def _only(*allowed: object) -> Check:
    def check(value: Any, path: str) -> None:
        if not any(type(value) is type(a) and value == a for a in allowed):
            _refuse(path, f"= {value!r} (allowed: {', '.join(map(repr, allowed))})")

    return check


def _items(shape: Shape) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            _refuse(path, "is not a list")
        for index, item in enumerate(value):
            _walk(item, shape, f"{path}[{index}]")

    return check


def _one_container(value: Any, path: str) -> None:
    if isinstance(value, list) and len(value) > 1:
        _refuse(path, f"has {len(value)} containers (one only)")
    _items(_CONTAINER)(value, path)


_SECCOMP: Shape = {"type": _only("RuntimeDefault")}
_CONTAINER_SECURITY: Shape = {
    "runAsUser": None,
    "runAsGroup": None,
    "runAsNonRoot": None,
    "readOnlyRootFilesystem": None,
    "allowPrivilegeEscalation": _only(False),
    "capabilities": {"drop": None},
    "seccompProfile": _SECCOMP,
}
_POD_SECURITY: Shape = {
    "runAsUser": None,
    "runAsGroup": None,
    "runAsNonRoot": None,
    "fsGroup": None,
    "fsGroupChangePolicy": None,
    "supplementalGroups": None,
    "seccompProfile": _SECCOMP,
}
_CONTAINER: Shape = {
    "name": None,
    "image": None,
    "imagePullPolicy": None,
    "resources": {"limits": None, "requests": None},
    "env": _items({"name": None, "value": None}),  # plain values: no valueFrom
    "securityContext": _CONTAINER_SECURITY,
    "command": None,  # replaced by the provisioning script
    "args": None,  # dropped
}
_POD: Shape = {
    "containers": _one_container,
    "restartPolicy": None,
    "nodeSelector": None,
    "tolerations": None,
    "affinity": None,
    "hostNetwork": None,
    "dnsPolicy": None,
    "dnsConfig": None,
    "imagePullSecrets": _items({"name": None}),
    "securityContext": _POD_SECURITY,
    "priorityClassName": None,
    "activeDeadlineSeconds": None,
    "terminationGracePeriodSeconds": None,
    "serviceAccountName": _only(SERVICE_ACCOUNT),
    "automountServiceAccountToken": _only(False),
}
_METADATA: Shape = {"labels": None, "annotations": None}
_TEMPLATE: Shape = {
    "metadata": _METADATA,
    "spec": {
        "backoffLimit": None,
        "activeDeadlineSeconds": None,
        "ttlSecondsAfterFinished": None,  # the four the controller drops
        "selector": None,
        "manualSelector": None,
        "suspend": None,
        "template": {"metadata": {"labels": None}, "spec": _POD},
    },
}


def _walk(value: Any, shape: Shape, path: str) -> None:
    if not isinstance(value, Mapping):
        _refuse(path, "is not an object")
    for key, item in value.items():
        where = f"{path}.{key}"
        if key not in shape:
            _refuse(where, "is not an allowed field")
        rule = shape[key]
        if rule is None or item is None:
            continue
        if callable(rule):
            rule(item, where)
        else:
            _walk(item, rule, where)


def check(template: Mapping[str, Any]) -> None:
    """Raise InvalidProvisionJob naming the first field the allow-list does not hold."""
    _walk(template, _TEMPLATE, ROOT)
