"""The insertion page (and a continuation's): scan applicators, move their statuses, watch the progress.

Keyboard and scanner first: the scan field holds the focus, a USB scanner types a label and Enter,
and the outcome is said at once in words above the list. Every rule is the store's (scanning.py,
applicators.py): the page shows what the store answers and asks what the store asks. Database work
runs through `run.io_bound`, and the list is updated one row at a time, never rebuilt.
"""

from typing import Any

from nicegui import background_tasks, run, ui
from nicegui.events import GenericEventArguments

from store import lookups
from store.applicators import change_status, create_package
from store.continuation import reusable_applicators, reuse_applicator
from store.enums import ApplicatorStatus, Indication
from store.errors import StoreError
from store.photos import attach_applicator_photo
from store.scanning import Confirmation, ScanOutcome, ScanResult, scan_applicator
from store.station import Actor, Station
from ui.components.applicator_list import ApplicatorList
from ui.components.applicator_row import ApplicatorRow
from ui.components.dialogs import confirm
from ui.components.notice import Notice, Tone
from ui.components.photos import take_photo
from ui.components.progress import ProgressPanel
from ui.components.status_dialog import status_dialog
from ui.frame import BUTTON, frame
from ui.session import current_station, require_actor

# What each stopped or answered scan is called, above the store's own explanation.
OUTCOME_TITLES: dict[ScanOutcome, tuple[Tone, str]] = {
    ScanOutcome.ALREADY_SCANNED: (Tone.STOP, "Already scanned: nothing saved"),
    ScanOutcome.USED_ELSEWHERE: (Tone.STOP, "Stop: this applicator is used elsewhere"),
    ScanOutcome.EXPIRED: (Tone.STOP, "Stop: expired applicator"),
    ScanOutcome.NOT_ALLOWED: (Tone.STOP, "Stop: not allowed for this treatment"),
    ScanOutcome.ERROR: (Tone.STOP, "Cannot record this scan"),
    ScanOutcome.WRONG_TREATMENT: (Tone.STOP, "Not recorded: meant for another patient"),
    ScanOutcome.PREVIOUSLY_NO_USE: (Tone.STOP, "Not recorded: previously recorded as not used"),
}
QUESTION_TITLES: dict[Confirmation, str] = {
    Confirmation.WRONG_TREATMENT: "Wrong patient? This applicator was meant for another patient",
    Confirmation.PREVIOUSLY_NO_USE: "This applicator was recorded as not used before",
    Confirmation.STALE_CACHE: "The validation data is out of date",
}
CONFIRM_LABELS: dict[Confirmation, str] = {
    Confirmation.WRONG_TREATMENT: "I am sure: record it for this patient",
    Confirmation.PREVIOUSLY_NO_USE: "Confirm and continue",
    Confirmation.STALE_CACHE: "Record it anyway",
}


@ui.page("/treatment/{treatment_id}")
async def insertion_page(treatment_id: str) -> None:
    actor = require_actor()
    if actor is None:
        return
    station = current_station()
    try:
        view = await run.io_bound(lookups.insertion_view, station, actor, treatment_id)
    except StoreError as refusal:
        with frame("Insertion"):
            ui.label(refusal.message).classes("text-xl text-red-800").props("data-testid=page-refusal")
        return
    leftovers: list[dict[str, Any]] = []
    if view.parent and not view.treatment["is_complete"]:
        leftovers = await run.io_bound(
            lambda: reusable_applicators(station, actor, treatment_id=treatment_id)
        )
    title = "Continuation" if view.parent else "Insertion"
    with frame(title, treatment=view.treatment):
        InsertionPage(station, actor, view, leftovers=leftovers)


