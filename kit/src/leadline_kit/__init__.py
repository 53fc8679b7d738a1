"""Shared plumbing of the Leadline services.

Two libraries every service imports probe, at import time, for optional packages the services never
use, and the workspace's one environment has them (the gateway's aiohttp, the dev tools' rich):

- ``nats`` imports ``aiohttp`` for its WebSocket transport (``ws://`` URLs; ours are ``nats://``):
  7.5 MiB of aiohttp, yarl, multidict and frozenlist in every service process;
- ``httpx`` imports its command-line tool (``httpx._main``: click, rich, pygments): 4 MiB.

Both are imported here with the probe answered "not installed" (the entry is gone afterwards, so a
later ``import aiohttp`` of the gateway loads it as usual).  A ``ws://`` NATS URL then fails with
nats' own "Could not import aiohttp transport".
"""

from __future__ import annotations

import sys


def _import_without(module: str, *probes: str) -> None:
    hidden = [name for name in probes if name not in sys.modules]
    if module in sys.modules or len(hidden) < len(probes):
        return  # imported before, or its probe already answered: nothing to save
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # None: "import X" raises ImportError
    try:
        __import__(module)
    finally:
        for name in hidden:
            del sys.modules[name]


_import_without("nats", "aiohttp")
_import_without("httpx", "httpx._main")
