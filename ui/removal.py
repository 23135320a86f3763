"""The removal page: take the insertion's applicators out by capacity, single seeds, the removal form.

The insertion's applicators that deployed seeds are shown in groups of equal capacity; "Remove one"
marks the next one of a group removed. Single seeds are removed one at a time with a reason. The form
asks for the removal date, whether everything came out that day, and, when the seeds removed differ
from those deployed, how the difference is explained in four categories that must add up to it.
Every count is derived by the store after each change (store/removal_counts.py).
"""

from datetime import date
from typing import Any

from nicegui import run, ui

from store import lookups
from store.enums import SeedRemovalReason
from store.errors import StoreError
from store.photos import discard_photo, store_photo
from store.removal import fill_removal_form, remove_applicator, remove_single_seed
from store.station import Actor, Station
from ui.components.notice import Notice
from ui.components.photos import take_photo
from ui.frame import BUTTON, frame, receipt_badge
from ui.session import current_station, require_actor

REASONS = {
    SeedRemovalReason.APPLICATOR_RUPTURE.value: "Applicator rupture",
    SeedRemovalReason.PATIENT_FROM_HOME.value: "Patient arrived from home",
    SeedRemovalReason.OTHER.value: "Other (describe)",
}
CATEGORIES = (
    ("lost", "gap_lost", "Lost"),
    ("retrieved", "gap_retrieved", "Retrieved to site"),
    ("in_tissue", "gap_in_tissue", "Remained in tissue"),
    ("other", "gap_other", "Other (describe)"),
)


@ui.page("/removal/{treatment_id}")
async def removal_page(treatment_id: str) -> None:
    actor = require_actor()
    if actor is None:
        return
    station = current_station()
    try:
        view = await run.io_bound(lookups.removal_view, station, actor, treatment_id)
    except StoreError as refusal:
        with frame("Removal"):
            ui.label(refusal.message).classes("text-xl text-red-800").props("data-testid=page-refusal")
        return
    with frame("Removal", treatment=view.removal):
        RemovalPage(station, actor, view)


