"""Per-browser state of the station's pages: the station, who is signed in, and whether the screen is locked.

The station serves one kiosk browser, but nothing stops a second tab or browser on the laptop, so each
browser gets its own session, named by a random cookie (`BrowserCookieMiddleware`). Sessions live in
this process's memory only: a restarted station asks everybody to sign in again, and nothing about a
sign-in is written to disk except its audit entry.

Locking is not signing out (domain.md): after 15 idle minutes the screen is covered and the session's
clinician (or emergency access) must unlock it, but the page underneath, and any procedure in progress on
it, stays exactly as it was.
"""

import secrets
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nicegui import ui
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.station import Actor, Station

if TYPE_CHECKING:  # written by the sync engineer; the station runs (offline, unlinked) without it
    from sync.service import SyncService

SESSION_COOKIE = "dart_session"
IDLE_LOCK = timedelta(minutes=15)


class LoginMode(StrEnum):
    ONLINE = "online"  # verification code checked by the cloud
    PIN = "pin"  # offline, against the cached PIN hash
    EMERGENCY = "emergency"  # no check possible; audited and reported at the next sync


@dataclass
class BrowserSession:
    """One browser's sign-in. `actor` None: nobody is signed in."""

    actor: Actor | None = None
    mode: LoginMode | None = None
    cloud_token: str | None = None  # the cloud session of an online login (never stored on disk)
    site: str | None = None  # the site this browser works at (header, Today page)
    signed_in_at: datetime | None = None
    last_activity: datetime | None = None
    locked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # page state that must survive a navigation


@dataclass
class _Runtime:
    station: Station | None = None
    sync: "SyncService | None" = None
    sessions: dict[str, BrowserSession] = field(default_factory=dict)


_runtime = _Runtime()


# --- the interface every page uses ------------------------------------------------------------------
def current_station() -> Station:
    """The station opened at start-up (ui/station_app.py)."""
    if _runtime.station is None:
        raise RuntimeError("the station is not open yet (start-up has not run)")
    return _runtime.station


def current_actor() -> Actor | None:
    """The clinician signed in on this browser, or None."""
    session = current_session()
    return session.actor if session else None


def require_actor() -> Actor | None:
    """The signed-in clinician; None after sending the browser to /login (the page should then return)."""
    actor = current_actor()
    if actor is None:
        ui.navigate.to(login_path(_current_path()))
    return actor


def sync_service() -> "SyncService | None":
    """The station's background sync (None while the station is not linked to a cloud, or in tests)."""
    return _runtime.sync


# --- sessions ----------------------------------------------------------------------------------------
def current_session() -> BrowserSession | None:
    browser = browser_id()
    return _runtime.sessions.get(browser) if browser else None


def sign_in(actor: Actor, mode: LoginMode, *, cloud_token: str | None = None) -> BrowserSession:
    """Start this browser's session for `actor` (a previous one of this browser ends)."""
    browser = browser_id()
    if browser is None:
        raise RuntimeError("this request carries no session cookie (BrowserCookieMiddleware is missing)")
    now = current_station().now()
    session = BrowserSession(
        actor=actor,
        mode=mode,
        cloud_token=cloud_token,
        site=min(actor.sites) if actor.sites else None,
        signed_in_at=now,
        last_activity=now,
    )
    _runtime.sessions[browser] = session
    return session


def sign_out() -> BrowserSession | None:
    """End this browser's session; returns it (the caller may end the cloud session too)."""
    browser = browser_id()
    return _runtime.sessions.pop(browser, None) if browser else None


def touch() -> None:
    """Something was done on this browser: the idle clock starts again (not while locked)."""
    session = current_session()
    if session is not None and not session.locked:
        session.last_activity = current_station().now()


def idle_for(session: BrowserSession) -> timedelta:
    if session.last_activity is None:
        return timedelta(0)
    return current_station().now() - session.last_activity


def lock_if_idle(session: BrowserSession) -> bool:
    """Lock the session after IDLE_LOCK without activity; returns whether it is locked."""
    if not session.locked and session.actor is not None and idle_for(session) >= IDLE_LOCK:
        session.locked = True
    return session.locked


def unlock(session: BrowserSession) -> None:
    session.locked = False
    session.last_activity = current_station().now()


def login_path(next_path: str | None) -> str:
    if not next_path or next_path.startswith("/login") or not next_path.startswith("/"):
        return "/login"
    return f"/login?next={quote(next_path, safe='/')}"


# --- wiring (ui/station_app.py) -----------------------------------------------------------------------
def opened_station() -> Station | None:
    """The station, or None before start-up finished (the health route says "starting")."""
    return _runtime.station


def set_station(station: Station | None) -> None:
    _runtime.station = station
    if station is None:
        _runtime.sessions.clear()


def set_sync_service(service: "SyncService | None") -> None:
    _runtime.sync = service


def browser_id() -> str | None:
    """The session cookie of the browser behind the current page (set by BrowserCookieMiddleware)."""
    try:
        request = ui.context.client.request
    except RuntimeError:  # no page context (a background task)
        return None
    if request is None:
        return None
    return request.scope.get("state", {}).get("dart_browser") or request.cookies.get(SESSION_COOKIE)


def _current_path() -> str | None:
    try:
        request = ui.context.client.request
    except RuntimeError:
        return None
    if request is None:
        return None
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


class BrowserCookieMiddleware:
    """Give every browser a random, HttpOnly, same-site session cookie that names its session here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        existing = _cookie(scope, SESSION_COOKIE)
        browser = existing if existing and len(existing) == 43 else secrets.token_urlsafe(32)
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["dart_browser"] = browser
        if browser == existing or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = f"{SESSION_COOKIE}={browser}; Path=/; HttpOnly; SameSite=Strict"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                cookie_name, _, cookie_value = part.strip().partition("=")
                if cookie_name == name:
                    return cookie_value
    return None
