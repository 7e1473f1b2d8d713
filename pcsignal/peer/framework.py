"""
Results for the caller's framework, through txaio.

The peer's API is used from Twisted programs (which want Deferreds) and
from asyncio programs (which want futures); the work underneath is asyncio
(aiortc) and Twisted (the HTTP client) alike.  ``api_future`` hands back
whichever the program chose with ``txaio.use_twisted()`` or
``txaio.use_asyncio()`` (an asyncio future when it chose neither).
"""

from __future__ import annotations

import asyncio
from typing import Any

import txaio
from twisted.internet.defer import Deferred


def api_future(work: Any) -> Any:
    """Wrap a coroutine, asyncio future or Deferred for the caller's framework."""
    if isinstance(work, Deferred):
        if txaio.using_twisted:
            return work
        return work.asFuture(asyncio.get_event_loop())
    future = asyncio.ensure_future(work)
    if txaio.using_twisted:
        return Deferred.fromFuture(future)
    return future
