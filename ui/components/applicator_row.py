"""One applicator of an insertion, drawn once and redrawn alone when it changes.

A page with two hundred applicators must answer a scan as fast as a page with one, so the list is
never rebuilt: a new scan adds one `ApplicatorRow`, a status move redraws only its own row.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from nicegui import ui

from store.enums import ApplicatorStatus, Indication, allowed_moves
from ui.frame import BUTTON, receipt_badge

# Workflow order for the move buttons (the enum's own order), colours by what a move means.
_MOVE_COLOUR = {
    ApplicatorStatus.OPENED: "primary",
    ApplicatorStatus.LOADED: "primary",
    ApplicatorStatus.INSERTED: "positive",
}
_STATUS_COLOUR = {
    ApplicatorStatus.SEALED: "grey-7",
    ApplicatorStatus.OPENED: "blue-7",
    ApplicatorStatus.LOADED: "indigo-7",
    ApplicatorStatus.INSERTED: "green-8",
    ApplicatorStatus.FAULTY: "red-8",
}
USAGE_TEXT = {"full": "Full use", "faulty": "Faulty", "none": "Not used"}

Move = Callable[["ApplicatorRow", ApplicatorStatus], Awaitable[None]]
Action = Callable[["ApplicatorRow"], Awaitable[None]]


class ApplicatorRow:
    def __init__(
        self,
        record: dict[str, Any],
        *,
        indication: Indication,
        locked: bool,
        package: str | None,
        on_move: Move,
        on_photo: Action,
    ) -> None:
        self.record = record
        self.indication = indication
        self.locked = locked
        self.package = package
        self._on_move = on_move
        self._on_photo = on_photo
        self.card = ui.card().classes("w-full p-3 gap-2 mb-3")  # mb: blocks have no gap
        self.card.props(f"data-testid=applicator-{record['serial_number']}")
        self.draw()

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def status(self) -> ApplicatorStatus:
        return ApplicatorStatus(self.record["status"])

    def update(self, record: dict[str, Any], *, package: str | None = None) -> None:
        self.record = record
        if package is not None:
            self.package = package
        self.card.clear()
        self.draw()

    def draw(self) -> None:
        a = self.record
        status = self.status
        with self.card:
            with ui.row().classes("w-full items-center gap-4 flex-wrap"):
                ui.label(a["serial_number"]).classes("text-xl font-mono font-bold")
                ui.badge(status.label, color=_STATUS_COLOUR.get(status, "orange-9")).classes(
                    "text-base px-3 py-1"
                ).props("data-testid=applicator-status")
                if self.package:
                    ui.badge(f"Package {self.package}", color="teal-7").classes("text-base px-3 py-1")
                ui.label(f"{a['seed_quantity']} seeds").classes("text-lg")
                if status.is_terminal:
                    ui.label(f"{USAGE_TEXT[status.usage.value]}, {a['deployed_seeds']} deployed").classes(
                        "text-lg font-semibold"
                    )
                # Pushed to the right by a margin, not a ui.space(): one element fewer per row (a page of
                # 200 rows is that many objects fewer for each garbage-collector pass).
                if a.get("photo_path"):
                    ui.icon("photo_camera", size="md").classes("ml-auto").props(
                        "data-testid=applicator-has-photo"
                    ).tooltip(a["photo_path"])
                    receipt_badge("applicators", a["id"])
                else:
                    receipt_badge("applicators", a["id"]).classes("ml-auto")
            details = [
                a.get("applicator_type"),
                f"Cat. {a['catalogue_number']}" if a.get("catalogue_number") else None,
                f"Length {a['seed_length']:g} mm" if a.get("seed_length") is not None else None,
                f"Lot {a['lot']}" if a.get("lot") else None,
                f"Expires {a['expiry_date']:%d %b %Y}" if a.get("expiry_date") else None,
            ]
            ui.label(" · ".join(d for d in details if d)).classes("text-base text-slate-700")
            if a.get("comments"):
                ui.label(f"Comment: {a['comments']}").classes("text-base").props(
                    "data-testid=applicator-comment"
                )
            if self.locked:
                return
            moves = allowed_moves(self.indication, status)
            with ui.row().classes("gap-3 flex-wrap"):
                for target in ApplicatorStatus:
                    if target in moves:
                        ui.button(target.label, on_click=lambda t=target: self._on_move(self, t)).classes(
                            BUTTON
                        ).props(
                            f"color={_MOVE_COLOUR.get(target, 'negative')} "
                            f"data-testid=move-{target.value.lower()}"
                        )
                ui.button(
                    "Photo" if not a.get("photo_path") else "Replace photo",
                    icon="photo_camera",
                    on_click=lambda: self._on_photo(self),
                ).classes(BUTTON).props("outline data-testid=applicator-photo")
