"""`python -m capi_remote.devenv up`: the local environment for `make run`, kept up until Ctrl-C.

Brings up the control plane (building its binaries on first use) and a fleet of namespaced sshd
hosts, prints the kubeconfig path and the hosts, and tears everything down on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from capi_remote.devenv import toolchain
from capi_remote.devenv.controlplane import ControlPlane, ControlPlaneError
from capi_remote.devenv.hosts import HostFleet


def _up(host_count: int) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        tools = toolchain.ensure(log=say)
    except toolchain.ToolchainError as error:
        say(f"error: {error}")
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    plane = ControlPlane(tools)
    try:
        plane.start(progress=lambda component: say(f"starting {component} ..."))
    except ControlPlaneError as error:
        say(f"error: {error}")
        return 1
    try:
        say(f"starting {host_count} namespaced sshd hosts ...")
        with HostFleet(host_count) as fleet:
            print(f"kubeconfig: {plane.kubeconfig}")
            print(
                f"  try: kubectl --kubeconfig {plane.kubeconfig} get crd clusters.cluster.x-k8s.io"
            )
            print("hosts:")
            for host in fleet.hosts:
                print(f"  {host.name}  {host.address}:{host.port}  users: root, deploy, operator")
            print(f"client key for all hosts: {fleet.client_key_path}")
            print("press Ctrl-C to stop and clean up", flush=True)
            stop.wait()
            say("stopping ...")
    finally:
        plane.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capi_remote.devenv")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the local environment and keep it up until Ctrl-C")
    up.add_argument("--hosts", type=int, default=3, help="how many sshd hosts (default 3)")
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be at least 1")
    return _up(args.hosts)


if __name__ == "__main__":
    raise SystemExit(main())
