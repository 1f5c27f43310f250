"""From a host spec to an SSH target: the model's defaults, the bastion's key, and a distinct
reason for each kind of unusable input."""

from __future__ import annotations

from typing import Any

import pytest

from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION
from reconcilers import conditions as c
from reconcilers.remote import HostAccess, InvalidSpec, MissingSecret, NotYetKnown

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot checked here\n-----END OPENSSH PRIVATE KEY-----\n"
FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"


class Source:
    def __init__(self, data: dict[tuple[str, str], bytes], listed: bool = True) -> None:
        self.data = data
        self.listed = listed

    def value(self, namespace: str, name: str, key: str) -> bytes | None:
        return self.data.get((name, key))

    def known(self, namespace: str, name: str) -> bool:
        return self.listed


def access(secrets: dict[tuple[str, str], bytes], listed: bool = True) -> HostAccess:
    return HostAccess(None, Source(secrets, listed), Source({}))  # type: ignore[arg-type]


def spec(**extra: Any) -> dict[str, Any]:
    return {"address": "192.0.2.1", "sshKeyRef": {"name": "k"}, **extra}


def test_defaults_come_from_the_model() -> None:
    target = access({("k", "value"): KEY.encode()}).target_for("ns", spec())
    assert (target.port, target.credentials.user, target.connect_timeout) == (22, "root", 15.0)


def test_a_bastion_without_its_own_key_uses_the_machines_and_pins_are_read() -> None:
    bastion = {"address": "192.0.2.2", "hostKeyPolicy": {"trustOnFirstUse": True}}
    target = access({("k", "value"): KEY.encode()}).target_for(
        "ns",
        spec(bastion=bastion, hostKeyPolicy={"trustOnFirstUse": True}),
        {HOST_KEY_FINGERPRINT_ANNOTATION: FP},
    )
    assert target.via is not None and target.via.credentials.private_key == KEY
    assert target.host_key.fingerprints == (FP,)
    assert target.via.host_key.fingerprints == ()


@pytest.mark.parametrize(
    ("secrets", "extra", "reason"),
    [
        ({("k", "value"): b"\xff"}, {}, c.INVALID_SECRET_DATA),
        (
            {("k", "value"): KEY.encode()},
            {"hostKeyPolicy": {"fingerprint": "x"}},
            c.INVALID_HOST_KEY_POLICY,
        ),
        ({("k", "value"): KEY.encode()}, {"user": "a b"}, c.INVALID_SSH_KEY),
    ],
)
def test_each_kind_of_unusable_input_has_its_reason(
    secrets: dict[tuple[str, str], bytes], extra: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidSpec) as raised:
        access(secrets).target_for("ns", spec(**extra))
    assert raised.value.reason == reason


def test_a_missing_secret_is_told_from_one_not_listed_yet() -> None:
    with pytest.raises(NotYetKnown):
        access({}, listed=False).target_for("ns", spec())
    with pytest.raises(MissingSecret) as raised:
        access({}).target_for("ns", spec())
    assert not isinstance(raised.value, NotYetKnown)


PASSWORDS = {("k", "value"): KEY.encode(), ("db", "password"): b"the-namespace-secret"}
SENT_REFS: list[dict[str, Any]] = [
    {"passwordRef": {"name": "db", "key": "password"}},
    {"useSudo": True, "sudoPasswordRef": {"name": "db", "key": "password"}},
]


@pytest.mark.parametrize("refs", SENT_REFS)
@pytest.mark.parametrize(
    ("policy", "pins"),
    [
        ({"insecureSkipVerification": True}, {}),
        ({"trustOnFirstUse": True}, {}),  # nothing pinned yet: whatever key is presented
    ],
)
def test_a_password_is_never_read_for_a_host_whose_key_is_unverified(
    refs: dict[str, Any], policy: dict[str, Any], pins: dict[str, str]
) -> None:
    """Point 5 of issue 13: a tenant who may not read Secrets names one and its own host."""
    with pytest.raises(InvalidSpec) as raised:
        access(PASSWORDS).target_for("ns", spec(hostKeyPolicy=policy, **refs), pins)
    assert raised.value.reason == c.UNVERIFIED_HOST_FOR_SECRET
    assert "the-namespace-secret" not in str(raised.value)


@pytest.mark.parametrize("refs", SENT_REFS)
@pytest.mark.parametrize(
    ("policy", "pins"),
    [
        ({"fingerprint": FP}, {}),
        ({"trustOnFirstUse": True}, {HOST_KEY_FINGERPRINT_ANNOTATION: FP}),
    ],
)
def test_a_password_goes_to_a_host_whose_key_is_verified(
    refs: dict[str, Any], policy: dict[str, Any], pins: dict[str, str]
) -> None:
    credentials = (
        access(PASSWORDS).target_for("ns", spec(hostKeyPolicy=policy, **refs), pins).credentials
    )
    assert "the-namespace-secret" in (credentials.password, credentials.sudo_password)


def test_the_admins_opt_in_sends_passwords_to_unverified_hosts() -> None:
    opted_in = HostAccess(
        None,  # type: ignore[arg-type]
        Source(PASSWORDS),  # type: ignore[arg-type]
        Source({}),  # type: ignore[arg-type]
        secrets_to_unverified_hosts=True,
    )
    target = opted_in.target_for(
        "ns", spec(hostKeyPolicy={"insecureSkipVerification": True}, **SENT_REFS[0])
    )
    assert target.credentials.password == "the-namespace-secret"


def test_a_key_passphrase_is_read_whatever_the_policy() -> None:
    """The passphrase only decrypts the key in the controller; the host never sees it."""
    secrets = {**PASSWORDS, ("phrase", "passphrase"): b"unlock"}
    key = {"name": "k", "passphraseRef": {"name": "phrase", "key": "passphrase"}}
    target = access(secrets).target_for(
        "ns", spec(sshKeyRef=key, hostKeyPolicy={"insecureSkipVerification": True})
    )
    assert target.credentials.passphrase == "unlock"


def _own(**extra: Any) -> dict[str, Any]:
    """A RemoteMachine whose provisionJob commands log in themselves (no sshKeyRef)."""
    return {
        "metadata": {"namespace": "ns", "annotations": {}},
        "spec": {"address": "192.0.2.1", "provisionJob": {"sshCommand": "tsh ssh"}, **extra},
    }


def test_a_job_that_logs_in_itself_has_no_policy_unless_the_spec_sets_one() -> None:
    assert access({}).own_login(_own()).host_key is None
    assert access({}).own_login(_own(hostKeyPolicy={})).host_key is None
    pinned = access({}).own_login(_own(hostKeyPolicy={"fingerprint": FP})).host_key
    assert pinned is not None and pinned.fingerprints == (FP,)


def test_a_job_that_logs_in_itself_gets_a_sudo_password_only_for_a_verified_host() -> None:
    secrets = {("s", "password"): b"hunter2"}
    ref = {"name": "s", "key": "password"}
    with pytest.raises(InvalidSpec) as raised:
        access(secrets).own_login(_own(user="deploy", sudoPasswordRef=ref))
    assert raised.value.reason == c.UNVERIFIED_HOST_FOR_SECRET
    verified = _own(user="deploy", sudoPasswordRef=ref, hostKeyPolicy={"fingerprint": FP})
    assert access(secrets).own_login(verified).sudo_password == "hunter2"
    # A login password is the commands' business: never read, never refused.
    assert access({}).own_login(_own(passwordRef=ref)).sudo_password is None
