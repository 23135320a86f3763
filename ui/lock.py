"""The screen lock: after 15 idle minutes the page is covered until the signed-in clinician's PIN is given.

Locking is not signing out (domain.md): the page under the cover, with any procedure in progress,
stays exactly as it was, and everything on it was saved when it was done. Someone else may take over by
signing in (the session then changes hands, audited); a procedure page never offers "Sign out".
"""

from nicegui import ui

from store.errors import StoreError
from store.sign_in import check_user_pin, emergency_access, known_sites, record_sign_out
from ui.offloop import off_loop
from ui.session import (
    BrowserSession,
    LoginMode,
    current_station,
    lock_if_idle,
    login_path,
    sign_out,
    unlock,
)

CHECK_S = 1.0  # how often a page checks its session's idle time (timers are never faster than 1 s)


def header_controls(session: BrowserSession, cover: ui.dialog, *, in_procedure: bool) -> None:
    """Lock (always) and Sign out (not on a procedure page, where locking is the way to step away)."""
    ui.button("Lock", icon="lock", on_click=lambda: _lock_now(session, cover)).props(
        "data-testid=lock-now color=white text-color=black"
    ).classes("text-base min-h-[44px]")
    if not in_procedure:
        ui.button("Sign out", icon="logout", on_click=lambda: _sign_out(session)).props(
            "data-testid=sign-out flat color=white"
        ).classes("text-base min-h-[44px]")


def lock_screen(session: BrowserSession) -> ui.dialog:
    """The cover and the timer that raises it; the cover opens at once if the session is locked."""
    with (
        ui.dialog().props("persistent maximized data-testid=lock-screen") as cover,
        ui.card().classes("w-full h-full items-center justify-center bg-slate-900 text-white gap-6") as card,
    ):
        ui.icon("lock", size="xl")
        ui.label("The screen is locked").classes("text-3xl font-bold")
        who = session.actor.name if session.actor else ""
        ui.label(f"{who} is signed in. Nothing on this page was lost.").classes("text-xl")
        if session.mode is LoginMode.EMERGENCY:
            reason = (
                ui.input("Why is emergency access still needed?")
                .props("outlined dark autofocus data-testid=unlock-reason")
                .classes("w-96 text-lg")
            )
            pin = None
        else:
            pin = (
                ui.input("Your PIN", password=True)
                .props("outlined dark autofocus inputmode=numeric autocomplete=off data-testid=unlock-pin")
                .classes("w-96 text-lg")
            )
            reason = None
        field = pin or reason
        assert field is not None

        async def try_unlock() -> None:
            field.error = None
            try:
                await _unlock(session, pin.value if pin else None, reason.value if reason else None)
            except StoreError as refusal:
                if pin:
                    field.value = ""  # before the message: a new value clears a field's error
                field.error = refusal.message
                return
            field.value = ""
            cover.close()

        field.on("keydown.enter", try_unlock)
        ui.button("Unlock", icon="lock_open", on_click=try_unlock).props(
            "size=lg color=primary data-testid=unlock"
        ).classes("min-h-[56px] w-96 text-lg")
        ui.button("Someone else: sign in", on_click=lambda: ui.navigate.to(login_path(_here()))).props(
            "flat color=white data-testid=switch-user"
        ).classes("text-lg min-h-[48px]")

    def check() -> None:
        if lock_if_idle(session) and not cover.value:
            cover.open()
        elif not session.locked and cover.value:
            cover.close()  # unlocked in another tab of this browser

    # Hidden while closed as well: nothing of the cover counts as shown until the screen is locked.
    card.bind_visibility_from(cover, "value")
    ui.timer(CHECK_S, check)
    if session.locked:
        cover.open()
    return cover


async def _unlock(session: BrowserSession, pin: str | None, reason: str | None) -> None:
    station = current_station()
    actor = session.actor
    assert actor is not None
    if session.mode is LoginMode.EMERGENCY:
        sites = await off_loop(known_sites, station)
        session.actor = await off_loop(
            lambda: emergency_access(station, name=actor.name, reason=reason or "", sites=sites)
        )
    else:
        await off_loop(
            lambda: check_user_pin(station, user_id=actor.user_id, pin=pin or "", purpose="unlock")
        )
    unlock(session)


def _lock_now(session: BrowserSession, cover: ui.dialog) -> None:
    session.locked = True  # other tabs of this browser follow within a second (their timers)
    cover.open()


async def _sign_out(session: BrowserSession) -> None:
    actor = session.actor
    sign_out()
    if actor is not None:
        await off_loop(record_sign_out, current_station(), actor)
    ui.navigate.to("/login")


def _here() -> str | None:
    request = ui.context.client.request
    return request.url.path if request is not None else None