class RemovalPage:
    def __init__(self, station: Station, actor: Actor, view: lookups.RemovalView) -> None:
        self.station = station
        self.actor = actor
        self.removal_id: str = view.removal["id"]
        self.locked = bool(view.removal["is_complete"])
        self.pending_photo: bytes | None = None
        insertion = view.insertion
        days = (view.removal["date"] - insertion["date"]).days
        with ui.row().classes("w-full items-center gap-6 text-lg flex-wrap"):
            ui.label(f"Insertion of {insertion['date']:%d %b %Y} ({days} days ago)").props(
                "data-testid=removal-insertion"
            )
            ui.space()
            if self.locked:
                ui.label("Finalised and locked: nothing can be added or changed.").classes("font-bold").props(
                    "data-testid=locked"
                )
            ui.button(
                "Signature and reports" if self.locked else "Finalise",
                icon="task_alt",
                on_click=lambda: ui.navigate.to(f"/finalise/{self.removal_id}"),
            ).classes(BUTTON).props("color=positive data-testid=go-finalise")
        self.notice = Notice()
        with ui.card().classes("w-full p-4 gap-1").props("data-testid=removal-counts"):
            self.counts_line = ui.label().classes("text-2xl font-bold").props("data-testid=counts-removed")
            self.counts_detail = ui.label().classes("text-lg").props("data-testid=counts-detail")
            self.gap_line = ui.label().classes("text-lg font-semibold").props("data-testid=counts-gap")
        ui.label("Applicators by capacity").classes("text-2xl font-semibold")
        self.groups = ui.column().classes("w-full gap-3").props("data-testid=removal-groups")
        if not self.locked:
            self._draw_removal_extras()
        ui.label("Removed applicators").classes("text-2xl font-semibold")
        self.removed = ui.column().classes("w-full gap-2").props("data-testid=removed-list")
        ui.label("Single seeds").classes("text-2xl font-semibold")
        if not self.locked:
            self._draw_single_seed_controls()
        self.seeds = ui.column().classes("w-full gap-2").props("data-testid=single-seed-list")
        ui.label("Removal form").classes("text-2xl font-semibold")
        self._draw_form(view.removal)
        self.show(view)

    # --- drawing --------------------------------------------------------------------------------
    def show(self, view: lookups.RemovalView) -> None:
        """Redraw the counts, the groups and the two lists from a fresh read (a removal has a few dozen)."""
        self.view = view
        c = view.counts
        self.counts_line.text = f"Seeds removed: {c.removed} of {c.deployed} deployed"
        self.counts_detail.text = (
            f"{c.removed_with_applicators} with applicators, {c.single_seeds} single seed(s)"
        )
        self.gap_line.text = (
            "No difference to explain."
            if c.gap == 0
            else f"Difference to explain in the removal form: {abs(c.gap)} seed(s) "
            + ("not removed" if c.gap > 0 else "more than deployed")
        )
        self.groups.clear()
        with self.groups:
            if not view.groups:
                ui.label("No applicator of the insertion deployed seeds.").classes("text-lg")
            for group in view.groups:
                testid = f"group-{group.capacity}"
                with (
                    ui.card().classes("w-full p-3").props(f"data-testid={testid}"),
                    ui.row().classes("w-full items-center gap-4"),
                ):
                    ui.label(f"Applicators of {group.capacity} seeds").classes("text-xl font-bold")
                    ui.label(f"Removed {group.removed} of {group.total}").classes("text-lg").props(
                        "data-testid=group-removed"
                    )
                    ui.label(f"{group.removed_seeds} of {group.deployed_seeds} seeds").classes("text-lg")
                    ui.space()
                    if not self.locked:
                        button = ui.button(
                            "Remove one",
                            icon="remove_circle",
                            on_click=lambda g=group.capacity: self.remove_one(g),
                        ).classes(BUTTON)
                        button.props(f"color=primary data-testid=remove-{group.capacity}")
                        button.set_enabled(group.remaining > 0)
        self.removed.clear()
        with self.removed:
            if not view.removed:
                ui.label("None yet.").classes("text-lg")
            for a in view.removed:
                with (
                    ui.row()
                    .classes("w-full items-center gap-4")
                    .props(f"data-testid=removed-{a['serial_number']}")
                ):
                    ui.label(a["serial_number"]).classes("text-lg font-mono font-bold")
                    ui.label(f"{a['deployed_seeds']} seeds").classes("text-lg")
                    ui.label(f"{a['removal_time'].astimezone(self.station.settings.zone):%H:%M}")
                    if a["removal_comment"]:
                        ui.label(a["removal_comment"]).classes("text-lg")
                    if a["removal_photo_path"]:
                        ui.icon("photo_camera", size="sm")
                    receipt_badge("applicators", a["id"])
        self.seeds.clear()
        with self.seeds:
            if not view.single_seeds:
                ui.label("None.").classes("text-lg")
            for seed in view.single_seeds:
                with ui.row().classes("items-center gap-4").props("data-testid=single-seed"):
                    ui.label(f"{seed['removed_at'].astimezone(self.station.settings.zone):%H:%M}")
                    ui.label(lookups.seed_reason_label(seed["reason"], seed["reason_text"])).classes(
                        "text-lg"
                    )
                    receipt_badge("removed_seeds", seed["id"])
        self._update_sum()

    def _draw_removal_extras(self) -> None:
        with ui.row().classes("w-full items-center gap-4"):
            self.removal_comment = (
                ui.input("Comment for the next applicator removed (optional)")
                .props("outlined data-testid=removal-comment")
                .classes("grow text-lg")
            )
            self.photo_button = (
                ui.button(
                    "Photo for the next removal", icon="photo_camera", on_click=self._take_removal_photo
                )
                .classes(BUTTON)
                .props("outline data-testid=removal-photo")
            )

    def _draw_single_seed_controls(self) -> None:
        with ui.card().classes("w-full p-3 gap-2"):
            self.seed_reason = ui.radio(REASONS, value=SeedRemovalReason.APPLICATOR_RUPTURE.value).props(
                "inline size=lg data-testid=seed-reason"
            )
            self.seed_text = ui.input("Description (for Other)").props("outlined data-testid=seed-text")
            ui.button("Remove one seed", icon="remove", on_click=self.remove_seed).classes(BUTTON).props(
                "color=primary data-testid=remove-seed"
            )

    def _draw_form(self, removal: dict[str, Any]) -> None:
        disabled = " disable" if self.locked else ""
        with ui.card().classes("w-full p-4 gap-3").props("data-testid=removal-form"):
            default_day = removal["removal_date"] or removal["date"]
            self.form_date = ui.input("Removal date (YYYY-MM-DD)", value=default_day.isoformat()).props(
                f"outlined type=date data-testid=form-date{disabled}"
            )
            same_day = removal["removal_all_same_day"]
            self.form_same_day = ui.radio(
                {"yes": "Everything was removed that day", "no": "Not everything was removed that day"},
                value=None if same_day is None else ("yes" if same_day else "no"),
            ).props(f"size=lg data-testid=form-same-day{disabled}")
            with (
                ui.row()
                .classes("w-full gap-4")
                .bind_visibility_from(self.form_same_day, "value", backward=lambda v: v == "no")
            ):
                other_day = removal["removal_other_date"]
                self.form_other_date = ui.input(
                    "Other removal date (YYYY-MM-DD)", value=other_day.isoformat() if other_day else ""
                ).props(f"outlined type=date data-testid=form-other-date{disabled}")
                self.form_other_reason = (
                    ui.input("Why not everything that day", value=removal["removal_other_reason"] or "")
                    .props(f"outlined data-testid=form-other-reason{disabled}")
                    .classes("grow")
                )
            ui.label("If the seeds removed differ from those deployed, explain the difference:").classes(
                "text-lg"
            )
            self.form_amounts: dict[str, ui.number] = {}
            with ui.row().classes("w-full gap-4"):
                for key, column, label in CATEGORIES:
                    self.form_amounts[key] = ui.number(
                        label, value=removal[column] or 0, min=0, precision=0, on_change=self._update_sum
                    ).props(f"outlined data-testid=form-{key}{disabled}")
            self.form_other_text = ui.input(
                "Description of 'other'", value=removal["gap_other_text"] or ""
            ).props(f"outlined data-testid=form-other-text{disabled}")
            self.sum_line = ui.label().classes("text-lg font-semibold").props("data-testid=form-sum")
            self.form_problem = ui.label().classes("text-lg text-red-800").props("data-testid=form-problem")
            if not self.locked:
                ui.button("Save the removal form", icon="save", on_click=self.save_form).classes(
                    BUTTON
                ).props("color=primary data-testid=form-save")

    def _update_sum(self) -> None:
        """The sum check, live: what the categories explain against the difference to explain."""
        if not hasattr(self, "view") or not hasattr(self, "sum_line"):
            return
        gap = abs(self.view.counts.gap)
        explained = sum(int(field.value or 0) for field in self.form_amounts.values())
        if explained == gap:
            self.sum_line.text = f"Explained {explained} of {gap}: the sum matches."
            self.sum_line.classes(replace="text-lg font-semibold text-green-800")
        else:
            self.sum_line.text = f"Explained {explained} of {gap}: the categories must add up to {gap}."
            self.sum_line.classes(replace="text-lg font-semibold text-red-800")

    # --- actions --------------------------------------------------------------------------------
    async def remove_one(self, capacity: int) -> None:
        comment = self.removal_comment.value or None
        photo_path = None
        try:
            if self.pending_photo is not None:
                photo_path = await run.io_bound(
                    store_photo, self.station, self.removal_id, f"removal-{capacity}", self.pending_photo
                )
            change = await run.io_bound(
                remove_applicator,
                self.station,
                self.actor,
                removal_id=self.removal_id,
                capacity=capacity,
                comment=comment,
                photo_path=photo_path,
            )
        except StoreError as refusal:
            if photo_path is not None:
                await run.io_bound(discard_photo, self.station, photo_path)
            self.notice.stop(f"No applicator of {capacity} seeds was removed", refusal.message)
            return
        self.removal_comment.value = ""
        self.pending_photo = None
        self.photo_button.text = "Photo for the next removal"
        record = change.record
        self.notice.done(
            f"Applicator {record['serial_number']} removed",
            f"{record['deployed_seeds']} seeds deployed from it are counted as removed.",
        )
        await self.refresh()

    async def _take_removal_photo(self) -> None:
        content = await take_photo("Photo of the next applicator removed")
        if content is not None:
            self.pending_photo = content
            self.photo_button.text = "Photo ready for the next removal"

    async def remove_seed(self) -> None:
        try:
            await run.io_bound(
                remove_single_seed,
                self.station,
                self.actor,
                removal_id=self.removal_id,
                reason=self.seed_reason.value,
                reason_text=self.seed_text.value or None,
            )
        except StoreError as refusal:
            self.notice.stop("The seed was not recorded", refusal.message)
            return
        self.seed_text.value = ""
        self.notice.done("Single seed removed", REASONS[self.seed_reason.value].replace(" (describe)", ""))
        await self.refresh()

    async def save_form(self) -> None:
        self.form_problem.text = ""
        try:
            removal_date = _parse_day(self.form_date.value, "The removal date")
            same_day = self.form_same_day.value
            if same_day is None:
                raise _FormProblem("Say whether everything was removed that day.")
            other_date = None
            if same_day == "no" and self.form_other_date.value:
                other_date = _parse_day(self.form_other_date.value, "The other removal date")
        except _FormProblem as problem:
            self.form_problem.text = str(problem)
            return
        amounts = {key: int(field.value or 0) for key, field in self.form_amounts.items()}
        try:
            await run.io_bound(
                fill_removal_form,
                self.station,
                self.actor,
                removal_id=self.removal_id,
                removal_date=removal_date,
                all_same_day=same_day == "yes",
                other_date=other_date,
                other_reason=self.form_other_reason.value or None,
                other_text=self.form_other_text.value or None,
                **amounts,
            )
        except StoreError as refusal:
            self.form_problem.text = refusal.message
            self.notice.stop("The removal form was not saved", refusal.message)
            return
        self.notice.done("Removal form saved", "The removal can now be finalised.")
        await self.refresh()

    async def refresh(self) -> None:
        view = await run.io_bound(lookups.removal_view, self.station, self.actor, self.removal_id)
        if view is not None:  # None: the station is shutting down
            self.show(view)


class _FormProblem(ValueError):
    """A form field the page itself cannot turn into a value (not a clinical rule)."""


def _parse_day(text: str | None, label: str) -> date:
    try:
        return date.fromisoformat((text or "").strip())
    except ValueError:
        raise _FormProblem(f"{label} is not a date (YYYY-MM-DD).") from None
