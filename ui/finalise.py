"""The finalise page: the checks, the signature, then the locked treatment and its reports.

The checks shown are the store's own (`lookups.finalise_problems` runs the very checks that
`finalise_treatment` runs), each refusal in its words. A hospital user signs for themselves: online
with a confirmation, name and position; with no connection to the cloud by re-entering the PIN, and
the treatment then says "signed offline, awaiting cloud confirmation" until the cloud accepts it. A
signed treatment shows its receipt (saved here, sent, confirmed by the cloud) beside its signature.
"""

from typing import Any

from nicegui import run, ui

from store import lookups
from store.enums import Role, SignatureMode, SignatureStatus, TreatmentType
from store.errors import StoreError
from store.journal import Change
from store.sign_in import check_user_pin
from store.station import Actor, Station
from store.treatments import finalise_treatment
from sync.monitor import Connectivity
from ui.banner import read_status
from ui.code_signing import CodeSigning, requester_note
from ui.components.notice import Notice
from ui.frame import BUTTON, frame, receipt_badge
from ui.reports import download_buttons
from ui.session import current_station, require_actor

AWAITING_TEXT = "Signed offline, awaiting cloud confirmation"
SIGNED_TEXT = "Signed and saved here"


@ui.page("/finalise/{treatment_id}")
async def finalise_page(treatment_id: str) -> None:
    actor = require_actor()
    if actor is None:
        return
    station = current_station()
    try:
        treatment = await run.io_bound(lookups.treatment, station, actor, treatment_id)
        problems = await run.io_bound(lookups.finalise_problems, station, actor, treatment_id)
    except StoreError as refusal:
        with frame("Finalise"):
            ui.label(refusal.message).classes("text-xl text-red-800").props("data-testid=page-refusal")
        return
    status = await read_status()
    online = status is not None and status.connectivity == Connectivity.ONLINE
    with frame("Finalise", treatment=treatment):
        FinalisePage(station, actor, treatment, problems, online=online)


