"""k0smotron's documented flows that needed more than the host-key step (issue 16, points 1, 3
and 4), from its manifests (v1beta1, as its docs write them):

- docs/capi-remotemachine-teleport.md: a RemoteMachine without ``sshKeyRef`` whose provisionJob
  commands log in themselves (``tsh -i /identity-output/identity --proxy ... ssh``). The image
  is the test bed's ``tsh`` stand-in with its identity baked in at that path: capi-remote refuses
  the guide's Secret volume (a tenant's Job gets no volume but the controller's own Secret).
- docs/capi-remote.md: a RemoteMachineTemplate and a PooledRemoteMachine with no host-key
  policy. The probe tells the truth (``Untrusted``, not ``Unreachable``), and giving the host a
  policy, then its line in the known_hosts ConfigMap, makes it usable within seconds.
- its standalone RemoteMachine flow (a RemoteMachine and the Machine that names it): the labels
  and annotations the user puts on the RemoteMachine reach the Machine, as k0smotron copies them
  (users select Machines on them), without overriding the Machine's own.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from capi_remote.api import GROUP
from capi_remote.resources import (
    CONFIGMAPS,
    JOBS,
    MACHINES,
    POOLED_REMOTE_MACHINES,
    REMOTE_MACHINE_TEMPLATES,
    REMOTE_MACHINES,
)
from capi_remote_testbed import samples
from capi_remote_testbed.node import Node
from capi_remote_testbed.nodeimages import TSH_IMAGE
from e2e.bed import Bed, BedFactory
from e2e.test_machine_flows import _ready_reason, _running
from reconcilers.pool import is_free
from reconcilers.remotemachine.jobspec import MACHINE_UID_LABEL

pytestmark = pytest.mark.integration

K0SMOTRON_API = f"{GROUP}/v1beta1"
TELEPORT = "tsh -i /identity-output/identity --proxy teleport.example.com:443"
_KINDS = {
    r.kind: attrs.evolve(r, version="v1beta1")
    for r in (REMOTE_MACHINES, POOLED_REMOTE_MACHINES, REMOTE_MACHINE_TEMPLATES)
}


async def _create_v1beta1(bed: Bed, kind: str, name: str, spec: dict[str, Any]) -> None:
    """Create an object as k0smotron's docs write it: through the v1beta1 API."""
    obj = {
        "apiVersion": K0SMOTRON_API,
        "kind": kind,
        "metadata": {"name": name, "namespace": bed.namespace},
        "spec": spec,
    }
    await bed.kube.create(_KINDS[kind], obj)


