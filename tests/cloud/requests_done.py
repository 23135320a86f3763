"""Knowing when the server is done with a request: the synchronisation point for effects that land
after the client has its answer (a background task, or a request whose client hung up).

`RequestsDone(app)` is the ASGI app to serve: it counts each HTTP request when the app has
finished it, background tasks included (Starlette runs them before the request cycle ends), and
wakes whoever waits for that count. Nothing polls and nothing sleeps.
"""

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DONE_WITHIN_S = 30  # a deadline, not a delay: the wait ends as soon as the server is done


class RequestsDone:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._done: Counter[str] = Counter()
        self._changed = threading.Condition()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                with self._changed:
                    self._done[scope["path"]] += 1
                    self._changed.notify_all()

    def count(self, path: str) -> int:
        with self._changed:
            return self._done[path]

    def wait(self, path: str, count: int, timeout_s: float = DONE_WITHIN_S) -> None:
        """Until the server has finished `count` requests to `path` (in all)."""
        with self._changed:
            done = self._changed.wait_for(lambda: self._done[path] >= count, timeout_s)
        assert done, f"the server did not finish request {count} to {path} within {timeout_s} s"

    @contextmanager
    def one_more(self, path: str) -> Iterator[None]:
        """Around a request to `path`: on leaving, the server has finished it (and what it started)."""
        before = self.count(path)
        yield
        self.wait(path, before + 1)
