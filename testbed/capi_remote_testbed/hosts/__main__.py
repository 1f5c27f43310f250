"""``python -m capi_remote_testbed.hosts cleanup [--all]`` (``make clean-devenv``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from capi_remote_testbed.hosts.leftovers import sweep


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capi_remote_testbed.hosts",
        description="Manage the namespaced sshd test hosts.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cleanup = commands.add_parser(
        "cleanup", help="remove leftovers (netns, links, processes, dirs) of crashed runs"
    )
    cleanup.add_argument(
        "--all", action="store_true", help="also tear down fleets of processes still running"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root")
    removed = sweep(include_live=args.all)
    for item in removed:
        print(f"removed {item}")
    print(f"cleanup done ({len(removed)} leftovers removed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
