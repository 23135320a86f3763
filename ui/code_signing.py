"""Signing by code on the finalise page: an Alpha Tau user chooses the signer, the signer types the code.

domain.md: an Alpha Tau user chooses a signer from the site's staff list; the signer receives a 6-digit
code valid for 1 hour, 3 tries. The staff list is the station's validation data (the site's hospital
users); the code is sent and checked by the cloud (ui/signing_client.py), so this needs the cloud and
an online sign-in. A wrong code says how many tries are left; the signature the cloud returns is
recorded by the store (store.signing.finalise_with_code), which locks the treatment.
"""

from collections.abc import Callable
from typing import Any

from nicegui import background_tasks, ui

from store import lookups
from store.errors import StoreError
from store.journal import Change
from store.signing import finalise_with_code, site_staff
from store.station import Actor, Station
from ui.components.notice import Notice
from ui.frame import BUTTON
from ui.offloop import off_loop
from ui.session import current_session
from ui.signing_client import SigningProblem, send_signing_code, verify_signing_code

OFFLINE_TEXT = (
    "Signing by code needs the cloud, and it cannot be reached from here. The hospital user can sign "
    "offline with their PIN."
)
NO_CLOUD_SESSION_TEXT = (
    "Signing by code needs an online sign-in (you signed in with your PIN or emergency access): sign out "
    "and sign in with a code from the cloud, or let the hospital user sign for themselves."
)


class CodeSigning:
    """The signing card of an Alpha Tau user (or administrator); calls `on_signed` once finalised."""

    def __init__(
        self,
        station: Station,
        actor: Actor,
        treatment: dict[str, Any],
        *,
        online: bool,
        notice: Notice,
        on_signed: Callable[[Change], None],
    ) -> None:
        self.station = station
        self.actor = actor
        self.treatment = treatment
        self.notice = notice
        self.on_signed = on_signed
        session = current_session()
        self.token = session.cloud_token if session else None
        with ui.card().classes("w-full p-4 gap-3").props("data-testid=signing"):
            ui.label("Signature by code").classes("text-2xl font-semibold")
            if not online or self.token is None:
                ui.label(OFFLINE_TEXT if not online else NO_CLOUD_SESSION_TEXT).classes("text-lg").props(
                    "data-testid=sign-code-unavailable"
                )
                return
            ui.label(
                f"Choose the signer from the staff of {treatment['site']}. The cloud sends them a 6-digit "
                "code (valid 1 hour, 3 tries); they type it here to sign."
            ).classes("text-lg").props("data-testid=signing-mode")
            self.signer = (
                ui.select({}, label="Signer").classes("w-96 text-lg").props("outlined data-testid=signer")
            )
            self.send_button = (
                ui.button("Send signing code", icon="send", on_click=self.send)
                .classes(BUTTON)
                .props("data-testid=send-code")
            )
            self.sent = ui.label().classes("text-lg").props("data-testid=code-sent")
            with ui.column().classes("gap-3") as self.code_part:
                self.code = ui.input("Code the signer received").props(
                    "outlined inputmode=numeric autocomplete=one-time-code data-testid=signing-code"
                )
                ui.button("Sign with the code", icon="draw", on_click=self.sign).classes(BUTTON).props(
                    "color=positive data-testid=sign-with-code"
                )
            self.code_part.visible = False
            self.problem = ui.label().classes("text-lg text-red-800").props("data-testid=sign-problem")
        background_tasks.create(self._load_staff(), name="the site's staff for signing")

    async def _load_staff(self) -> None:
        try:
            staff = await off_loop(site_staff, self.station, self.actor, self.treatment["site"])
        except StoreError as refusal:
            self.problem.text = refusal.message
            return
        if not staff:
            self.problem.text = (
                f"No hospital staff of {self.treatment['site']} in this station's validation data."
            )
            self.send_button.disable()
            return
        self.signer.set_options(
            {m.user_id: f"{m.name} ({m.position})" if m.position else m.name for m in staff}
        )

    async def send(self) -> None:
        self.problem.text = ""
        if not self.signer.value:
            self.problem.text = "Choose the signer from the staff list."
            return
        assert self.token is not None
        try:
            words = await send_signing_code(
                self.station,
                self.token,
                site=self.treatment["site"],
                treatment_id=self.treatment["id"],
                signer_id=str(self.signer.value),
            )
        except SigningProblem as problem:
            self.problem.text = problem.message
            self.notice.stop("Code not sent", problem.message)
            return
        self.sent.text = f"{words} Ask the signer to type it below."
        self.send_button.text = "Send a new code"
        self.code.value = ""
        self.code_part.visible = True

    async def sign(self) -> None:
        self.problem.text = ""
        assert self.token is not None
        try:
            signature = await verify_signing_code(
                self.station, self.token, treatment_id=self.treatment["id"], code=self.code.value or ""
            )
        except SigningProblem as problem:
            self.problem.text = problem.message
            self.code.value = ""
            if problem.tries_left == 0:
                self.code_part.visible = False  # this code is void: only a new one can sign
            return
        try:
            change = await off_loop(
                finalise_with_code,
                self.station,
                self.actor,
                treatment_id=self.treatment["id"],
                signature=signature,
            )
        except StoreError as refusal:
            self.problem.text = refusal.message
            self.notice.stop("Not finalised", refusal.message)
            return
        self.on_signed(change)


def requester_note(station: Station, treatment: dict[str, Any]) -> None:
    """Under a code signature: who asked for it (the treatment's completed_by), named in the background."""
    note = (
        ui.label("Confirmed by the signer with a code from the cloud.")
        .classes("text-lg")
        .props("data-testid=signed-by-code")
    )

    async def name_requester() -> None:
        names = await off_loop(lookups.user_names, station)
        requester = names.get(treatment["completed_by"], treatment["completed_by"])
        note.text = f"Confirmed by the signer with a code from the cloud; requested by {requester}."

    background_tasks.create(name_requester(), name="the requester of a code signature")
