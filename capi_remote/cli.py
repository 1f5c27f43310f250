"""The ``capi-remote`` command: the controller manager, preflight, manifests; plugins add more
(the test bed adds ``dev``, see :mod:`capi_remote.cliplugins`).

User errors (bad flags, missing files, unreachable API server) print one line and exit 2 (usage)
or 1 (runtime); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from capi_remote import __version__
from capi_remote.cliplugins import (
    COMMANDS,
    KUBECTL,
    FindKubectl,
    Register,
    RuntimeFailure,
    UserError,
)
from capi_remote.logs import configure


class _Parser(argparse.ArgumentParser):
    """Bad input: one line saying what is wrong and where to look, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CAPI_REMOTE_{name}", default)


def _switch(parser: _Parser, flag: str, help: str) -> None:
    """An off-by-default ``--flag``, also set by ``CAPI_REMOTE_<FLAG>`` = ``1`` or ``true``."""
    env = flag.removeprefix("--").replace("-", "_").upper()
    parser.add_argument(
        flag, action="store_true", default=_env(env, "") in ("1", "true"), help=help
    )


def _kubeconfig_flag(parser: _Parser, help: str) -> None:
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None, help=help)


def _add_run(commands: argparse._SubParsersAction[_Parser]) -> None:
    run = commands.add_parser(
        "run",
        help="run the controller manager",
        description="Run the controller manager. Flags default to environment variables: "
        "CAPI_REMOTE_<FLAG> (upper case, dashes as underscores; --diagnostics-address reads "
        "CAPI_REMOTE_METRICS_ADDRESS) and KUBECONFIG for --kubeconfig.",
    )
    _kubeconfig_flag(run, "kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    run.add_argument(
        "--namespace",
        default=_env("NAMESPACE", ""),
        help="watch only this namespace (default: all)",
    )
    run.add_argument(
        "--watch-filter",
        default=_env("WATCH_FILTER", ""),
        help="only reconcile objects labelled cluster.x-k8s.io/watch-filter=<value>",
    )
    _switch(
        run,
        "--leader-elect",
        "use leader election (for more than one replica)",
    )
    run.add_argument(
        "--leader-election-namespace",
        default=_env("LEADER_ELECTION_NAMESPACE", ""),
        help="namespace of the Lease (default: the pod's namespace or default)",
    )
    run.add_argument("--leader-election-id", default=_env("LEADER_ELECTION_ID", "capi-remote"))
    run.add_argument(
        "--diagnostics-address",
        "--metrics-bind-address",
        dest="metrics_address",
        default=_env("METRICS_ADDRESS", "127.0.0.1:8080"),
        help="host:port for /metrics ('0' disables); HTTPS, callers need a bearer token that may "
        "get the non-resource URL /metrics",
    )
    run.add_argument(
        "--metrics-cert-dir",
        type=Path,
        default=Path(_env("METRICS_CERT_DIR", "")) if _env("METRICS_CERT_DIR", "") else None,
        help="directory with tls.crt and tls.key for /metrics (default: self-signed, in memory)",
    )
    _switch(
        run,
        "--insecure-metrics",
        "serve /metrics over plain HTTP without authentication (insecure: anyone who reaches "
        "the port reads it)",
    )
    run.add_argument(
        "--health-addr",
        default=_env("HEALTH_ADDR", ":9440"),
        help="host:port for /healthz and /readyz",
    )
    run.add_argument(
        "--machine-concurrency",
        type=int,
        default=_env("MACHINE_CONCURRENCY", "32"),
        help="RemoteMachine reconcile workers (SSH work runs on the SSH pool)",
    )
    run.add_argument("--pool-concurrency", type=int, default=_env("POOL_CONCURRENCY", "4"))
    run.add_argument(
        "--ssh-concurrency",
        type=int,
        default=_env("SSH_CONCURRENCY", "256"),
        help="SSH jobs running at once (threads)",
    )
    _switch(
        run,
        "--allow-secrets-to-unverified-hosts",
        "send passwordRef/sudoPasswordRef values to hosts whose key is not verified "
        "(insecure: whoever may create RemoteMachines can send any such Secret key anywhere)",
    )
    run.add_argument(
        "--webhook-port",
        type=int,
        default=_env("WEBHOOK_PORT", "9443"),
        help="port of the conversion webhook server (0 disables)",
    )
    run.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=Path(_env("WEBHOOK_CERT_DIR", "/tmp/k8s-webhook-server/serving-certs")),
        help="directory with tls.crt and tls.key for the webhook server",
    )
    run.add_argument(
        "--log-format", choices=("console", "json"), default=_env("LOG_FORMAT", "console")
    )
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=_env("LOG_LEVEL", "info"),
    )