class InsertionPage:
    def __init__(
        self,
        station: Station,
        actor: Actor,
        view: lookups.InsertionView,
        *,
        leftovers: list[dict[str, Any]] | None = None,
    ) -> None:
        self.station = station
        self.actor = actor
        self.treatment = view.treatment
        self.treatment_id: str = view.treatment["id"]
        self.indication = Indication(view.treatment["indication"])
        self.locked = bool(view.treatment["is_complete"])
        self.packages = dict(view.packages)
        self.rows: dict[str, ApplicatorRow] = {}
        self.serials: set[str] = set()
        self._draw_summary(view)
        if self.locked:
            self.scan_field = None
            self.notice = Notice()
        else:
            self._draw_scan_controls()
            if leftovers:
                self._draw_leftovers(leftovers)
        self.progress = ProgressPanel(view.progress)
        ui.label("Applicators").classes("text-2xl font-semibold")
        self.list = ApplicatorList(
            existing=len(view.applicators), empty_text="No applicator recorded yet. Scan the first one."
        )
        # Oldest first into a list that shows the newest first: the row just scanned is the one on top.
        for record in view.applicators:
            self._add_row(record)

    # --- layout ---------------------------------------------------------------------------------
    def _draw_summary(self, view: lookups.InsertionView) -> None:
        t = view.treatment
        with ui.row().classes("w-full items-center gap-6 text-lg flex-wrap"):
            ui.label(f"Procedure: {t['indication']}").props("data-testid=treatment-indication")
            ui.label(f"Surgeon: {t['surgeon'] or 'not recorded'}")
            if view.parent:
                ui.label(f"Continues the insertion of {view.parent['date']:%d %b %Y}").props(
                    "data-testid=continuation-of"
                )
            if t["needs_reconciliation"]:
                ui.badge("Emergency: no Priority order", color="orange-9").classes("text-base")
            ui.space()
            if self.locked:
                ui.label("Finalised and locked: nothing can be added or changed.").classes("font-bold").props(
                    "data-testid=locked"
                )
                ui.button(
                    "Signature and reports",
                    icon="description",
                    on_click=lambda: ui.navigate.to(f"/finalise/{self.treatment_id}"),
                ).classes(BUTTON)
            else:
                ui.button(
                    "Finalise",
                    icon="task_alt",
                    on_click=lambda: ui.navigate.to(f"/finalise/{self.treatment_id}"),
                ).classes(BUTTON).props("color=positive data-testid=go-finalise")

    def _draw_scan_controls(self) -> None:
        with ui.card().classes("w-full p-4 gap-3"):
            self.scan_field = (
                ui.input("Scan the applicator, or type its serial number and press Enter")
                .props(
                    "outlined autofocus clearable input-class=text-2xl "
                    "autocomplete=off spellcheck=false data-testid=scan-input"
                )
                .classes("w-full text-2xl")
            )
            # The field keeps the focus: when it loses it to nothing (a click on the page, a closed
            # dialog), it takes it back; a dialog's own fields keep theirs.
            self.scan_field.on(
                "blur",
                js_handler=(
                    "(e) => setTimeout(() => { const a = document.activeElement;"
                    " if (!a || a === document.body) e.target.focus(); }, 0)"
                ),
            )
            # The keystroke carries the field's text itself, so the scan never depends on the order in
            # which the browser's value updates and the Enter reach the station.
            self.scan_field.on("keydown.enter", self._on_enter, js_handler="(e) => emit(e.target.value)")
            with ui.row().classes("gap-4"):
                ui.button("Choose from list", icon="list", on_click=self._choose_from_list).classes(
                    BUTTON
                ).props("outline data-testid=choose-from-list")
                if self.indication != Indication.SKIN:
                    ui.button("Load a package of 4", icon="inventory_2", on_click=self._make_package).classes(
                        BUTTON
                    ).props("outline data-testid=make-package")
            self.notice = Notice()
            self.suggestion_box = (
                ui.row().classes("gap-3 items-center flex-wrap").props("data-testid=suggestions")
            )

    def _draw_leftovers(self, leftovers: list[dict[str, Any]]) -> None:
        """The parent's opened or loaded applicators, which this continuation may use without a scan."""
        with ui.card().classes("w-full p-4 gap-2").props("data-testid=leftovers"):
            ui.label("Opened or loaded applicators of the earlier insertion").classes("text-xl font-semibold")
            for a in leftovers:
                status = ApplicatorStatus(a["status"]).label
                ui.button(
                    f"Use {a['serial_number']} ({status}, {a['seed_quantity']} seeds) here",
                    icon="redo",
                    on_click=lambda e, a=a: self._reuse(a, e.sender),
                ).classes(BUTTON).props(f"outline no-caps data-testid=reuse-{a['serial_number']}")

    async def _reuse(self, original: dict[str, Any], button: ui.element) -> None:
        serial = original["serial_number"]
        try:
            change = await run.io_bound(
                reuse_applicator,
                self.station,
                self.actor,
                treatment_id=self.treatment_id,
                parent_applicator_id=original["id"],
            )
        except StoreError as refusal:
            self.notice.stop(f"Applicator {serial} was not taken over", refusal.message)
            self._focus()
            return
        button.delete()
        self._add_row(change.record)
        status = ApplicatorStatus(change.record["status"]).label.lower()
        self.notice.done(f"Applicator {serial} taken over", f"It continues here, {status}.")
        self._focus()
        await self.refresh_progress()

    # --- scanning -------------------------------------------------------------------------------
    async def _on_enter(self, event: GenericEventArguments) -> None:
        assert self.scan_field is not None
        raw = event.args if isinstance(event.args, str) else (self.scan_field.value or "")
        # Cleared before the store answers, so the scanner's next label starts in an empty field.
        self.scan_field.value = ""
        await self.scan(raw)

    async def scan(self, raw: str) -> ScanResult | None:
        """One scan, with every question the store asks answered by the person."""
        self.suggestion_box.clear()
        confirmed: frozenset[Confirmation] = frozenset()
        while True:
            try:
                result = await run.io_bound(
                    scan_applicator,
                    self.station,
                    self.actor,
                    treatment_id=self.treatment_id,
                    raw=raw,
                    confirmed=confirmed,
                )
            except StoreError as refusal:
                self.notice.stop("Cannot record this scan", refusal.message)
                self._focus()
                return None
            if result.saved:
                self._recorded(result, after_confirmation=bool(confirmed))
                break
            if result.needs_confirmation is None:
                self._stopped(result, raw)
                break
            question = result.needs_confirmation
            agreed = await confirm(
                QUESTION_TITLES[question], result.message, confirm_label=CONFIRM_LABELS[question]
            )
            if not agreed:
                tone, title = OUTCOME_TITLES.get(result.outcome, (Tone.STOP, "Not recorded"))
                self.notice.show(tone, title, result.message)
                break
            confirmed |= {question}
        self._focus()
        return result

    def _recorded(self, result: ScanResult, *, after_confirmation: bool) -> None:
        assert result.applicator is not None
        self._add_row(result.applicator)
        title = "Recorded after confirmation" if after_confirmation else "Applicator recorded"
        tone = Tone.WARN if result.warnings or after_confirmation else Tone.DONE
        self.notice.show(tone, title, result.message)
        # After the row has gone out; not a ui.timer: adding and removing a timer changes the children of
        # the scan card, which makes the browser re-render the page (ui/components/render_boundary.py).
        background_tasks.create(self.refresh_progress(), name="progress after a scan")

    def _stopped(self, result: ScanResult, raw: str) -> None:
        tone, title = OUTCOME_TITLES[result.outcome]
        self.notice.show(tone, title, result.message)
        typed = result.reading is not None and result.reading.gtin is None
        if typed and result.outcome in (ScanOutcome.NOT_ALLOWED, ScanOutcome.ERROR):
            background_tasks.create(self._suggest(raw), name="suggestions for a typed serial")

    async def _suggest(self, typed: str) -> None:
        found = await run.io_bound(lookups.suggestions, self.station, self.actor, self.treatment_id, typed)
        self.suggestion_box.clear()
        if not found:
            return
        with self.suggestion_box:
            ui.label("Did you mean:").classes("text-lg")
            for serial in found:
                ui.button(serial, on_click=lambda s=serial: self.scan(s)).classes(BUTTON).props(
                    f"outline no-caps data-testid=suggestion-{serial}"
                )

    async def _choose_from_list(self) -> None:
        choices = await run.io_bound(lookups.inventory_choices, self.station, self.actor, self.treatment_id)
        with ui.dialog() as dialog, ui.card().classes("w-[48rem] max-w-full gap-3 p-6"):
            dialog.props("data-testid=choose-dialog")
            ui.label("Choose the applicator").classes("text-2xl font-bold")
            if not choices:
                ui.label("No applicator of this patient's order is left to record.").classes("text-lg")
            with ui.column().classes("w-full gap-2 max-h-[60vh] overflow-auto"):
                for item in choices:
                    expiry = f", expires {item.expiry}" if item.expiry else ""
                    seeds = "seed count unknown" if item.seeds is None else f"{item.seeds} seeds"
                    ui.button(
                        f"{item.serial} — {item.applicator_type or 'applicator'}, {seeds}{expiry}",
                        on_click=lambda s=item.serial: dialog.submit(s),
                    ).classes(f"{BUTTON} w-full").props(
                        f"outline no-caps align=left data-testid=choice-{item.serial}"
                    )
            ui.button("Cancel", on_click=lambda: dialog.submit(None)).classes(BUTTON).props("flat")
        dialog.open()
        serial = await dialog
        dialog.delete()
        if serial:
            await self.scan(serial)
        else:
            self._focus()

    # --- the list -------------------------------------------------------------------------------
    def _add_row(self, record: dict[str, Any]) -> None:
        with self.list.slot_for_next_row():
            row = ApplicatorRow(
                record,
                indication=self.indication,
                locked=self.locked,
                package=self.packages.get(record.get("package_id") or ""),
                on_move=self._move,
                on_photo=self._photo,
            )
        self.list.placed(row.card)
        self.rows[row.id] = row
        self.serials.add(record["serial_number"])

    async def _move(self, row: ApplicatorRow, target: ApplicatorStatus) -> None:
        async def save(comment: str | None, deployed: int | None, permanent: bool) -> Any:
            return await run.io_bound(
                change_status,
                self.station,
                self.actor,
                applicator_id=row.id,
                status=target,
                comment=comment,
                deployed_seeds=deployed,
                confirm_permanent=permanent,
            )

        serial = row.record["serial_number"]
        try:
            if target.is_terminal or target.needs_comment or target is ApplicatorStatus.FAULTY:
                change = await status_dialog(row.record, target, save)
                if change is None:
                    self.notice.show(
                        Tone.INFO, "Nothing changed", f"Applicator {serial} stays {row.status.label}."
                    )
                    self._focus()
                    return
            else:
                change = await save(None, None, False)
        except StoreError as refusal:
            self.notice.stop(f"Applicator {serial} was not changed", refusal.message)
            self._focus()
            return
        row.update(change.record)
        self.notice.done(f"Applicator {serial}: {target.label}", self._move_text(change.record))
        self._focus()
        await self.refresh_progress()

    @staticmethod
    def _move_text(record: dict[str, Any]) -> str:
        status = ApplicatorStatus(record["status"])
        if status.is_terminal:
            return f"{status.label} is saved and final; {record['deployed_seeds']} seeds deployed."
        return f"Saved: the applicator is {status.label.lower()}."

    async def _photo(self, row: ApplicatorRow) -> None:
        serial = row.record["serial_number"]
        content = await take_photo(f"Photo of applicator {serial}")
        if content is None:
            self._focus()
            return
        try:
            change = await run.io_bound(
                attach_applicator_photo,
                self.station,
                self.actor,
                treatment_id=self.treatment_id,
                applicator_id=row.id,
                content=content,
            )
        except StoreError as refusal:
            self.notice.stop(f"The photo of applicator {serial} was not saved", refusal.message)
        else:
            row.update(change.record)
            self.notice.done(f"Photo of applicator {serial} saved", change.record["photo_path"])
        self._focus()

    async def _make_package(self) -> None:
        opened = [
            r
            for r in self.rows.values()
            if r.status is ApplicatorStatus.OPENED and not r.record["package_id"]
        ]
        with ui.dialog() as dialog, ui.card().classes("w-[40rem] max-w-full gap-3 p-6"):
            dialog.props("data-testid=package-dialog")
            ui.label("Load a package: choose 4 opened applicators of the same capacity").classes(
                "text-2xl font-bold"
            )
            problem = ui.label().classes("text-lg text-red-800").props("data-testid=package-problem")
            boxes = {
                row.id: ui.checkbox(f"{row.record['serial_number']} ({row.record['seed_quantity']} seeds)")
                .props(f"data-testid=package-pick-{row.record['serial_number']}")
                .classes("text-lg")
                for row in opened
            }
            if not opened:
                ui.label("No opened applicator is waiting for a package.").classes("text-lg")

            async def load() -> None:
                chosen = [applicator_id for applicator_id, box in boxes.items() if box.value]
                try:
                    changes = await run.io_bound(
                        create_package,
                        self.station,
                        self.actor,
                        treatment_id=self.treatment_id,
                        applicator_ids=chosen,
                    )
                except StoreError as refusal:
                    problem.text = refusal.message
                    return
                dialog.submit(changes)

            with ui.row().classes("w-full justify-end gap-4"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).classes(BUTTON).props("flat")
                ui.button("Load package", on_click=load).classes(BUTTON).props(
                    "color=primary data-testid=package-load"
                )
        dialog.open()
        changes = await dialog
        dialog.delete()
        if changes:
            package, *members = changes
            label = package.record["label"]
            self.packages[package.record["id"]] = label
            for change in members:
                self.rows[change.record["id"]].update(change.record, package=label)
            serials = ", ".join(c.record["serial_number"] for c in members)
            self.notice.done(f"Package {label} loaded", f"Loaded: {serials}.")
            await self.refresh_progress()
        self._focus()

    async def refresh_progress(self) -> None:
        progress = await run.io_bound(lookups.progress, self.station, self.treatment_id)
        if progress is not None:  # None: the station is shutting down
            self.progress.show(progress)

    def _focus(self) -> None:
        if self.scan_field is not None:
            self.scan_field.run_method("focus")
