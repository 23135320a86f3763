"""Database and network work off the event loop, for the pages.

NiceGUI's `run.io_bound` returns None when the call is cancelled or the app is stopping (an interim
shape until NiceGUI 4, which raises CancelledError). A page would then go on with None as if it were
an answer. `off_loop` raises `asyncio.CancelledError` instead, so the handler simply stops.
"""

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from nicegui import run

P = ParamSpec("P")
R = TypeVar("R")


async def off_loop(callback: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`callback(*args, **kwargs)` in a worker thread; its result, or CancelledError if it did not run."""
    outcome = await run.io_bound(_boxed, callback, *args, **kwargs)
    if outcome is None:
        raise asyncio.CancelledError("the app is stopping, or the call was cancelled")
    return outcome[0]


def _boxed(callback: Callable[..., R], *args: object, **kwargs: object) -> tuple[R]:
    return (callback(*args, **kwargs),)