def _address(value: str) -> str | None:
    if value in ("", "0"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"address {value!r} must look like host:port or :port")
    return f"{host or '0.0.0.0'}:{port}"  # noqa: S104 - ":port" means all interfaces, as in Go


def _run(args: argparse.Namespace) -> int:
    configure(args.log_format, args.log_level)
    for flag in ("machine_concurrency", "pool_concurrency", "ssh_concurrency"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.kubeconfig and not Path(args.kubeconfig).is_file():
        raise UserError(f"kubeconfig {args.kubeconfig} does not exist")
    if args.webhook_port and not (args.webhook_cert_dir / "tls.crt").is_file():
        raise UserError(
            f"no tls.crt in {args.webhook_cert_dir}: mount the webhook certificate there, "
            "or pass --webhook-port 0 to run without the conversion webhook"
        )
    if args.metrics_cert_dir and not (args.metrics_cert_dir / "tls.crt").is_file():
        raise UserError(f"no tls.crt in --metrics-cert-dir {args.metrics_cert_dir}")
    # Here, not at the top: the other commands (and the parse sandbox's forkserver, which
    # preloads this module) do without the Kubernetes stack.
    from capi_remote.app import ProviderOptions, run_provider

    identity = f"{socket.gethostname()}_{os.getpid()}"
    options = ProviderOptions(
        kubeconfig=args.kubeconfig,
        namespace=args.namespace or None,
        watch_filter=args.watch_filter or None,
        leader_election=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace
        or os.environ.get("POD_NAMESPACE", "default"),
        leader_election_id=args.leader_election_id,
        identity=identity,
        metrics_address=_address(args.metrics_address),
        metrics_secure=not args.insecure_metrics,
        metrics_cert_dir=args.metrics_cert_dir,
        health_address=_address(args.health_addr),
        machine_workers=args.machine_concurrency,
        pool_workers=args.pool_concurrency,
        ssh_workers=args.ssh_concurrency,
        secrets_to_unverified_hosts=args.allow_secrets_to_unverified_hosts,
        webhook_port=args.webhook_port or None,
        webhook_cert_dir=args.webhook_cert_dir,
    )
    return _run_until_signal(lambda: run_provider(options))


def _run_until_signal(main: Callable[[], object]) -> int:
    """Run the coroutine factory until SIGINT/SIGTERM, then let it shut down gracefully."""

    async def runner() -> None:
        task = asyncio.ensure_future(main())  # type: ignore[call-overload]
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
    return 0


def _add_preflight(commands: argparse._SubParsersAction[_Parser]) -> None:
    check = commands.add_parser(
        "preflight",
        help="check that a host is usable: reachability, host key, login, sudo, facts",
        description="Secrets are never taken on the command line: name environment variables "
        "that hold them (--passphrase-env, --password-env, --sudo-password-env).",
    )
    check.add_argument("--address", required=True)
    check.add_argument("--port", type=int, default=22)
    check.add_argument("--user", default="root")
    check.add_argument("--key", type=Path, help="private key file (OpenSSH or PEM)")
    check.add_argument("--passphrase-env", help="environment variable holding the key passphrase")
    check.add_argument("--password-env", help="environment variable holding the login password")
    check.add_argument("--sudo-password-env", help="environment variable holding the sudo password")
    trust = check.add_mutually_exclusive_group()
    trust.add_argument("--known-hosts", type=Path, help="known_hosts file with the host's key")
    trust.add_argument("--fingerprint", help="pinned host key fingerprint (SHA256:...)")
    trust.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="accept the key the host presents now (prints it for pinning)",
    )
    trust.add_argument(
        "--insecure-skip-host-key-verification",
        action="store_true",
        help="do not verify the host key (throw-away labs only)",
    )
    check.add_argument("--bastion", metavar="[USER@]HOST[:PORT]", help="jump host to go through")
    check.add_argument("--bastion-key", type=Path, help="private key for the bastion")
    bastion_trust = check.add_mutually_exclusive_group()
    bastion_trust.add_argument("--bastion-known-hosts", type=Path)
    bastion_trust.add_argument("--bastion-fingerprint")
    check.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")


