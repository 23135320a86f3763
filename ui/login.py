"""/login: online by a verification code, offline by PIN, or emergency access (audited).

- Online: e-mail or phone, "Send me a code", then the 6-digit code and the PIN for offline use (needed
  when the station holds no valid PIN for this person yet). The cloud checks the code; the station keeps
  the PIN's hash for the grace period.
- Offline: e-mail or phone and the PIN, checked against the hash the validation data brought (or the
  one kept at the last online login here). Five wrong PINs block it until the next online login.
- Emergency access: a name and a reason; it always opens the station, and is audited and reported.

Every refusal is a sentence at the field it concerns. After signing in, the browser goes back to the
page it came from (`?next=`), or to Today.
"""

import itertools

from nicegui import ui

from store.errors import StoreError
from store.sign_in import (
    MAX_PIN_FAILURES,
    check_pin,
    emergency_access,
    find_user,
    known_sites,
    remember_online_login,
)
from ui.frame import BUTTON
from ui.login_client import CloudUnavailable, LoginProblem, request_code, verify_code
from ui.offloop import off_loop
from ui.session import LoginMode, current_session, current_station, sign_in

INPUT = "w-full text-lg"


@ui.page("/login")
async def login_page(next: str = "/today") -> None:
    target = next if next.startswith("/") and not next.startswith("//") else "/today"
    ui.page_title("Sign in · DaRT station")
    session = current_session()
    with ui.column().classes("w-full max-w-xl mx-auto p-6 gap-4"):
        ui.label("DaRT station").classes("text-3xl font-bold")
        if session is not None and session.actor is not None:
            ui.label(
                f"{session.actor.name} is signed in on this browser. Signing in here hands the station over."
            ).classes("text-lg text-amber-800").props("data-testid=login-handover")
        _LoginForm(target)


