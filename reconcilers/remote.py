"""From a RemoteMachine to SSH work: the target (address, credentials from Secrets, host-key
policy, bastion) and the provision/cleanup jobs, with SSH errors turned into condition terms.

Invariant: a value that is sent to the host (passwordRef, sudoPasswordRef) is read only for a
host whose key is verified (known_hosts, pinned fingerprints, or a trust-on-first-use pin already
recorded), unless the cluster admin opted in with ``--allow-secrets-to-unverified-hosts``: whoever
may create a RemoteMachine could otherwise name any Secret key of the namespace and an address of
their own. The key passphrase never leaves the controller (it decrypts the key locally).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import attrs

from capi_remote import api
from capi_remote.api import (
    BASTION_HOST_KEY_FINGERPRINT_ANNOTATION,
    HOST_KEY_FINGERPRINT_ANNOTATION,
    Bastion,
    PooledMachineSpec,
    Timeouts,
    from_dict,
    parse_duration,
)
from capi_remote.bootstrap import BootstrapPlan, RunCommand
from capi_remote.ssh import (
    Credentials,
    HostFacts,
    HostKeyPolicy,
    HostLocked,
    Job,
    Runner,
    SSHError,
    Target,
)
from reconcilers import conditions as c
from reconcilers.hostjobs import HostJobs, JobState, Outcome
from reconcilers.secrets import ObjectSource

JSONDict = dict[str, Any]

# Cleanup defaults by bootstrap config kind (Machine.spec.bootstrap.configRef.kind), used when
# the machine has no cleanUpCommands; unknown kinds get only our own state removed.
DEFAULT_CLEANUP: dict[str, tuple[str, ...]] = {
    "K0sWorkerConfig": ("k0s stop || true", "k0s reset"),
    "K0sControllerConfig": ("k0s etcd leave || true", "k0s stop || true", "k0s reset"),
    "KubeadmConfig": ("kubeadm reset --force",),
}


@attrs.frozen
class OwnLogin:
    """A host that a provisioning Job's own commands log in to (no sshKeyRef): ``host_key`` is
    None when the spec sets no policy, the commands then verify the host themselves."""

    host_key: HostKeyPolicy | None
    sudo_password: str | None = attrs.field(default=None, repr=False)


class MissingSecret(Exception):
    """A Secret (or ConfigMap) the spec names is not there (yet); a watch on it is in place."""


class InvalidSpec(ValueError):
    """The spec, or data it names, cannot be used; ``reason`` is the condition reason that
    says which part (so a bad known_hosts is not reported as a bad SSH key)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotYetKnown(MissingSecret):
    """The watch on a Secret (or ConfigMap) the spec names has not listed yet (a controller that
    just started): whether it exists is unknown, so nothing may be concluded from its absence."""


def cleanup_commands(rm: JSONDict, bootstrap_kind: str) -> tuple[str, ...]:
    custom = rm.get("spec", {}).get("cleanUpCommands")
    if custom:
        return tuple(custom)
    return DEFAULT_CLEANUP.get(bootstrap_kind, ())


@attrs.frozen
class Deadlines:
    """spec.timeouts in seconds, always all three: a field left out takes the model's default
    (:class:`capi_remote.api.Timeouts`, the same the CRD applies), never the runner's own."""

    connect: float
    command: float
    job: float

    @classmethod
    def of(cls, spec: JSONDict) -> Deadlines:
        return cls.of_timeouts(from_dict(Timeouts, spec.get("timeouts") or {}))

    @classmethod
    def of_timeouts(cls, timeouts: Timeouts) -> Deadlines:
        def seconds(text: str) -> float:
            return parse_duration(text).total_seconds()

        return cls(
            connect=seconds(timeouts.connect),
            command=seconds(timeouts.command),
            job=seconds(timeouts.job),
        )


