"""The total size budget of one bootstrap parse.

A per-file cap is not enough: YAML aliases let an 11 KB document name one gzip ``write_files``
entry thousands of times, and each is decoded separately (168 MiB of plan from 11 KB). So one
parse has one budget, charged with

- the document as if every alias were a copy (``expanded_size`` of the composed YAML graph, the
  byte length of JSON, the output of a template), and
- every byte that decoding produces (base64, gzip, data URLs),

and a parse that overspends fails with ``BootstrapParseError`` naming the key that did.
"""

from __future__ import annotations

from typing import Any

import yaml

from capi_remote.bootstrap.errors import DOCUMENT, BootstrapParseError

#: The default budget: far above what bootstrap providers write (CABPK: tens of KiB; a Secret
#: holds at most about 1 MiB), far below what hurts the controller.
MAX_BOOTSTRAP_BYTES = 64 << 20


class Budget:
    """Bytes one parse may still produce."""

    def __init__(self, limit: int = MAX_BOOTSTRAP_BYTES) -> None:
        self.limit = limit
        self.remaining = limit

    def charge(self, size: int, key: str) -> None:
        self.remaining -= size
        if self.remaining < 0:
            raise BootstrapParseError(
                key,
                f"bootstrap data expands beyond its budget of {self.limit} bytes"
                " (YAML aliases and compressed contents count in full)",
            )


def expanded_size(root: yaml.Node) -> int:
    """Size of the document ``root`` describes with every alias expanded (scalar lengths plus
    one per node), computed once per node, so a billion laughs costs as much as its text.
    A recursive alias (a node inside itself) is an error: it has no finite expansion."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:
        node, expanded = pending.pop()
        children = _children(node)
        if expanded:
            ancestors.discard(id(node))
            scalar = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            sizes[id(node)] = 1 + scalar + sum(sizes[id(child)] for child in children)
            continue
        if id(node) in sizes:
            continue
        if any(id(child) in ancestors for child in children):
            raise BootstrapParseError(DOCUMENT, "recursive YAML aliases are not supported")
        ancestors.add(id(node))
        pending.append((node, True))
        pending.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []
