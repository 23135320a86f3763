"""The station as a NiceGUI app: the database opened at start-up, the sync service, every page, /health.

`register_station(data_dir)` wires everything before `ui.run` (run.py). The station answers only requests
addressed to itself (Host 127.0.0.1:<port> or localhost:<port>): a web page elsewhere that resolves its
own name to 127.0.0.1 (DNS rebinding) must not be able to read or drive the clinical pages.
"""

import importlib
import logging
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from fastapi.responses import JSONResponse
from nicegui import app, background_tasks
from sqlalchemy import func, select
from starlette.types import ASGIApp, Receive, Scope, Send

from store.engine import read_transaction
from store.enums import QueueStatus
from store.models import SyncQueueEntry, Treatment
from store.station import Settings, Station, open_station
from sync.service import SyncService
from ui import gc_tuning, loop_probe, session
from ui.offloop import off_loop

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 30.0
# Each page module defines its own @ui.page routes.
PAGE_MODULES = (
    "ui.login",
    "ui.today",
    "ui.review",
    "ui.insertion",
    "ui.removal",
    "ui.finalise",
    "ui.reports",
)
LOCAL_NAMES = ("127.0.0.1", "localhost")


def register_station(
    data_dir: Path,
    *,
    settings: Settings | None = None,
    clock: Callable[[], datetime] | None = None,
    extra_hosts: Iterable[str] = (),
    start_sync: bool = True,
) -> None:
    """Open (and migrate) the station's database at start-up, start its sync, close both at shutdown.

    `extra_hosts` are Host headers accepted besides the station's own (the test client's "test");
    `start_sync` False keeps the background sync off (tests that drive sync rounds themselves).
    """
    _register_pages()
    app.add_api_route("/health", health, methods=["GET"])
    app.add_middleware(session.BrowserCookieMiddleware)
    app.add_middleware(HostCheckMiddleware, extra_hosts=frozenset(extra_hosts))  # outermost: first check

    def start() -> None:
        # Synchronous on purpose: NiceGUI does not await start-up handlers, and no request may find
        # the station closed. Nothing is served yet, so the loop has nobody to keep waiting.
        kwargs = {"settings": settings} | ({"clock": clock} if clock is not None else {})
        station = open_station(data_dir, **kwargs)
        session.set_station(station)
        loop_probe.start()  # opt-in (DART_LOOP_PROBE=1): benchmarks/scan_latency.py
        gc_tuning.settle_after_startup()  # start-up objects never scanned again: no long GC stalls
        if start_sync:
            background_tasks.create(_start_sync(station), name="start the sync service")

    async def stop() -> None:
        service = session.sync_service()
        session.set_sync_service(None)
        if service is not None:
            await service.stop()
        station = session.opened_station()
        session.set_station(None)
        if station is not None:
            station.close()

    app.on_startup(start)
    app.on_shutdown(stop)


async def _start_sync(station: Station) -> None:
    """The background sync (sync/service.py); the station works offline whatever it does."""
    service = SyncService(station, interval_s=SYNC_INTERVAL_S)
    await service.start()
    session.set_sync_service(service)


def _register_pages() -> None:
    """Import each page module so that its @ui.page routes exist; one imported before the app was
    (re)built, as in a test process, is executed again, since its routes were registered on another app."""
    for name in PAGE_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)


class HostCheckMiddleware:
    """Refuse (HTTP 421, or a closed websocket) any request whose Host is not this station's address."""

    def __init__(self, app: ASGIApp, *, extra_hosts: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.extra_hosts = extra_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._own(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"This station answers only http://127.0.0.1:<port> on its own laptop."
        await send(
            {
                "type": "http.response.start",
                "status": 421,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _own(self, scope: Scope) -> bool:
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        if host is None:
            return False
        if host.lower() in self.extra_hosts:
            return True
        server = scope.get("server")
        port = server[1] if server else None
        return host.lower() in {f"{name}:{port}" for name in LOCAL_NAMES}


async def health() -> JSONResponse:
    """Whether the station's database is open, with its device id and what waits for the cloud."""
    station = session.opened_station()
    if station is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    counts = await off_loop(_counts, station)
    return JSONResponse({"status": "ok", "device_id": station.device_id, **counts, **loop_probe.report()})


def _counts(station: Station) -> dict[str, int]:
    queue = SyncQueueEntry.__table__
    treatments = Treatment.__table__
    with read_transaction(station.engine) as conn:
        waiting = conn.execute(
            select(func.count()).where(queue.c.status != QueueStatus.DONE.value)
        ).scalar_one()
        total = conn.execute(select(func.count()).where(treatments.c.deleted_at.is_(None))).scalar_one()
    return {"treatments": int(total), "waiting": int(waiting)}
