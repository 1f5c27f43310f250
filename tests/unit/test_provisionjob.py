"""provisionJob mode's pure parts: names, the Job and Secret it renders (no secret in the Job),
and how a Job's state and its Pod's termination message become conditions."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from capi_remote.ssh import HostKeyPolicy, Target, jobscript
from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.errors import InvalidCredentials
from reconcilers.remotemachine import jobread, jobspec
from reconcilers.remotemachine.jobtemplate import InvalidProvisionJob

JSONDict = dict[str, Any]
KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-material\n-----END OPENSSH PRIVATE KEY-----\n"
)


def inputs(**overrides: Any) -> jobspec.JobInputs:
    values: dict[str, Any] = {
        "namespace": "ns",
        "machine_name": "m-0",
        "machine_uid": "uid-1",
        "generation": 3,
        "attempt": 2,
        "address": "10.0.0.2",
        "port": 2222,
        "user": "deploy",
        "privilege": "sudo",
        "host_keys": "known-hosts",
        "ssh_command": "ssh",
        "scp_command": "scp",
        "connect_timeout": 10,
        "job_timeout": 3600,
        "template": {
            "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
            "spec": {
                "backoffLimit": 2,
                "ttlSecondsAfterFinished": 10,
                "template": {
                    "spec": {
                        "hostNetwork": True,
                        "containers": [
                            {
                                "name": "provision",
                                "image": "ssh:1",
                                "args": ["ignored"],
                                "env": [{"name": "HTTP_PROXY", "value": "p"}],
                            },
                        ],
                    }
                },
            },
        },
        "private_key": KEY,
        "host_script": b"#!/bin/sh\necho join-token-123\n",
        "known_hosts": "[10.0.0.2]:2222 ssh-ed25519 AAAAknownhostkey\n",
        "sudo_password": "hunter2",
        "cluster_name": "c1",
        "steps": 4,
    }
    values.update(overrides)
    return jobspec.JobInputs(**values)


def test_names_are_deterministic_and_fit_a_label() -> None:
    assert jobspec.job_name("m-0", 1) == "m-0-provision-1"
    long = "x" * 200
    name = jobspec.job_name(long, 99)
    assert len(name) <= 63 and name == jobspec.job_name(long, 99)
    assert jobspec.job_name("y" * 200, 99) != name


def test_the_job_holds_no_secret_and_mounts_the_secret() -> None:
    given = inputs()
    secret = jobspec.render_secret(given)
    job = jobspec.render_job(given, secret["metadata"]["name"])
    text = json.dumps(job)
    for secret_value in ("secret-key-material", "join-token-123", "hunter2", "AAAAknownhostkey"):
        assert secret_value not in text
    meta = job["metadata"]
    assert meta["name"] == "m-0-provision-2" and meta["namespace"] == "ns"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
            "kind": "RemoteMachine",
            "name": "m-0",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"] == {
        "team": "a",
        jobspec.MACHINE_UID_LABEL: "uid-1",
        "cluster.x-k8s.io/cluster-name": "c1",
    }
    assert meta["annotations"] == {
        "note": "x",
        jobspec.ATTEMPT_ANNOTATION: "2",
        jobspec.GENERATION_ANNOTATION: "3",
        jobspec.STEPS_ANNOTATION: "4",
    }
    spec = job["spec"]
    assert spec["backoffLimit"] == 2  # the user's
    assert spec["activeDeadlineSeconds"] == 3600
    assert "ttlSecondsAfterFinished" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["hostNetwork"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "default"
    (ours,) = pod["containers"]
    assert ours["image"] == "ssh:1" and "args" not in ours
    assert ours["command"] == ["/bin/sh", "-c", jobscript.CONTAINER_SCRIPT, "capi-remote-provision"]
    assert ours["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e["value"] for e in ours["env"]}
    assert env["HTTP_PROXY"] == "p"
    assert env["CAPI_REMOTE_ADDRESS"] == "10.0.0.2" and env["CAPI_REMOTE_PORT"] == "2222"
    assert env["CAPI_REMOTE_PRIVILEGE"] == "sudo" and env["CAPI_REMOTE_HOST_KEYS"] == "known-hosts"
    assert ours["volumeMounts"] == [
        {"name": jobspec.VOLUME_NAME, "mountPath": jobscript.SECRET_MOUNT, "readOnly": True}
    ]
    assert pod["volumes"] == [
        {
            "name": jobspec.VOLUME_NAME,
            "secret": {
                "secretName": secret["metadata"]["name"],
                "defaultMode": jobspec.SECRET_MODE,
            },
        }
    ]
    assert jobread.secret_names(job) == [secret["metadata"]["name"]]


def test_the_secret_is_immutable_owned_and_named_by_its_content() -> None:
    secret = jobspec.render_secret(inputs())
    assert secret["immutable"] is True and secret["type"] == "Opaque"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert secret["metadata"]["name"].startswith("m-0-provision-2-")
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert files[jobscript.KEY_PRIVATE_KEY] == KEY.encode()
    assert files[jobscript.KEY_SUDO_PASSWORD] == b"hunter2\n"
    assert files[jobscript.KEY_HOST_SCRIPT].startswith(b"#!/bin/sh")
    assert jobspec.render_secret(inputs())["metadata"]["name"] == secret["metadata"]["name"]
    changed = jobspec.render_secret(inputs(host_script=b"other"))
    assert changed["metadata"]["name"] != secret["metadata"]["name"]
    assert (
        jobscript.KEY_SUDO_PASSWORD not in jobspec.render_secret(inputs(sudo_password=None))["data"]
    )


def test_a_job_whose_commands_log_in_themselves_gets_no_key_and_the_same_pod_rules() -> None:
    # provisionJob without sshKeyRef (k0smotron's Teleport and Okta ASA guides): the Secret
    # holds the bootstrap only; the Pod is bound by the same allow-list and gets only our Secret.
    given = inputs(private_key=None, host_keys=jobscript.COMMAND_VERIFIES, sudo_password=None)
    secret = jobspec.render_secret(given)
    assert set(secret["data"]) == {
        jobscript.KEY_KNOWN_HOSTS,
        jobscript.KEY_FINGERPRINTS,
        jobscript.KEY_HOST_SCRIPT,
    }
    job = jobspec.render_job(given, secret["metadata"]["name"])
    pod = job["spec"]["template"]["spec"]
    assert [v["secret"]["secretName"] for v in pod["volumes"]] == [secret["metadata"]["name"]]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("default", False)
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["CAPI_REMOTE_HOST_KEYS"] == "command"
    volumes = {"volumes": [{"name": "identity", "secret": {"secretName": "identity-output"}}]}
    template = {"spec": {"template": {"spec": {**volumes, "containers": [{"image": "tsh:1"}]}}}}
    with pytest.raises(InvalidProvisionJob, match="volumes"):
        jobspec.render_job(inputs(private_key=None, template=template), "s")


@pytest.mark.parametrize(
    "template",
    [
        {},
        {"spec": {"template": {"spec": {"containers": []}}}},
        {"spec": {"template": {"spec": {"containers": [{"name": "provision"}]}}}},
    ],
)
def test_a_template_without_an_image_is_invalid(template: JSONDict) -> None:
    with pytest.raises(InvalidProvisionJob):
        jobspec.render_job(inputs(template=template), "s")


def test_a_minimal_template_gets_a_never_restarting_pod() -> None:
    template = {"spec": {"template": {"spec": {"containers": [{"image": "ssh:1"}]}}}}
    job = jobspec.render_job(inputs(template=template), "s")
    assert job["spec"]["backoffLimit"] == 0  # attempts are the controller's
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "provision"


def _job(conditions: list[JSONDict], **annotations: str) -> JSONDict:
    return {
        "metadata": {"name": "m-0-provision-1", "namespace": "ns", "annotations": annotations},
        "status": {"conditions": conditions},
    }


def test_job_phases_attempts_and_times() -> None:
    assert jobread.job_phase(_job([])) == "running"
    complete = _job([{"type": "Complete", "status": "True"}])
    assert jobread.job_phase(complete) == "complete"
    failed = _job(
        [{"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:00:10Z"}],
        **{jobspec.ATTEMPT_ANNOTATION: "3", jobspec.GENERATION_ANNOTATION: "7"},
    )
    assert jobread.job_phase(failed) == "failed"
    assert jobread.job_phase(_job([{"type": "FailureTarget", "status": "True"}])) == "failed"
    assert jobread.job_phase(_job([{"type": "Failed", "status": "False"}])) == "running"
    assert (jobread.attempt_of(failed), jobread.generation_of(failed)) == (3, 7)
    assert jobread.finished_at(failed) == 1767225610.0


def _pod(finished: str, **terminated: Any) -> JSONDict:
    return {
        "status": {
            "containerStatuses": [
                {
                    "name": "provision",
                    "state": {"terminated": {"finishedAt": finished, **terminated}},
                }
            ]
        }
    }


def test_pod_results_pick_the_latest_end_or_say_why_it_never_started() -> None:
    pods = [
        _pod("2026-01-01T00:00:09Z", exitCode=1, message="old"),
        _pod("2026-01-01T00:00:20Z", exitCode=3, reason="Error", message="new"),
    ]
    assert jobread.pod_result(pods) == jobread.PodResult(exit_code=3, reason="Error", message="new")
    waiting = {
        "status": {
            "containerStatuses": [
                {
                    "name": "provision",
                    "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "absent"}},
                }
            ]
        }
    }
    assert jobread.pod_result([waiting]) == jobread.PodResult(
        reason="ErrImageNeverPull", message="absent"
    )
    assert jobread.pod_result([]) == jobread.PodResult()


def test_failures_become_conditions_in_the_runner_terms() -> None:
    failed = _job(
        [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }
        ]
    )
    output = "step output\ncapi-remote-job failed StepFailed step 2 (runcmd: x) exited with 3\n"
    view = jobread.describe_failure(failed, jobread.PodResult(exit_code=1, message=output))
    assert (view.cause, view.retryable) == ("StepFailed", True)
    assert view.message == (
        "Job m-0-provision-1 failed (BackoffLimitExceeded: Job has reached the specified"
        " backoff limit); StepFailed: step 2 (runcmd: x) exited with 3"
    )
    assert view.output_tail == output
    mismatch = jobread.describe_failure(
        failed, jobread.PodResult(message="Host key verification failed.")
    )
    assert (mismatch.cause, mismatch.retryable) == ("HostKeyMismatch", False)
    unknown = jobread.describe_failure(failed, jobread.PodResult(exit_code=9, message="?"))
    assert (unknown.cause, unknown.retryable) == ("ProvisioningJobFailed", True)
    assert unknown.message.endswith("container provision exited with 9")
    deadline = _job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}])
    view = jobread.describe_failure(deadline, jobread.PodResult(reason="ErrImageNeverPull"))
    assert view.retryable and "ErrImageNeverPull" in view.message


def _target(policy: HostKeyPolicy) -> Target:
    return Target(address="10.0.0.2", credentials=Credentials(password="x"), host_key=policy)


def test_host_key_policies_become_container_modes() -> None:
    fp = "SHA256:" + "A" * 43
    assert jobspec.host_key_material(_target(HostKeyPolicy.skip_verification()), None) == (
        "insecure",
        "",
        (),
    )
    assert jobspec.host_key_material(_target(HostKeyPolicy.pinned(fp)), None) == (
        "pinned",
        "",
        (fp,),
    )
    assert jobspec.host_key_material(_target(HostKeyPolicy.trust_on_first_use(fp)), None) == (
        "pinned",
        "",
        (fp,),
    )
    assert jobspec.host_key_material(_target(HostKeyPolicy.trust_on_first_use()), None)[0] == (
        "trust-on-first-use"
    )
    known = jobspec.host_key_material(_target(HostKeyPolicy.from_known_hosts("h k v")), "h k v\n")
    assert known == ("known-hosts", "h k v\n", ())


def test_addresses_come_out_as_after_a_runner_probe() -> None:
    report = jobscript.JobReport(
        already_bootstrapped=False,
        hostname="h1",
        addresses=(
            ("eth0", "inet", "10.0.0.2/24", "global"),
            ("eth1", "inet", "192.168.1.5/24", "global"),
            ("eth0", "inet6", "fe80::1/64", "link"),
        ),
    )
    assert jobread.addresses_from("10.0.0.2", report) == [
        {"type": "ExternalIP", "address": "10.0.0.2"},
        {"type": "InternalIP", "address": "192.168.1.5"},
        {"type": "Hostname", "address": "h1"},
    ]


def test_private_keys_are_handed_to_ssh_unencrypted() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(b"phrase"),
    ).decode()
    plain = jobspec.openssh_key(encrypted, "phrase")
    assert "OPENSSH PRIVATE KEY" in plain
    loaded = serialization.load_ssh_private_key(plain.encode(), password=None)
    assert loaded.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()  # type: ignore[union-attr]
    with pytest.raises(InvalidCredentials):
        jobspec.openssh_key(encrypted, None)
