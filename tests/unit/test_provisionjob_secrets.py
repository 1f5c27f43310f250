"""Issue 13 point 6: the Secret the controller makes for a provisioning Job (the private key
without its passphrase, the bootstrap data) does not outlive a switch to the runner, nor wait
for the garbage collector after a deletion; another machine's or a tenant's own Secrets are
never touched."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from capi_remote import Informer, KubeClient
from capi_remote.kube.client import Resource
from capi_remote.resources import JOBS, SECRETS
from reconcilers import conditions as c
from reconcilers.remotemachine.job_backend import JobBackend
from reconcilers.remotemachine.jobspec import MACHINE_UID_LABEL

JSONDict = dict[str, Any]
NS, UID = "tenant", "u-rm"


def owned(name: str, uid: str = UID, label: str = UID) -> JSONDict:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {MACHINE_UID_LABEL: label},
            "ownerReferences": [{"uid": uid, "controller": True, "kind": "RemoteMachine"}],
        }
    }


class Server:
    def __init__(self, secrets: list[JSONDict]) -> None:
        self.secrets = {s["metadata"]["name"]: s for s in secrets}
        self.deleted: list[tuple[str, str]] = []
        self.lists = 0

    async def list(self, resource: Resource, namespace: str, **kwargs: Any) -> JSONDict:
        self.lists += 1
        if resource != SECRETS:
            return {"items": []}
        label = str(kwargs.get("label_selector")).split("=", 1)[1]
        items = [
            s
            for s in self.secrets.values()
            if s["metadata"]["labels"].get(MACHINE_UID_LABEL) == label
        ]
        return {"items": items}

    async def delete(self, resource: Resource, namespace: str, name: str, **kwargs: Any) -> None:
        self.deleted.append((resource.plural, name))
        if resource == SECRETS:
            self.secrets.pop(name, None)


def backend(server: Server, jobs: list[JSONDict]) -> JobBackend:
    client = cast(KubeClient, server)

    def watch_jobs() -> Informer:
        informer = Informer(client, JOBS)
        for job in jobs:
            informer.store.upsert(job)
        informer.synced.set()
        return informer

    return JobBackend(client, None, watch_jobs)  # type: ignore[arg-type]


def machine(spec: JSONDict, reason: str | None = None) -> JSONDict:
    status = (
        {"conditions": [{"type": c.READY, "status": "False", "reason": reason}]} if reason else {}
    )
    return {"metadata": {"namespace": NS, "name": "rm", "uid": UID}, "spec": spec, "status": status}


def job(attempt: int, secret: str) -> JSONDict:
    return {
        "metadata": {
            "name": f"rm-provision-{attempt}",
            "namespace": NS,
            "uid": f"job-{attempt}",
            "labels": {MACHINE_UID_LABEL: UID},
            "annotations": {"remote.infrastructure.cluster.x-k8s.io/attempt": str(attempt)},
        },
        "spec": {
            "template": {
                "spec": {
                    "volumes": [{"name": "capi-remote-provision", "secret": {"secretName": secret}}]
                }
            }
        },
    }


def test_switching_to_the_runner_deletes_the_jobs_and_every_secret_made_for_them() -> None:
    server = Server(
        [
            owned("rm-provision-1-aaaa"),
            owned("rm-provision-2-bbbb"),  # its Job was never created
            owned("tenant-labelled", uid="someone-else"),  # the label alone is not ours
            owned("other-machine", uid="u-other", label="u-other"),
        ]
    )
    jobs = backend(server, [job(1, "rm-provision-1-aaaa")])
    # The spec dropped provisionJob while a Job's failure waited for the next attempt.
    asyncio.run(jobs.retire(machine({"address": "192.0.2.1"}, c.PROVISIONING_JOB_FAILED)))
    assert ("jobs", "rm-provision-1") in server.deleted
    assert sorted(server.secrets) == ["other-machine", "tenant-labelled"]


def test_a_machine_that_never_used_jobs_costs_no_request() -> None:
    server = Server([])
    asyncio.run(backend(server, []).retire(machine({"address": "192.0.2.1"}, c.PROVISIONED)))
    assert (server.lists, server.deleted) == (0, [])


def test_deleting_a_machine_that_switched_modes_deletes_its_job_secrets() -> None:
    server = Server([owned("rm-provision-1-aaaa")])
    rm = machine({"address": "192.0.2.1"}, c.PROVISIONING_JOB_RUNNING)
    asyncio.run(backend(server, [job(1, "rm-provision-1-aaaa")]).cancel(rm))
    assert server.secrets == {}
