"""Issue 13 point 3: jobSpecTemplate is no Pod-create grant. Each way a tenant could use the
provisioning Pod to get a service account's token, another Secret, or a privileged container is
refused with ProvisioningJobInvalid naming the field; the allowed fields still render."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from reconcilers.remotemachine import jobspec
from reconcilers.remotemachine.jobtemplate import InvalidProvisionJob
from tests.unit.test_provisionjob import inputs

JSONDict = dict[str, Any]
POD = "spec.provisionJob.jobSpecTemplate.spec.template.spec"
CONTAINER = f"{POD}.containers[0]"


def template(pod: JSONDict | None = None, **container: Any) -> JSONDict:
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "provision", "image": "ssh:1", **container}],
                    **(pod or {}),
                }
            }
        }
    }


SECRET_VOLUME = {"name": "loot", "secret": {"secretName": "other-tenant-data"}}


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (template({"serviceAccountName": "admin"}), f"{POD}.serviceAccountName"),
        (template({"serviceAccount": "admin"}), f"{POD}.serviceAccount"),
        (
            template({"automountServiceAccountToken": True}),
            f"{POD}.automountServiceAccountToken",
        ),
        (template({"volumes": [SECRET_VOLUME]}), f"{POD}.volumes"),
        (
            template(
                {"containers": [{"name": "provision", "image": "a"}, {"name": "x", "image": "b"}]}
            ),
            f"{POD}.containers",
        ),
        (template({"initContainers": [{"name": "x", "image": "b"}]}), f"{POD}.initContainers"),
        (template({"hostPID": True}), f"{POD}.hostPID"),
        (template({"hostIPC": True}), f"{POD}.hostIPC"),
        (template({"nodeName": "control-plane-0"}), f"{POD}.nodeName"),
        (template({"runtimeClassName": "unconfined"}), f"{POD}.runtimeClassName"),
        (
            template({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
            f"{POD}.securityContext.seccompProfile.type",
        ),
        (template(volumeMounts=[{"name": "x", "mountPath": "/x"}]), f"{CONTAINER}.volumeMounts"),
        (template(envFrom=[{"secretRef": {"name": "db"}}]), f"{CONTAINER}.envFrom"),
        (
            template(
                env=[{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}]
            ),
            f"{CONTAINER}.env[0].valueFrom",
        ),
        (template(securityContext={"privileged": True}), f"{CONTAINER}.securityContext.privileged"),
        (
            template(securityContext={"allowPrivilegeEscalation": True}),
            f"{CONTAINER}.securityContext.allowPrivilegeEscalation",
        ),
        (
            template(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}}),
            f"{CONTAINER}.securityContext.capabilities.add",
        ),
        (
            {"spec": {"parallelism": 50, **template()["spec"]}},
            "spec.provisionJob.jobSpecTemplate.spec.parallelism",
        ),
        (
            {"spec": {"template": {"metadata": {"annotations": {"a": "b"}}, "spec": {}}}},
            "spec.provisionJob.jobSpecTemplate.spec.template.metadata.annotations",
        ),
    ],
)
def test_each_pod_grant_is_refused_by_name(given: JSONDict, named: str) -> None:
    with pytest.raises(InvalidProvisionJob) as raised:
        jobspec.render_job(inputs(template=given), "s")
    assert named in str(raised.value)
    with pytest.raises(InvalidProvisionJob):
        jobspec.container(copy.deepcopy(given))  # what the backend checks before any Job


def test_what_provisioning_needs_is_kept_and_the_pod_gets_no_token() -> None:
    allowed = template(
        {
            "hostNetwork": True,
            "nodeSelector": {"zone": "dmz"},
            "tolerations": [{"operator": "Exists"}],
            "imagePullSecrets": [{"name": "registry"}],
            "serviceAccountName": "default",
            "automountServiceAccountToken": False,
            "securityContext": {"fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        },
        imagePullPolicy="Never",
        resources={"limits": {"memory": "64Mi"}},
        env=[{"name": "HTTP_PROXY", "value": "p"}],
        securityContext={"runAsUser": 1000, "allowPrivilegeEscalation": False},
    )
    pod = jobspec.render_job(inputs(template=allowed), "s")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["nodeSelector"] == {"zone": "dmz"}
    assert pod["serviceAccountName"] == "default"
    assert pod["automountServiceAccountToken"] is False
    (ours,) = pod["containers"]
    assert ours["resources"] == {"limits": {"memory": "64Mi"}}
    assert [v["secret"]["secretName"] for v in pod["volumes"]] == ["s"]
