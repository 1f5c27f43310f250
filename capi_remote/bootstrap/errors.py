"""The one exception bootstrap parsing raises.

Every failure (undecodable bytes, YAML/JSON syntax, bad base64 or gzip, wrong types, template
errors) becomes a ``BootstrapParseError`` so the caller maps one type onto a condition. Messages
name keys and paths, never values: bootstrap data holds join tokens and private keys.
"""

from __future__ import annotations

# Pseudo-keys for failures that belong to no key of the document.
DOCUMENT = "(document)"
HEADER = "(header)"
TEMPLATE = "(template)"
#: The parse as a whole ran out of its memory or time (see sandbox.py).
LIMITS = "(limits)"


class BootstrapParseError(Exception):
    """Bootstrap data that cannot be turned into a plan.

    ``key`` locates the problem (``write_files[2].encoding``, ``storage.files[0].contents.source``
    or one of the parenthesised pseudo-keys); ``message`` says what is wrong without quoting data.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def __reduce__(self) -> tuple[type[BootstrapParseError], tuple[str, str]]:
        # The default pickling would call __init__ with the formatted string only.
        return (type(self), (self.key, self.message))
