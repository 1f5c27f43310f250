"""How to log in to a host: user, key and/or password, and the sudo password for non-root users.

Plain data shared by the target, the transports and the privilege logic (``auth``); it imports
nothing of the runner, so none of them import each other in a circle. Secrets stay out of
``repr``.
"""

from __future__ import annotations

import re

import attrs

ROOT = "root"
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


def _check_user(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not _USER.fullmatch(value):
        raise ValueError("user must be a plain login name")


def _check_single_line(
    _: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and ("\n" in value or "\r" in value or "\0" in value):
        raise ValueError(f"{attribute.name} must be a single line")


@attrs.frozen
class Credentials:
    """How to log in (key and/or password) and, for non-root users, how to use sudo.

    Non-root users run everything through ``sudo``: without ``sudo_password`` it must not ask for
    one (``sudo -n``, NOPASSWD); with it, the password is fed on stdin.
    """

    user: str = attrs.field(default=ROOT, validator=_check_user)
    private_key: str | None = attrs.field(default=None, repr=False)
    passphrase: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False, validator=_check_single_line)
    sudo_password: str | None = attrs.field(default=None, repr=False, validator=_check_single_line)

    def __attrs_post_init__(self) -> None:
        if self.private_key is None and self.password is None:
            raise ValueError("credentials need a private key or a password")