def _decoded(value: bytes, kind: str, namespace: str, name: str, key: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:  # no codec message: it would quote a byte of the secret
        raise InvalidSpec(
            c.INVALID_SECRET_DATA, f"{kind} {namespace}/{name} key {key!r} is not UTF-8 text"
        ) from None


class HostAccess:
    """Builds targets from specs and runs jobs on the shared SSH runner."""

    def __init__(
        self,
        runner: Runner,
        secrets: ObjectSource,
        configmaps: ObjectSource,
        *,
        secrets_to_unverified_hosts: bool = False,
    ) -> None:
        self.runner = runner
        self.secrets = secrets
        self.configmaps = configmaps
        self.secrets_to_unverified_hosts = secrets_to_unverified_hosts

    # -- targets ---------------------------------------------------------------------------

    def target(self, rm: JSONDict) -> Target:
        """The SSH target of a RemoteMachine; raises MissingSecret or InvalidSpec."""
        namespace = rm["metadata"]["namespace"]
        spec = rm["spec"]
        return self.target_for(namespace, spec, rm["metadata"].get("annotations") or {})

    def target_for(
        self, namespace: str, spec: JSONDict, annotations: dict[str, str] | None = None
    ) -> Target:
        """The target described by a host spec (a RemoteMachine's or a pooled host's); the
        annotations of the object holding the spec carry trust-on-first-use pins. Raises
        MissingSecret or InvalidSpec (a ValueError)."""
        try:
            return self._target_for(namespace, spec, annotations)
        except InvalidSpec:
            raise
        except ValueError as invalid:  # the Target and Credentials checks (user, address, key)
            raise InvalidSpec(c.INVALID_SSH_KEY, str(invalid)) from None

    def _target_for(
        self, namespace: str, spec: JSONDict, annotations: dict[str, str] | None
    ) -> Target:
        host = from_dict(PooledMachineSpec, spec)  # a host spec; every default from the model
        pins = annotations or {}
        connect = Deadlines.of_timeouts(host.timeouts).connect  # also for the bastion hop
        bastion = None
        if host.bastion is not None:
            hop = host.bastion
            if hop.ssh_key_ref is None:  # the machine's key, as documented
                hop = attrs.evolve(hop, ssh_key_ref=host.ssh_key_ref)
            recorded_bastion = pins.get(BASTION_HOST_KEY_FINGERPRINT_ANNOTATION)
            bastion = self._target(namespace, hop, None, recorded_bastion, connect)
        recorded = pins.get(HOST_KEY_FINGERPRINT_ANNOTATION)
        return self._target(namespace, host, host, recorded, connect, via=bastion)

    def _target(
        self,
        namespace: str,
        host: PooledMachineSpec | Bastion,
        passwords: PooledMachineSpec | None,  # the machine's password refs (a bastion has none)
        recorded: str | None,
        connect_timeout: float,
        via: Target | None = None,
    ) -> Target:
        host_key = self._policy(namespace, host.host_key_policy, recorded)
        if passwords is not None:
            self._refuse_unverified(host_key, passwords)
        private_key = passphrase = password = sudo_password = None
        if host.ssh_key_ref is not None:
            private_key = self._secret(namespace, host.ssh_key_ref.name, "value")
            phrase = host.ssh_key_ref.passphrase_ref
            if phrase is not None:
                passphrase = self._secret(namespace, phrase.name, phrase.key)
        if passwords is not None and passwords.password_ref is not None:
            ref = passwords.password_ref
            password = self._secret(namespace, ref.name, ref.key)
        if passwords is not None and passwords.sudo_password_ref is not None:
            ref = passwords.sudo_password_ref
            sudo_password = self._secret(namespace, ref.name, ref.key)
        credentials = Credentials(
            user=host.user,
            private_key=private_key,
            passphrase=passphrase,
            password=password,
            sudo_password=sudo_password,
        )
        return Target(
            address=host.address,
            port=host.port,
            credentials=credentials,
            host_key=host_key,
            via=via,
            connect_timeout=connect_timeout,
            tenant=namespace,
        )

    def own_login(self, rm: JSONDict) -> OwnLogin:
        """What a provisioning Job whose own commands log in needs (provisionJob without
        sshKeyRef): the host-key policy if the spec sets one (else the commands verify the host
        themselves), and the sudo password, sent only to a host whose key this policy verifies
        (the module invariant: the controller cannot tell whether those commands verify it).
        Raises MissingSecret or InvalidSpec."""
        namespace = rm["metadata"]["namespace"]
        host = from_dict(PooledMachineSpec, rm["spec"])
        recorded = (rm["metadata"].get("annotations") or {}).get(HOST_KEY_FINGERPRINT_ANNOTATION)
        policy = None
        if host.host_key_policy not in (None, api.HostKeyPolicy()):
            policy = self._policy(namespace, host.host_key_policy, recorded)
        sudo = host.sudo_password_ref
        self._refuse_unverified(
            policy or HostKeyPolicy.skip_verification(), attrs.evolve(host, password_ref=None)
        )
        return OwnLogin(
            host_key=policy,
            sudo_password=None if sudo is None else self._secret(namespace, sudo.name, sudo.key),
        )

    def _refuse_unverified(self, host_key: HostKeyPolicy, passwords: PooledMachineSpec) -> None:
        """InvalidSpec when a password would go to a host whose key nothing vouches for."""
        sent = [
            field
            for field, ref in (
                ("passwordRef", passwords.password_ref),
                ("sudoPasswordRef", passwords.sudo_password_ref),
            )
            if ref is not None
        ]
        if not sent or self.secrets_to_unverified_hosts or _verified(host_key):
            return
        raise InvalidSpec(
            c.UNVERIFIED_HOST_FOR_SECRET,
            f"{' and '.join(sent)} are sent to the host, whose key is not verified: set "
            "hostKeyPolicy.fingerprint or knownHostsRef (a trust-on-first-use key counts once "
            "pinned), or use sshKeyRef only",
        )

    def _secret(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret as text; MissingSecret, or ValueError when it is not UTF-8."""
        value = self.secrets.value(namespace, name, key)
        if value is None:
            _raise_missing(self.secrets, "Secret", namespace, name, key)
        return _decoded(value, "Secret", namespace, name, key)

    def _policy(
        self, namespace: str, policy: api.HostKeyPolicy | None, recorded: str | None
    ) -> HostKeyPolicy:
        try:
            return self._parse_policy(namespace, policy or api.HostKeyPolicy(), recorded)
        except InvalidSpec:
            raise
        except ValueError as invalid:
            raise InvalidSpec(c.INVALID_HOST_KEY_POLICY, f"hostKeyPolicy: {invalid}") from None

    def _parse_policy(
        self, namespace: str, policy: api.HostKeyPolicy, recorded: str | None
    ) -> HostKeyPolicy:
        if policy.insecure_skip_verification:
            return HostKeyPolicy.skip_verification()
        if policy.fingerprint:
            return HostKeyPolicy.pinned(policy.fingerprint)
        if policy.known_hosts_ref is not None:
            ref = policy.known_hosts_ref
            source = self.configmaps if ref.kind == "ConfigMap" else self.secrets
            text = source.value(namespace, ref.name, ref.key)
            if text is None:
                _raise_missing(source, ref.kind, namespace, ref.name, ref.key)
            return HostKeyPolicy.from_known_hosts(
                _decoded(text, ref.kind, namespace, ref.name, ref.key)
            )
        if policy.trust_on_first_use:
            return HostKeyPolicy.trust_on_first_use(recorded)
        # No policy: verification is still required; an empty known_hosts makes the first
        # connection fail with HostKeyUnknown, which tells the user what to configure.
        return HostKeyPolicy.from_known_hosts("")

    # -- jobs ------------------------------------------------------------------------------

    async def pin_first_use(
        self, target: Target, record: Callable[[dict[str, str]], Awaitable[dict[str, str]]]
    ) -> Target | Outcome:
        """``target`` with its trust-on-first-use keys pinned before any step or secret goes
        to the host: one probe (key exchange, public-key authentication, the read-only facts
        script; passwords are refused for unpinned hosts, see the module invariant) learns the
        keys, ``record`` stores them and returns the pins in force (an earlier one wins), and
        the job then verifies against those. An Outcome when the probe failed."""
        hops = {
            HOST_KEY_FINGERPRINT_ANNOTATION: target,
            BASTION_HOST_KEY_FINGERPRINT_ANNOTATION: target.via,
        }
        open_hops = [name for name, hop in hops.items() if hop is not None and _unpinned(hop)]
        if not open_hops:
            return target
        try:
            facts = await self.runner.probe(target)
        except SSHError as error:
            return _failure(error)
        seen = {
            HOST_KEY_FINGERPRINT_ANNOTATION: facts.host_key_fingerprint,
            BASTION_HOST_KEY_FINGERPRINT_ANNOTATION: facts.bastion_host_key_fingerprint,
        }
        pins = await record({name: str(seen[name]) for name in open_hops if seen[name]})
        return _with_pins(target, pins)

    async def provision(
        self,
        target: Target,
        plan: BootstrapPlan,
        uid: str,
        job: JobState,
        jobs: HostJobs,
        deadlines: Deadlines,
        *,
        adopt: bool = False,
    ) -> Outcome:
        def progress(index: int, total: int, description: str) -> None:
            jobs.progress(uid, index, total, description)

        try:
            result = await self.runner.submit(
                Job(
                    target=target,
                    plan=plan,
                    machine_uid=uid,
                    on_progress=progress,
                    step_timeout=deadlines.command,
                    job_timeout=deadlines.job,
                    gather_facts=True,
                    adopt=adopt,
                )
            )
        except SSHError as error:
            return _failure(error)
        details: JSONDict = {
            "fingerprint": result.host_key_fingerprint,
            "bastionFingerprint": result.bastion_host_key_fingerprint,
        }
        if result.facts is not None:  # else addresses fall back to the spec's address
            details["addresses"] = machine_addresses(target.address, result.facts)
        if result.already_bootstrapped:
            return Outcome(
                True,
                c.ALREADY_BOOTSTRAPPED,
                f"{target.address} was already bootstrapped; nothing ran",
                details=details,
            )
        ran = sum(1 for step in result.steps if step.status != "skipped")
        return Outcome(
            True,
            c.PROVISIONED,
            f"{target.address} bootstrapped ({ran} of {len(plan.steps)} steps ran, "
            f"{result.duration_seconds:.1f}s)",
            details=details,
        )

    async def cleanup(
        self,
        target: Target,
        commands: tuple[str, ...],
        uid: str,
        job: JobState,
        deadlines: Deadlines,
    ) -> Outcome:
        plan = BootstrapPlan(
            steps=tuple(RunCommand(shell=command) for command in commands), format="script"
        )
        try:
            await self.runner.submit(
                Job(
                    target=target,
                    plan=plan,
                    machine_uid=uid,
                    cleanup=True,
                    step_timeout=deadlines.command,
                    job_timeout=deadlines.job,
                )
            )
        except SSHError as error:
            return _failure(error)
        return Outcome(True, "CleanedUp", f"{target.address} cleaned up")

    async def probe(self, target: Target) -> HostFacts:
        return await self.runner.probe(target)


def _raise_missing(
    source: ObjectSource, kind: str, namespace: str, name: str, key: str
) -> NoReturn:
    if not source.known(namespace, name):
        raise NotYetKnown(f"{kind} {namespace}/{name} is not known yet")
    raise MissingSecret(f"{kind} {namespace}/{name} (key {key!r}) not found")


def _unpinned(target: Target) -> bool:
    return target.host_key.mode == "trust_on_first_use" and not target.host_key.fingerprints


def _with_pins(target: Target, pins: dict[str, str]) -> Target:
    """``target`` (and its bastion) trusting only the pinned keys of still unpinned hops."""

    def pinned(hop: Target, annotation: str) -> Target:
        if not _unpinned(hop) or not pins.get(annotation):
            return hop
        return attrs.evolve(hop, host_key=HostKeyPolicy.trust_on_first_use(pins[annotation]))

    via = target.via
    if via is not None:
        via = pinned(via, BASTION_HOST_KEY_FINGERPRINT_ANNOTATION)
    return attrs.evolve(pinned(target, HOST_KEY_FINGERPRINT_ANNOTATION), via=via)


def _verified(policy: HostKeyPolicy) -> bool:
    """Whether only a known key is accepted (known_hosts, pins, or a recorded first-use key)."""
    if policy.mode == "insecure":
        return False
    return policy.mode != "trust_on_first_use" or bool(policy.fingerprints)


def _failure(error: SSHError) -> Outcome:
    details: JSONDict = {}
    if isinstance(error, HostLocked):
        details = {"lockOwner": error.owner, "lockAgeSeconds": error.age_seconds}
    return Outcome(
        False,
        error.reason,
        error.message,
        retryable=error.retryable,
        output_tail=str(getattr(error, "output_tail", "") or ""),
        details=details,
    )


def machine_addresses(address: str, facts: HostFacts) -> list[JSONDict]:
    """status.addresses: the address we reach it on, its global IPs and its hostname."""
    addresses: list[JSONDict] = []
    try:
        ipaddress.ip_address(address)
        addresses.append({"type": "ExternalIP", "address": address})
    except ValueError:
        addresses.append({"type": "ExternalDNS", "address": address})
    for host_address in facts.addresses:
        if host_address.scope == "global" and host_address.address != address:
            addresses.append({"type": "InternalIP", "address": host_address.address})
    if facts.hostname:
        addresses.append({"type": "Hostname", "address": facts.hostname})
    return addresses
