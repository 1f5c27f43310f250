"""``python -m capi_remote.api generate|check``: write or verify the CRDs and the API reference."""

import argparse
import sys
from pathlib import Path

from capi_remote.api.generate import stale, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capi_remote.api",
        description="Generate the CRDs and docs/api-reference.md from the API models.",
    )
    parser.add_argument(
        "command",
        choices=["generate", "check"],
        help="generate: (re)write stale files; check: exit 1 if any file is stale",
    )
    parser.add_argument(
        "--root", type=Path, default=Path.cwd(), help="repository root (default: cwd)"
    )
    args = parser.parse_args(argv)
    if args.command == "generate":
        for path in write(args.root):
            print(f"wrote {path}")
        return 0
    outdated = stale(args.root)
    for path in outdated:
        print(f"stale: {path} (run `make manifests`)", file=sys.stderr)
    return 1 if outdated else 0


if __name__ == "__main__":
    sys.exit(main())
