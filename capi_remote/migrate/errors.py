"""The two ways a migration run stops early: it cannot go on, or it waits for the operator."""

from __future__ import annotations


class MigrationError(Exception):
    """A step cannot be done (a check failed, the API server refused): exit code 1."""


class WaitingForOperator(Exception):
    """A step needs something only the operator can do (start a controller, confirm keys).

    Progress so far is recorded in the cluster; running the command again continues: exit 3.
    """