def _secret_from_env(name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None:
        raise UserError(f"environment variable {name} is not set")
    return value


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as error:
        raise UserError(f"cannot read key file {path}: {error.strerror}") from error


def _preflight(args: argparse.Namespace) -> int:
    from rich.console import Console

    from capi_remote import preflight
    from capi_remote.ssh import Credentials, SSHSettings, Target

    if not 1 <= args.port <= 65535:
        raise UserError("--port must be within 1..65535")
    for path in (args.known_hosts, args.bastion_known_hosts):
        if path is not None and not path.is_file():
            raise UserError(f"known_hosts file {path} does not exist")
    try:
        via = None
        if args.bastion:
            user, _, rest = args.bastion.rpartition("@")
            host, _, port = rest.partition(":")
            via = Target(
                address=host,
                port=int(port or 22),
                credentials=Credentials(
                    user=user or "root", private_key=_read_key(args.bastion_key or args.key)
                ),
                host_key=preflight.host_key_policy(
                    args.bastion_known_hosts, args.bastion_fingerprint, False, False
                ),
            )
        target = Target(
            address=args.address,
            port=args.port,
            credentials=Credentials(
                user=args.user,
                private_key=_read_key(args.key),
                passphrase=_secret_from_env(args.passphrase_env),
                password=_secret_from_env(args.password_env),
                sudo_password=_secret_from_env(args.sudo_password_env),
            ),
            host_key=preflight.host_key_policy(
                args.known_hosts,
                args.fingerprint,
                args.trust_on_first_use,
                args.insecure_skip_host_key_verification,
            ),
            via=via,
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    result = preflight.run(target, SSHSettings(connect_timeout=args.timeout))
    preflight.report(result, Console())
    return 0 if result.ok else 1


def _add_migrate(commands: argparse._SubParsersAction[_Parser]) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="take a management cluster from k0smotron's Remote Machine provider to capi-remote",
        description="Checks, pauses the Clusters, stops the reference, replaces the CRDs, sets "
        "host-key policies, waits for capi-remote's controller, unpauses and reports. Progress "
        "is recorded in the cluster: after an interruption, run the same command again. Exit "
        "codes: 0 done, 1 failed, 2 usage, 3 waiting for you (see the last line), run again.",
    )
    _kubeconfig_flag(
        migrate, "kubeconfig of the management cluster, as cluster admin (default: $KUBECONFIG)"
    )
    migrate.add_argument("--dry-run", action="store_true", help="print checks and plan only")
    migrate.add_argument(
        "--rollback", action="store_true", help="go back to the reference provider"
    )
    keys = migrate.add_mutually_exclusive_group()
    keys.add_argument(
        "--known-hosts", type=Path, help="take host keys from this known_hosts file you verified"
    )
    keys.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="accept the keys hosts present now, without asking",
    )
    migrate.add_argument(
        "--components",
        type=Path,
        help="YAML with capi-remote's components (the release's infrastructure-components.yaml): "
        "its CRDs replace the reference's, the rest is applied to start the controller",
    )
    migrate.add_argument(
        "--stop-all-in-one",
        action="store_true",
        help="also stop a k0smotron Deployment that runs all of k0smotron's controllers",
    )
    migrate.add_argument(
        "--capi-remote-stopped",
        action="store_true",
        help="rollback: capi-remote's controller is stopped (it runs outside a Deployment)",
    )
    migrate.add_argument(
        "--record-namespace",
        default="kube-system",
        help="namespace of the progress record ConfigMap capi-remote-migration",
    )
    migrate.add_argument(
        "--wait",
        type=float,
        default=300.0,
        help="seconds a step waits for the cluster before it stops and asks to be run again",
    )


