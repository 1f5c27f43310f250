"""``capi-remote migrate``: from k0smotron's Remote Machine provider to capi-remote and back.

It runs as cluster admin but reads what tenants wrote (objects, addresses, condition messages)
and what hosts present (host keys): lists are capped, hosts are scanned with bounded time and
concurrency, and tenant text is made safe before it reaches the terminal (docs/security.md).

The modules, in the order a run uses them: :mod:`.inventory` (read the cluster), :mod:`.checks`
(and :mod:`.validation`), :mod:`.plan`, :mod:`.record` (progress kept in the cluster),
:mod:`.steps` and :mod:`.rollback` (with :mod:`.apply`, :mod:`.hostkeys`, :mod:`.poll`),
:mod:`.display`; :mod:`.command` ties them together. docs/migrating.md is the user's guide.
"""

from capi_remote.migrate.options import Options

__all__ = ["Options"]
