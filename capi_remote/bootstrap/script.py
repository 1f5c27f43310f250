"""commandsAsScript: many commands of one phase become one ``set -e`` shell script.

This is the reference provider's ``commandsAsScript`` mode, and close to what cloud-init itself
does (it writes all runcmd entries into one script): entries share one shell, so a ``cd`` or an
``export`` carries over to the next entry. Unlike cloud-init's script, ours starts with
``set -e`` and stops at the first failing simple command (not inside ``if``, ``&&`` or ``||``).

String entries are copied verbatim, one per line, exactly as cloud-init's ``shellify`` does (so
an entry ending in a backslash continues onto the next one); argv entries are quoted word by
word.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from capi_remote.bootstrap.plan import RunCommand


def script_line(command: RunCommand) -> str:
    """The text ``command`` contributes to a script; its ``env`` is the script's business."""
    if command.shell is not None:
        return command.shell
    return attrs.evolve(command, env=()).to_shell()


def combine_commands(commands: Sequence[RunCommand]) -> RunCommand:
    """One ``sh -c`` step running ``commands`` in order under ``set -e``.

    All commands must share a phase and an environment (true for one cloud-config section).
    """
    if not commands:
        raise ValueError("nothing to combine")
    first = commands[0]
    if any(c.phase != first.phase or c.env != first.env for c in commands):
        raise ValueError("commands of different phases or environments cannot share a script")
    body = "\n".join(script_line(c) for c in commands)
    script = f"set -e\n{body}\n"
    return RunCommand(shell=script, phase=first.phase, env=first.env)
