"""``capi-remote dev``: the local environment as a command, plugged into ``capi-remote`` through
the ``capi_remote.cli`` entry point (see :mod:`capi_remote.cliplugins`).

Heavy imports (rich, the environment) wait until a ``dev`` command runs, so ``capi-remote run``
does not pay for them just because the test bed is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

from capi_remote.cliplugins import RuntimeFailure, UserError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser(
        "dev", help="the local environment: control plane, sshd hosts, controller, samples"
    )
    dev.set_defaults(handler=_dev)
    actions = dev.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start it, show machines provisioning, stop on Ctrl-C")
    up.add_argument("--hosts", type=int, default=4, help="namespaced sshd hosts (default 4)")
    up.add_argument(
        "--workers",
        type=int,
        default=2,
        help="MachineDeployment replicas drawn from the pool (default 2)",
    )
    up.add_argument(
        "--follow-timeout",
        type=float,
        default=600.0,
        help="seconds to show provisioning before just waiting (default 600)",
    )
    actions.add_parser("down", help="stop a running 'dev up' and clean everything up")
    actions.add_parser("status", help="say whether 'dev up' runs, and where its pieces are")


def _dev(args: argparse.Namespace) -> int:
    from capi_remote_testbed import environment

    if args.action == "status":
        state = environment.read_state()
        if state is None:
            print("no local environment is running (start one with: capi-remote dev up)")
            return 1
        print(json.dumps(state, indent=2))
        return 0
    if args.action == "down":
        state = environment.read_state()
        if state is None:
            print("no local environment is running")
            return 0
        os.kill(int(state["pid"]), signal.SIGTERM)
        print(f"asked 'dev up' (pid {state['pid']}) to stop; it cleans up before exiting")
        return 0
    if args.hosts < 2:
        raise UserError("--hosts must be at least 2 (one standalone machine, one pool)")
    if not 0 <= args.workers < args.hosts:
        raise UserError(f"--workers must be between 0 and {args.hosts - 1} (the pool's size)")
    if os.geteuid() != 0:
        raise UserError("the local environment needs root (network namespaces for the hosts)")
    if environment.read_state() is not None:
        raise UserError("a local environment is already running (see: capi-remote dev status)")
    return _dev_up(args)


def _dev_up(args: argparse.Namespace) -> int:
    import threading

    from rich.console import Console

    from capi_remote_testbed import environment
    from capi_remote_testbed.follow import follow

    console = Console(stderr=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    env = environment.LocalEnvironment(environment.Settings(hosts=args.hosts, workers=args.workers))
    try:
        with console.status("starting the local environment") as spinner:
            env.start(progress=lambda line: spinner.update(line))
    except Exception as error:  # every part already stopped; say what failed
        raise RuntimeFailure(f"the local environment did not come up: {error}") from error
    assert env.plane is not None and env.controller is not None
    kubeconfig = env.plane.kubeconfig
    try:
        console.print(f"[bold]kubeconfig:[/bold] {kubeconfig}")
        console.print(f"controller log: {env.controller.process.log}")
        assert env.fleet is not None
        console.print(f"hosts (users root, deploy, operator; key {env.fleet.client_key_path}):")
        for host in env.fleet.hosts:
            console.print(f"  {host.name}  {host.address}:{host.port}")
        expected = 1 + args.workers
        done = follow(env.plane, environment.NAMESPACE, expected, args.follow_timeout, console)
        console.print(
            "[green]all sample machines are Running[/green]"
            if done
            else "[yellow]not all machines are Running yet; see the conditions above[/yellow]"
        )
        console.print("next steps:")
        for command in (
            f"kubectl --kubeconfig {kubeconfig} get remotemachines,pooledremotemachines -A -w",
            f"kubectl --kubeconfig {kubeconfig} describe remotemachine demo-cp-0 -n demo",
            f"kubectl --kubeconfig {kubeconfig} scale machinedeployment demo-workers -n demo "
            f"--replicas={args.workers + 1}",
        ):
            console.print(f"  {command}")
        console.print("press Ctrl-C to stop and clean up")
        stop.wait()
    finally:
        with console.status("stopping and cleaning up"):
            env.stop()
    return 0