class FinalisePage:
    def __init__(
        self, station: Station, actor: Actor, treatment: dict[str, Any], problems: list[str], *, online: bool
    ) -> None:
        self.station = station
        self.actor = actor
        self.treatment = treatment
        self.online = online
        back = "/removal" if treatment["type"] == TreatmentType.REMOVAL else "/treatment"
        self.back_path = f"{back}/{treatment['id']}"
        self.notice = Notice()
        self.body = ui.column().classes("w-full gap-4")
        with self.body:
            if treatment["is_complete"]:
                self._draw_locked()
            else:
                self._draw_checks(problems)

    # --- before signing -------------------------------------------------------------------------
    def _draw_checks(self, problems: list[str]) -> None:
        kind = "insertion" if self.treatment["type"] == TreatmentType.INSERTION else "removal"
        ui.button(
            f"Back to the {kind}", icon="arrow_back", on_click=lambda: ui.navigate.to(self.back_path)
        ).classes(BUTTON).props("outline data-testid=back")
        with ui.card().classes("w-full p-4 gap-2").props("data-testid=finalise-checks"):
            ui.label("Checks before signing").classes("text-2xl font-semibold")
            if problems:
                for problem in problems:
                    with ui.row().classes("items-start gap-2"):
                        ui.icon("error", color="negative", size="md")
                        ui.label(problem).classes("text-lg text-red-900").props(
                            "data-testid=finalise-problem"
                        )
            else:
                with ui.row().classes("items-center gap-2"):
                    ui.icon("check_circle", color="positive", size="md")
                    ui.label(f"Every check passed: the {kind} can be signed.").classes("text-lg").props(
                        "data-testid=finalise-ready"
                    )
        if self.actor.role != Role.HOSPITAL:
            # Alpha Tau and admin never sign for themselves: they choose a signer, who signs with a code.
            CodeSigning(
                self.station,
                self.actor,
                self.treatment,
                online=self.online,
                notice=self.notice,
                on_signed=self._signed,
            )
            return
        self._draw_signing()

    def _draw_signing(self) -> None:
        with ui.card().classes("w-full p-4 gap-3").props("data-testid=signing"):
            ui.label("Signature").classes("text-2xl font-semibold")
            ui.label(
                "Online: the cloud is reachable; you sign with your name and position."
                if self.online
                else "Offline: the cloud cannot be reached; re-enter your PIN to sign. The treatment will "
                "show that it awaits the cloud's confirmation."
            ).classes("text-lg").props("data-testid=signing-mode")
            self.name = ui.input("Your name", value=self.actor.name).props("outlined data-testid=sign-name")
            self.position = ui.input("Your position", value=self.actor.position or "").props(
                "outlined data-testid=sign-position"
            )
            self.pin = None
            if not self.online:
                self.pin = ui.input("Your PIN", password=True).props(
                    "outlined inputmode=numeric autocomplete=off data-testid=sign-pin"
                )
            self.agree = (
                ui.checkbox("I confirm that this record is complete and correct, and I sign it.")
                .props("size=lg data-testid=sign-confirm")
                .classes("text-lg")
            )
            self.problem = ui.label().classes("text-lg text-red-800").props("data-testid=sign-problem")
            ui.button("Sign and finalise", icon="draw", on_click=self.sign).classes(BUTTON).props(
                "color=positive data-testid=sign"
            )

    async def sign(self) -> None:
        self.problem.text = ""
        if not self.agree.value:
            self.problem.text = "Tick the confirmation to sign."
            return
        mode = SignatureMode.SELF if self.online else SignatureMode.OFFLINE_PIN
        try:
            if self.pin is not None:
                await run.io_bound(
                    check_user_pin,
                    self.station,
                    user_id=self.actor.user_id,
                    pin=self.pin.value or "",
                    purpose="sign_offline",
                )
            change = await run.io_bound(
                finalise_treatment,
                self.station,
                self.actor,
                treatment_id=self.treatment["id"],
                mode=mode,
                signer_name=self.name.value,
                signer_position=self.position.value,
            )
        except StoreError as refusal:
            self.problem.text = refusal.message
            if self.pin is not None:
                self.pin.value = ""
            self.notice.stop("Not finalised", refusal.message)
            return
        self._signed(change)

    def _signed(self, change: Change) -> None:
        self.treatment = {**self.treatment, **change.record}
        self.notice.done("Finalised and signed", "The treatment is locked.")
        self.body.clear()
        with self.body:
            self._draw_locked()

    # --- after signing --------------------------------------------------------------------------
    def _draw_locked(self) -> None:
        t = self.treatment
        awaiting = t["signature_status"] == SignatureStatus.AWAITING_CLOUD.value
        with ui.card().classes("w-full p-4 gap-2").props("data-testid=locked-summary"):
            ui.label("Finalised and locked: nothing can be added or changed.").classes(
                "text-2xl font-semibold"
            ).props("data-testid=locked")
            signed_at = t["signed_at"].astimezone(self.station.settings.zone)
            position = t["signer_position"] or "no position"
            ui.label(f"Signed by {t['signer_name']} ({position}) on {signed_at:%d %b %Y %H:%M}").classes(
                "text-lg"
            ).props("data-testid=signed-by")
            with ui.row().classes("items-center gap-3"):
                # A signature made online is saved here first and reaches the cloud with the next sync:
                # the page says what is true now, and the receipt says when the cloud has confirmed it.
                ui.label(AWAITING_TEXT if awaiting else SIGNED_TEXT).classes(
                    "text-lg font-bold " + ("text-amber-800" if awaiting else "text-green-800")
                ).props("data-testid=signature-status")
                receipt_badge("treatments", t["id"])
            if t["signature_mode"] == SignatureMode.CODE.value:
                requester_note(self.station, t)
        with ui.row().classes("gap-4"):
            ui.button(
                "View the record", icon="visibility", on_click=lambda: ui.navigate.to(self.back_path)
            ).classes(BUTTON).props("outline data-testid=view-record")
        download_buttons(self.station, self.actor, t)
