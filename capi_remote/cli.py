"""The ``capi-remote`` command: the controller manager, the local environment, preflight, manifests.

User errors (bad flags, missing files, unreachable API server) print one line and exit 2 (usage)
or 1 (runtime); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from capi_remote import __version__
from capi_remote.app import ProviderOptions, run_provider
from capi_remote.logs import configure


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CAPI_REMOTE_{name}", default)


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run the controller manager",
        description="Run the controller manager. Every flag also reads CAPI_REMOTE_<FLAG> "
        "(upper case, dashes as underscores).",
    )
    run.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG") or None,
        help="kubeconfig file (default: $KUBECONFIG, else in-cluster)",
    )
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
    run.add_argument(
        "--leader-elect",
        action="store_true",
        default=_env("LEADER_ELECT", "") in ("1", "true"),
        help="use leader election (for more than one replica)",
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
        help="host:port for /metrics ('0' disables)",
    )
    run.add_argument(
        "--health-addr",
        default=_env("HEALTH_ADDR", ":9440"),
        help="host:port for /healthz and /readyz",
    )
    run.add_argument(
        "--machine-concurrency",
        type=int,
        default=int(_env("MACHINE_CONCURRENCY", "10")),
        help="RemoteMachine reconcile workers (SSH work runs on the SSH pool)",
    )
    run.add_argument("--pool-concurrency", type=int, default=int(_env("POOL_CONCURRENCY", "4")))
    run.add_argument(
        "--ssh-concurrency",
        type=int,
        default=int(_env("SSH_CONCURRENCY", "64")),
        help="SSH jobs running at once (threads)",
    )
    run.add_argument(
        "--webhook-port",
        type=int,
        default=int(_env("WEBHOOK_PORT", "9443")),
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
        health_address=_address(args.health_addr),
        machine_workers=args.machine_concurrency,
        pool_workers=args.pool_concurrency,
        ssh_workers=args.ssh_concurrency,
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


def _print_crds(_: argparse.Namespace) -> int:
    directory = Path(__file__).resolve().parent.parent / "manifests" / "crds"
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise UserError(f"no CRDs found in {directory}")
    sys.stdout.write("---\n".join(path.read_text() for path in files))
    return 0


def _print_version(_: argparse.Namespace) -> int:
    try:
        installed = metadata.version("capi-remote")
    except metadata.PackageNotFoundError:
        installed = __version__
    print(f"capi-remote {installed}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capi-remote",
        description="Cluster API infrastructure provider for Linux hosts reachable over SSH.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(commands)
    commands.add_parser("crds", help="print the CustomResourceDefinitions (YAML)")
    commands.add_parser("version", help="print the version")
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "crds": _print_crds,
    "version": _print_version,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except UserError as error:
        print(f"capi-remote: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
