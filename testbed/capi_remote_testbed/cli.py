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
from typing import TYPE_CHECKING

from capi_remote.cliplugins import RuntimeFailure, UserError

if TYPE_CHECKING:
    from rich.console import Console

    from capi_remote_testbed.environment import LocalEnvironment


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser(
        "dev", help="the local environment: control plane, sshd hosts, controller, samples"
    )
    dev.set_defaults(handler=_dev)
    actions = dev.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start it, show machines provisioning, stop on Ctrl-C")
    up.add_argument(
        "--hosts",
        type=int,
        default=4,
        help="namespaced hosts: the first for the control plane, the rest the worker pool "
        "(default 4: one spare worker host to scale up to)",
    )
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
        help="seconds to wait for the cluster before just waiting (default 600)",
    )
    up.add_argument(
        "--stand-in",
        action="store_true",
        help="the quick flow without kubelets: a bootstrap script registers the Nodes, for "
        "demos that need only the infrastructure contract",
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
        raise UserError("--hosts must be at least 2 (one for the control plane, one pool)")
    if not 0 <= args.workers < args.hosts:
        raise UserError(f"--workers must be between 0 and {args.hosts - 1} (the pool's size)")
    if os.geteuid() != 0:
        raise UserError("the local environment needs root (network namespaces for the hosts)")
    if environment.read_state() is not None:
        raise UserError("a local environment is already running (see: capi-remote dev status)")
    return _dev_up(args)


def _dev_up(args: argparse.Namespace) -> int:
    import threading
    import time

    from rich.console import Console

    from capi_remote_testbed import environment

    console = Console(stderr=True, soft_wrap=True)  # commands and paths stay copyable
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    settings = environment.Settings(hosts=args.hosts, workers=args.workers, stand_in=args.stand_in)
    env = environment.LocalEnvironment(settings)
    started = time.monotonic()
    try:
        with console.status("starting the local environment") as spinner:
            env.start(progress=lambda line: spinner.update(line))
    except Exception as error:  # every part already stopped; say what failed
        raise RuntimeFailure(f"the local environment did not come up: {error}") from error
    assert env.plane is not None and env.controller is not None and env.fleet is not None
    try:
        console.print(f"[bold]management kubeconfig:[/bold] {env.plane.kubeconfig}")
        if env.real is not None:
            console.print(f"[bold]workload kubeconfig:[/bold]   {env.real.kubeconfig}")
        console.print(f"controller log: {env.controller.process.log}")
        console.print(f"hosts (users root, deploy, operator; key {env.fleet.client_key_path}):")
        for host in env.fleet.hosts:
            console.print(f"  {host.name}  {host.address}:{host.port}")
        if env.real is None:
            _follow_stand_in(env, args, console)
        else:
            _wait_real(env, args, console, started)
        console.print("press Ctrl-C to stop and clean up")
        stop.wait()
    finally:
        with console.status("stopping and cleaning up"):
            env.stop()
    return 0


def _follow_stand_in(env: LocalEnvironment, args: argparse.Namespace, console: Console) -> None:
    from capi_remote_testbed import environment
    from capi_remote_testbed.follow import follow

    assert env.plane is not None
    kubeconfig = env.plane.kubeconfig
    done = follow(env.plane, environment.NAMESPACE, 1 + args.workers, args.follow_timeout, console)
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


def _wait_real(
    env: LocalEnvironment, args: argparse.Namespace, console: Console, started: float
) -> None:
    import time

    from capi_remote_testbed import budget
    from capi_remote_testbed.realcluster import RealClusterError

    real = env.real
    assert real is not None
    try:
        with console.status("waiting for the cluster") as spinner:
            nodes = real.wait_ready(lambda line: spinner.update(line), args.follow_timeout)
            ready = time.monotonic()
            spinner.update("waiting for the sample Deployment's Pod")
            pod = real.deploy_sample()
    except RealClusterError as error:
        console.print(f"[yellow]the cluster is not ready yet:[/yellow] {error}")
    else:
        console.print(
            f"[green]all {len(nodes)} Nodes Ready[/green] {ready - started:.0f} s after start "
            f"({ready - real.applied_at:.0f} s after the Cluster was applied); the sample Pod "
            f"runs on {pod['spec']['nodeName']}"
        )
        for line in budget.lines(*env.usage()):
            console.print(line, highlight=False)
    console.print("next steps:")
    for command in next_steps(str(env.plane.kubeconfig) if env.plane else "", str(real.kubeconfig),
                              args.workers, spare=args.hosts - 1 - args.workers):  # fmt: skip
        console.print(f"  {command}", highlight=False)


def next_steps(management: str, workload: str, workers: int, spare: int) -> list[str]:
    """What ``dev up`` suggests once the real cluster is up."""
    from capi_remote_testbed.realcluster import SAMPLE, scale_command

    steps = [
        f"kubectl --kubeconfig {workload} get nodes -o wide",
        f"kubectl --kubeconfig {management} get cluster,kubeadmcontrolplane,machines -A",
        f"kubectl --kubeconfig {workload} logs deployment/{SAMPLE}",
    ]
    if spare > 0:
        steps.append(scale_command(management, "demo", "demo", workers + 1))
    steps.append(scale_command(management, "demo", "demo", max(0, workers - 1)))
    return steps