class _LoginForm:
    """The three ways in, on one card: code, PIN, emergency."""

    def __init__(self, target: str) -> None:
        self.target = target
        with ui.card().classes("w-full gap-4 p-6"):
            ui.label("Sign in").classes("text-2xl font-semibold")
            self.identifier = (
                ui.input("E-mail or phone number")
                .props("outlined autofocus autocomplete=username data-testid=login-identifier")
                .classes(INPUT)
            )
            with ui.row().classes("w-full gap-3"):
                self.send = ui.button("Send me a code", icon="sms", on_click=self.ask_code).props(
                    "size=lg data-testid=login-send-code"
                )
                self.send.classes(BUTTON)
                ui.button("Sign in with my PIN", icon="pin", on_click=self.show_pin).props(
                    "size=lg outline data-testid=login-use-pin"
                ).classes(BUTTON)
            self.sent_note = ui.label("").classes("text-lg text-green-800").props("data-testid=login-sent")
            with ui.column().classes("w-full gap-3") as self.code_step:
                self.code = (
                    ui.input("The 6-digit code from the message")
                    .props("outlined inputmode=numeric autocomplete=one-time-code data-testid=login-code")
                    .classes(INPUT)
                )
                self.new_pin = (
                    ui.input("Choose your PIN (4 to 8 digits) for sign-in without network", password=True)
                    .props("outlined inputmode=numeric autocomplete=new-password data-testid=login-new-pin")
                    .classes(INPUT)
                )
                ui.button("Sign in", icon="login", on_click=self.verify).props(
                    "size=lg color=primary data-testid=login-verify"
                ).classes(BUTTON)
                self.code.on("keydown.enter", self.verify)
                self.new_pin.on("keydown.enter", self.verify)
            self.code_step.set_visibility(False)
            with ui.column().classes("w-full gap-3") as self.pin_step:
                self.pin = (
                    ui.input("Your PIN", password=True)
                    .props("outlined inputmode=numeric autocomplete=current-password data-testid=login-pin")
                    .classes(INPUT)
                )
                ui.button("Sign in with PIN", icon="login", on_click=self.with_pin).props(
                    "size=lg color=primary data-testid=login-pin-submit"
                ).classes(BUTTON)
                self.pin.on("keydown.enter", self.with_pin)
            self.pin_step.set_visibility(False)
            self.identifier.on("keydown.enter", self.ask_code)
        with (
            ui.expansion("Emergency access", icon="emergency")
            .classes("w-full text-lg")
            .props("data-testid=emergency-toggle")
        ):
            ui.label(
                "Opens the station without any check when nobody can sign in. Every use is recorded "
                "with your name and reason and reported to Alpha Tau."
            ).classes("text-base")
            self.emergency_name = ui.input("Your full name").props("outlined data-testid=emergency-name")
            self.emergency_name.classes(INPUT)
            self.emergency_reason = ui.input("Why is emergency access needed?").props(
                "outlined data-testid=emergency-reason"
            )
            self.emergency_reason.classes(INPUT)
            ui.button("Open with emergency access", icon="warning", on_click=self.emergency).props(
                "size=lg color=negative data-testid=emergency-submit"
            ).classes(BUTTON)

    # --- online --------------------------------------------------------------------------------------
    async def ask_code(self) -> None:
        self._clear()
        if not self._identifier_given():
            return
        self.send.props("loading")
        try:
            words = await request_code(current_station(), self.identifier.value)
        except LoginProblem as problem:
            self._refuse(problem.field, problem.message)
            if isinstance(problem, CloudUnavailable):
                self.show_pin()
            return
        finally:
            self.send.props(remove="loading")
        self.sent_note.text = words
        self.pin_step.set_visibility(False)
        self.code_step.set_visibility(True)
        self.code.run_method("focus")

    async def verify(self) -> None:
        self._clear()
        if not self._identifier_given():
            return
        code = (self.code.value or "").replace(" ", "")
        if len(code) != 6 or not code.isdigit():
            self.code.error = "The code is the 6 digits of the message."
            return
        station = current_station()
        pin = (self.new_pin.value or "").strip()
        known = await off_loop(find_user, station, self.identifier.value)
        # A new PIN is needed where the station holds no usable one: none, blocked, or past its grace.
        pin_needed = (
            known is None
            or not known.has_pin
            or known.failed_attempts >= MAX_PIN_FAILURES
            or (known.pin_valid_until is not None and known.pin_valid_until <= station.now())
        )
        if pin or pin_needed:
            problem = pin_problem(pin)
            if problem:
                self.new_pin.error = problem
                return
        try:
            login = await verify_code(station, self.identifier.value, code, pin or None)
        except LoginProblem as problem:
            self._refuse(problem.field, problem.message)
            return
        actor = await off_loop(
            lambda: remember_online_login(
                station, user=login.user, identifier=self.identifier.value, pin=pin or None
            )
        )
        sign_in(actor, LoginMode.ONLINE, cloud_token=login.session_token)
        ui.navigate.to(self.target)

    # --- offline -------------------------------------------------------------------------------------
    def show_pin(self) -> None:
        self.code_step.set_visibility(False)
        self.pin_step.set_visibility(True)
        self.pin.run_method("focus")

    async def with_pin(self) -> None:
        self._clear()
        if not self._identifier_given():
            return
        if not (self.pin.value or "").strip():
            self.pin.error = "Enter your PIN."
            return
        station = current_station()
        try:
            actor = await off_loop(
                lambda: check_pin(station, identifier=self.identifier.value, pin=self.pin.value)
            )
        except StoreError as refusal:
            self.pin.value = ""  # before the message: a new value clears a field's error
            self._refuse(refusal.field or "pin", refusal.message)
            return
        sign_in(actor, LoginMode.PIN)
        ui.navigate.to(self.target)

    # --- emergency -----------------------------------------------------------------------------------
    async def emergency(self) -> None:
        self.emergency_name.error = None
        self.emergency_reason.error = None
        station = current_station()
        sites = await off_loop(known_sites, station)
        try:
            actor = await off_loop(
                lambda: emergency_access(
                    station, name=self.emergency_name.value, reason=self.emergency_reason.value, sites=sites
                )
            )
        except StoreError as refusal:
            target = self.emergency_name if refusal.field == "name" else self.emergency_reason
            target.error = refusal.message
            return
        sign_in(actor, LoginMode.EMERGENCY)
        ui.notify("Emergency access is recorded and will be reported.", type="warning")
        ui.navigate.to(self.target)

    # --- helpers -------------------------------------------------------------------------------------
    def _identifier_given(self) -> bool:
        if (self.identifier.value or "").strip():
            return True
        self.identifier.error = "Enter your e-mail address or phone number."
        return False

    def _refuse(self, field: str, message: str) -> None:
        target = {"code": self.code, "pin": self.pin if self.pin_step.visible else self.new_pin}.get(
            field, self.identifier
        )
        target.error = message

    def _clear(self) -> None:
        for field in (self.identifier, self.code, self.new_pin, self.pin):
            field.error = None


def pin_problem(pin: str) -> str | None:
    """The cloud's PIN rules (cloud/routes/auth.py), checked here first so the answer is at the field."""
    if not pin:
        return (
            "Choose a PIN (4 to 8 digits): it signs you in and unlocks the screen when there is no network."
        )
    if not 4 <= len(pin) <= 8 or not pin.isascii() or not pin.isdigit():
        return "The PIN is 4 to 8 digits."
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    if steps in ({0}, {1}, {-1}):
        return "Choose a PIN that is not one digit repeated or a run like 1234."
    return None