def _migrate(args: argparse.Namespace) -> int:
    from capi_remote.migrate import Options, command

    if args.kubeconfig and not Path(args.kubeconfig).is_file():
        raise UserError(f"kubeconfig {args.kubeconfig} does not exist")
    for path in (args.known_hosts, args.components):
        if path is not None and not path.is_file():
            raise UserError(f"{path} does not exist")
    if args.wait <= 0:
        raise UserError("--wait must be positive")
    options = Options(
        rollback=args.rollback,
        dry_run=args.dry_run,
        stop_all_in_one=args.stop_all_in_one,
        trust_on_first_use=args.trust_on_first_use,
        known_hosts=args.known_hosts,
        components=args.components,
        record_namespace=args.record_namespace,
        wait=args.wait,
        capi_remote_stopped=args.capi_remote_stopped,
    )
    return asyncio.run(command.run(options, args.kubeconfig))


def _print_crds(_: argparse.Namespace) -> int:
    """From the models themselves, so it works from a wheel or the image, not only a checkout."""
    from capi_remote.api import crdgen

    sys.stdout.write("".join(crdgen.render(kind) for kind in crdgen.KINDS))
    return 0


def _print_manifests(args: argparse.Namespace) -> int:
    """The provider's components (CRDs, RBAC, Deployment, webhook, cert-manager objects) as
    kustomize renders them: what `kubectl apply -k kustomize/<overlay>` would apply."""
    root = Path(__file__).resolve().parent.parent
    overlay = root / "kustomize" / args.overlay
    if not (overlay / "kustomization.yaml").is_file():
        raise RuntimeFailure(
            f"no kustomize/{args.overlay} next to this installation (it ships in the source "
            "tree); use the release's infrastructure-components.yaml instead"
        )
    kubectl = _kubectl()
    proc = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeFailure(f"kubectl kustomize failed: {proc.stderr.strip()}")
    sys.stdout.write(proc.stdout)
    return 0


def _kubectl() -> str:
    """kubectl from PATH, else from a plugin (the test bed builds one)."""
    found = shutil.which("kubectl")
    if found is not None:
        return found
    for entry in metadata.entry_points(group=KUBECTL):
        find: FindKubectl = entry.load()
        try:
            return str(find(lambda line: print(line, file=sys.stderr)))
        except RuntimeError as error:
            raise RuntimeFailure(f"no kubectl on PATH and none could be built: {error}") from error
    raise RuntimeFailure("no kubectl on PATH: install one (>= 1.27) or the test bed (testbed/)")


def _print_version(_: argparse.Namespace) -> int:
    try:
        installed = metadata.version("capi-remote")
    except metadata.PackageNotFoundError:
        installed = __version__
    print(f"capi-remote {installed}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="capi-remote",
        description="Cluster API infrastructure provider for Linux hosts reachable over SSH.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_preflight(commands)
    _add_migrate(commands)
    commands.add_parser("crds", help="print the CustomResourceDefinitions (YAML)")
    manifests = commands.add_parser(
        "manifests", help="print every component to deploy (kustomize output, YAML)"
    )
    manifests.add_argument(
        "--overlay",
        choices=("default", "dev"),
        default="default",
        help="kustomize overlay: default (cert-manager) or dev (local image)",
    )
    commands.add_parser("version", help="print the version")
    for entry in metadata.entry_points(group=COMMANDS):
        register: Register = entry.load()
        register(commands)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "preflight": _preflight,
    "migrate": _migrate,
    "crds": _print_crds,
    "manifests": _print_manifests,
    "version": _print_version,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler = _COMMANDS.get(args.command) or args.handler
        return handler(args)
    except UserError as error:
        print(f"capi-remote: error: {error}", file=sys.stderr)
        return 2
    except RuntimeFailure as error:
        print(f"capi-remote: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