async def test_a_provision_job_whose_commands_log_in_themselves(
    make_bed: BedFactory, node: Node
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    # The Teleport admin's part: the bot's identity, and nothing else, may log in as root.
    authorized = f"printf '%s\\n' '{node.image_identity}' > /root/.ssh/authorized_keys"
    assert host.exec_inside(["sh", "-c", authorized]).returncode == 0
    await bed.cluster("tsh")
    data = await bed.bootstrap_secret("tsh-bootstrap")
    container = {
        "name": "teleport",
        "image": TSH_IMAGE,
        "imagePullPolicy": "Never",
        # The stand-in verifies the host as tsh does (tsh against its cluster's CA).
        "env": [{"name": "TSH_KNOWN_HOSTS", "value": host.known_hosts_line}],
    }
    pod = {"hostNetwork": True, "containers": [container], "restartPolicy": "Never"}
    await _create_v1beta1(
        bed,
        "RemoteMachine",
        "tsh-0",
        {
            "address": host.address,
            "useSudo": False,
            "provisionJob": {
                "sshCommand": f"{TELEPORT} ssh",
                "scpCommand": f"{TELEPORT} scp",
                "jobSpecTemplate": {"spec": {"template": {"spec": pod}}},
            },
        },
    )
    await bed.machine("tsh-0", "tsh", data)

    await _running(bed, "tsh-0", within=180)
    done = await bed.condition(REMOTE_MACHINES, "tsh-0", "BootstrapExecSucceeded")
    assert done["reason"] == "Provisioned", done
    assert host.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode == 0
    rm = await bed.get(REMOTE_MACHINES, "tsh-0") or {}
    (job,) = await bed.list(JOBS, label_selector=f"{MACHINE_UID_LABEL}={rm['metadata']['uid']}")
    pod_spec = job["spec"]["template"]["spec"]
    assert [v["name"] for v in pod_spec["volumes"]] == ["capi-remote-provision"]
    assert pod_spec["automountServiceAccountToken"] is False
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    assert env["CAPI_REMOTE_HOST_KEYS"] == "command"
    assert env["CAPI_REMOTE_SSH"] == f"{TELEPORT} ssh"

    # Deleting it does not hang on the cleanup the controller cannot log in for.
    await bed.kube.delete(MACHINES, bed.namespace, "tsh-0")

    async def gone() -> bool:
        return await bed.get(REMOTE_MACHINES, "tsh-0") is None

    await bed.wait_for("RemoteMachine tsh-0 gone", gone, 120)


async def _health(bed: Bed, name: str, generation: int = 0) -> dict[str, object]:
    """The pooled host's health once a probe of ``generation`` or later answered."""
    pooled = await bed.get(POOLED_REMOTE_MACHINES, name) or {}
    health = dict((pooled.get("status") or {}).get("health") or {})
    if "lastProbeTime" not in health or int(str(health.get("observedGeneration") or 0)) < (
        generation or pooled["metadata"]["generation"]
    ):
        return {}
    return health


async def test_a_pool_host_without_a_policy_is_untrusted_until_its_key_is_known(
    make_bed: BedFactory,
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    await bed.cluster("pool")
    data = await bed.bootstrap_secret("pool-bootstrap")
    await _create_v1beta1(
        bed,
        "RemoteMachineTemplate",
        "remote-test-template",
        {"template": {"spec": {"pool": "default"}}},
    )
    await _create_v1beta1(
        bed,
        "PooledRemoteMachine",
        "remote-test-0",
        {
            "pool": "default",
            "machine": {
                "address": host.address,
                "port": 22,
                "user": "root",
                "sshKeyRef": {"name": samples.SSH_KEY_SECRET},
            },
        },
    )
    probed = await bed.wait_for("the first probe", lambda: _health(bed, "remote-test-0"), 60)
    assert probed["state"] == "Untrusted", probed
    assert "HostKeyUnknown" in str(probed["message"])
    assert host.host_key.fingerprint in str(probed["message"]), "the key it presented"
    listed = bed.plane.kubectl("get", "pooledremotemachines", "-n", bed.namespace)
    assert "Untrusted" in listed, listed

    await bed.create(
        samples.machine_deployment(
            "workers", bed.namespace, "pool", data, "remote-test-template", 1
        )
    )

    async def waiting() -> list[str]:
        machines = await bed.list(REMOTE_MACHINES)
        return [
            rm["metadata"]["name"]
            for rm in machines
            if any(
                c.get("type") == "Ready" and c.get("reason") == "WaitingForPoolMachine"
                for c in (rm.get("status") or {}).get("conditions", [])
            )
        ]

    (machine,) = await bed.wait_for("a machine waiting for a trusted host", waiting, 120)

    # The operator (or `capi-remote migrate`) points the host at a known_hosts ConfigMap that
    # does not list it yet: still Untrusted, now measured against that ConfigMap.
    await bed.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pool-known-hosts"},
            "data": {"known_hosts": ""},
        }
    )
    policy = {"knownHostsRef": {"kind": "ConfigMap", "name": "pool-known-hosts"}}
    changed = await bed.kube.patch(
        POOLED_REMOTE_MACHINES,
        bed.namespace,
        "remote-test-0",
        {"spec": {"machine": {"hostKeyPolicy": policy}}},
    )
    generation = int(changed["metadata"]["generation"])
    empty = await bed.wait_for(
        "a probe of the new policy",
        lambda: _health(bed, "remote-test-0", generation),
        30,
        diagnose=lambda: bed.describe("pooledremotemachine", "remote-test-0"),
    )
    assert empty["state"] == "Untrusted", empty
    pooled = await bed.get(POOLED_REMOTE_MACHINES, "remote-test-0") or {}
    assert not is_free(pooled)

    # Its line is added: re-probed within seconds (not at the periodic probe 5 minutes on),
    # claimed and provisioned.
    await bed.kube.patch(
        CONFIGMAPS,
        bed.namespace,
        "pool-known-hosts",
        {"data": {"known_hosts": host.known_hosts_line + "\n"}},
    )

    async def healthy() -> bool:
        return (await _health(bed, "remote-test-0", generation)).get("state") == "Healthy"

    await bed.wait_for(
        "the host trusted",
        healthy,
        20,
        diagnose=lambda: bed.describe("pooledremotemachine", "remote-test-0"),
    )
    await _ready_reason(bed, machine, "Provisioned", within=120)

    async def running() -> bool:
        machines = await bed.list(MACHINES)
        return bool(machines) and all(
            (m.get("status") or {}).get("phase") == "Running" for m in machines
        )

    await bed.wait_for("the MachineDeployment's Machine Running", running, 120)
    assert host.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode == 0


async def test_a_standalone_machines_labels_and_annotations_reach_its_machine(
    make_bed: BedFactory,
) -> None:
    bed = await make_bed(1)
    await bed.cluster("k0s")
    data = await bed.bootstrap_secret("k0s-bootstrap")
    spec = bed.host_spec(bed.fleet.hosts[0])
    obj = {
        "apiVersion": K0SMOTRON_API,
        "kind": "RemoteMachine",
        "metadata": {
            "name": "k0s-0",
            "namespace": bed.namespace,
            "labels": {"rack": "r1", "role": "from-remote-machine"},
            "annotations": {"example.com/owner": "team-a", "cluster.x-k8s.io/paused-not": "x"},
        },
        "spec": spec,
    }
    await bed.kube.create(_KINDS["RemoteMachine"], obj)
    machine = samples.machine("k0s-0", bed.namespace, "k0s", data)
    machine["metadata"]["labels"]["role"] = "the-machines-own"
    await bed.create(machine)
    await _running(bed, "k0s-0")

    got = await bed.get(MACHINES, "k0s-0")
    assert got is not None
    labels, annotations = got["metadata"]["labels"], got["metadata"].get("annotations") or {}
    assert labels["rack"] == "r1"
    assert labels["role"] == "the-machines-own", "a Machine's own value is never changed"
    assert annotations["example.com/owner"] == "team-a"
    assert "cluster.x-k8s.io/paused-not" not in annotations, "Cluster API's keys stay its own"
