"""/ and /today: the site's treatments for yesterday, today and tomorrow, and the ways to start one.

The list comes from the local store (treatments recorded here, with their progress) and the validation
cache (orders not started yet). Four big actions open a dialog each: an insertion from the day's
orders, an emergency insertion without an order, a removal (find the finalised insertion; outside the
13-21 day window the user confirms), a continuation (a finalised insertion of the last 24 hours). Every
refusal of the store command is shown at the dialog's field; success opens the procedure page.
"""

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from nicegui import ui

from store.enums import Indication
from store.errors import ConfirmationRequired, StoreError
from store.station import Actor, Station
from store.treatments import EmergencyPatient, start_continuation, start_insertion, start_removal
from store.worklist import (
    InsertionChoice,
    OrderChoice,
    WorkItem,
    continuable,
    day_list,
    finalised_insertions,
    order_choices,
    sites_for,
    surgeon_names,
)
from ui.components.render_boundary import RenderBoundary
from ui.frame import BUTTON, frame, receipt_badge
from ui.offloop import off_loop
from ui.session import BrowserSession, current_session, current_station, require_actor

INPUT = "w-full text-lg"
DAY_WORDS = ("Yesterday", "Today", "Tomorrow")
PAGE_ITEMS = 20  # treatments and orders drawn per day at first, and per "show more"


@ui.page("/")
@ui.page("/today")
async def today_page() -> None:
    actor = require_actor()
    session = current_session()
    if actor is None or session is None:
        return
    station = current_station()
    sites = await off_loop(sites_for, station, actor)
    if session.site not in sites:
        session.site = sites[0] if sites else None
    with frame("Today"):
        TodayPage(station, actor, session, sites)


def treatment_path(treatment_id: str, kind: str) -> str:
    """The procedure page of a treatment (the pages engineer's routes)."""
    return f"/removal/{treatment_id}" if kind == "removal" else f"/treatment/{treatment_id}"


class TodayPage:
    def __init__(self, station: Station, actor: Actor, session: BrowserSession, sites: list[str]) -> None:
        self.station = station
        self.actor = actor
        self.session = session
        self.sites = sites
        today = station.local_today()
        self.days = [today - timedelta(days=1), today, today + timedelta(days=1)]
        if not sites:
            ui.label(
                "This station has no site yet: it needs its validation data from the cloud "
                "(it syncs once online)."
            ).classes("text-xl text-red-800").props("data-testid=today-no-site")
            return
        with ui.row().classes("w-full items-center gap-4 flex-wrap"):
            if len(sites) > 1:
                ui.select(sites, value=session.site, label="Site", on_change=self._site_changed).props(
                    "outlined data-testid=today-site"
                ).classes("text-lg min-w-[12rem]")
            else:
                ui.label(f"Site {sites[0]}").classes("text-xl font-semibold")
            ui.space()
            self._action("Start insertion", "play_arrow", "start-insertion", self.insertion_dialog, "primary")
            self._action(
                "Emergency insertion", "emergency", "start-emergency", self.emergency_dialog, "negative"
            )
            self._action("Start removal", "content_cut", "start-removal", self.removal_dialog, "secondary")
            self._action(
                "Continue an insertion", "redo", "start-continuation", self.continuation_dialog, "accent"
            )
        self.lists = ui.column().classes("w-full gap-6").props("data-testid=today-lists")
        ui.timer(0.05, self.refresh, once=True)

    def _action(self, text: str, icon: str, testid: str, handler: Callable[[], Any], color: str) -> None:
        ui.button(text, icon=icon, on_click=handler).props(
            f"size=lg color={color} data-testid={testid}"
        ).classes(BUTTON)

    @property
    def site(self) -> str:
        return self.session.site or self.sites[0]

    async def _site_changed(self, event: Any) -> None:
        self.session.site = event.value
        await self.refresh()

    # --- the list -----------------------------------------------------------------------------------
    async def refresh(self) -> None:
        items = await off_loop(day_list, self.station, self.actor, self.site, self.days)
        self.lists.clear()
        with self.lists:
            for word, day in zip(DAY_WORDS, self.days, strict=True):
                on_day = [i for i in items if i.day == day]
                with ui.column().classes("w-full gap-2").props(f"data-testid=day-{word.lower()}"):
                    ui.label(f"{word}, {day:%A %d %B %Y}").classes("text-xl font-semibold")
                    if not on_day:
                        ui.label("Nothing scheduled or recorded.").classes("text-lg text-slate-500")
                    else:
                        self._day_items(word.lower(), on_day)

    def _day_items(self, word: str, items: list[WorkItem]) -> None:
        """The first `PAGE_ITEMS` of a day, then a button that shows the next ones.

        A day with hundreds of orders (a station that holds a whole hospital's schedule) would otherwise
        draw thousands of elements at once and free them all again when the page closes: about 300 ms
        of the station's event loop each time, and a long garbage-collector pass (docs/performance.md).
        """
        with RenderBoundary().classes("w-full"):  # "show more" re-renders this day only, in the browser
            shown = ui.column().classes("w-full gap-2")
        more = ui.button(icon="expand_more").props(f"flat size=lg no-caps data-testid=more-{word}")
        more.classes(BUTTON)
        drawn = 0

        def show_more() -> None:
            nonlocal drawn
            with shown:
                for item in items[drawn : drawn + PAGE_ITEMS]:
                    self._item(item)
            drawn = min(len(items), drawn + PAGE_ITEMS)
            left = len(items) - drawn
            more.text = f"Show {min(left, PAGE_ITEMS)} more ({left} not shown)"
            more.set_visibility(left > 0)

        more.on_click(show_more)
        show_more()

    def _item(self, item: WorkItem) -> None:
        card = ui.card().classes("w-full").props(f"data-testid=item-{item.treatment_id or item.order_name}")
        with card, ui.row().classes("w-full items-center gap-4 flex-wrap"):
            with ui.column().classes("gap-0 min-w-[16rem]"):
                ui.label(item.patient_label or "Name not recorded").classes("text-xl font-bold")
                ui.label(f"ID {item.subject_id or '?'} · {item.indication}").classes("text-base")
            with ui.column().classes("gap-0"):
                kind = {"insertion": "Insertion", "removal": "Removal", "order": "Insertion"}[item.kind]
                if item.continuation:
                    kind = "Continuation"
                if item.emergency:
                    kind += " (emergency, no order)"
                ui.label(kind).classes("text-lg")
                ui.label(item.status).classes("text-lg font-semibold")
            if item.kind != "order":
                ui.label(_progress_words(item)).classes("text-lg")
            ui.space()
            if item.treatment_id is not None:
                receipt_badge("treatments", item.treatment_id)
                path = treatment_path(item.treatment_id, item.kind)
                ui.button("Open", icon="open_in_new", on_click=lambda p=path: ui.navigate.to(p)).props(
                    f"size=lg data-testid=open-{item.treatment_id}"
                ).classes(BUTTON)
            elif item.order_name is not None:
                ui.button(
                    "Start",
                    icon="play_arrow",
                    on_click=lambda i=item: self.insertion_dialog(day=i.day, order=i.order_name),
                ).props(f"size=lg data-testid=start-{item.order_name}").classes(BUTTON)

    # --- start an insertion from an order -------------------------------------------------------------
    async def insertion_dialog(self, day: date | None = None, order: str | None = None) -> None:
        surgeons = await off_loop(surgeon_names, self.station, self.site)
        with (
            ui.dialog().props("data-testid=insertion-dialog") as dialog,
            ui.card().classes("w-[40rem] gap-4"),
        ):
            ui.label("Start an insertion").classes("text-2xl font-semibold")
            site = self._site_field()
            when = self._day_field(day or self.days[1])
            patient = ui.select({}, label="Patient (from the day's orders)").props(
                "outlined data-testid=insertion-order"
            )
            patient.classes(INPUT)
            surgeon = ui.input("Surgeon", autocomplete=surgeons).props(
                "outlined data-testid=insertion-surgeon"
            )
            surgeon.classes(INPUT)

            async def load_orders() -> None:
                choices = await off_loop(order_choices, self.station, self.actor, site.value, when.value)
                patient.options = {c.order_name: _order_words(c) for c in choices}
                patient.value = order if order in patient.options else None
                patient.update()
                if not choices:
                    patient.error = (
                        "No order at this site on this day: choose another day, or an emergency insertion."
                    )
                else:
                    patient.error = None

            site.on_value_change(load_orders)
            when.on_value_change(load_orders)
            await load_orders()

            async def start() -> None:
                fields = {"site": site, "date": when, "order": patient, "surgeon": surgeon}
                _clear(fields)
                if not patient.value:
                    patient.error = "Choose the patient's order."
                    return
                call = lambda: start_insertion(  # noqa: E731
                    self.station,
                    self.actor,
                    site=site.value,
                    day=when.value,
                    surgeon=surgeon.value or "",
                    order_names=str(patient.value).split("+"),
                )
                await self._start(dialog, call, fields, kind="insertion")

            self._buttons(dialog, "Start insertion", start, "insertion-start")
        dialog.open()

    # --- emergency insertion ----------------------------------------------------------------------------
    def emergency_dialog(self) -> None:
        with (
            ui.dialog().props("data-testid=emergency-dialog") as dialog,
            ui.card().classes("w-[40rem] gap-3"),
        ):
            ui.label("Emergency insertion (no order)").classes("text-2xl font-semibold")
            ui.label(
                "For a patient with no Priority order. The treatment is flagged and reconciled with Priority "
                "when the station syncs."
            ).classes("text-base")
            site = self._site_field()
            when = self._day_field(self.days[1])
            subject = ui.input("Patient identifier (hospital id)").props(
                "outlined data-testid=emergency-subject"
            )
            subject.classes(INPUT)
            label = ui.input("Patient name").props("outlined data-testid=emergency-patient")
            label.classes(INPUT)
            indication = ui.select(
                {i.value: i.value.capitalize() for i in Indication},
                value=Indication.UNKNOWN.value,
                label="Procedure",
            ).props("outlined data-testid=emergency-indication")
            indication.classes(INPUT)
            seeds = ui.number("Planned seeds (if known)", min=0, precision=0).props(
                "outlined data-testid=emergency-seeds"
            )
            seeds.classes(INPUT)
            activity = ui.number("Activity per seed, µCi (if known)", min=0).props(
                "outlined data-testid=emergency-activity"
            )
            activity.classes(INPUT)
            surgeon = ui.input("Surgeon").props("outlined data-testid=emergency-surgeon").classes(INPUT)

            async def start() -> None:
                fields = {
                    "site": site,
                    "date": when,
                    "subject_id": subject,
                    "patient_label": label,
                    "planned_seeds": seeds,
                    "activity_per_seed": activity,
                    "surgeon": surgeon,
                    "order": subject,
                }
                _clear(fields)
                patient = EmergencyPatient(
                    subject_id=subject.value or "",
                    patient_label=label.value or None,
                    indication=Indication(indication.value),
                    planned_seeds=None if seeds.value is None else int(seeds.value),
                    activity_per_seed=None if activity.value is None else float(activity.value),
                )
                call = lambda: start_insertion(  # noqa: E731
                    self.station,
                    self.actor,
                    site=site.value,
                    day=when.value,
                    surgeon=surgeon.value or "",
                    emergency=patient,
                )
                await self._start(dialog, call, fields, kind="insertion")

            self._buttons(dialog, "Start emergency insertion", start, "emergency-start")
        dialog.open()

    # --- removal ------------------------------------------------------------------------------------------
    def removal_dialog(self) -> None:
        with ui.dialog().props("data-testid=removal-dialog") as dialog, ui.card().classes("w-[44rem] gap-3"):
            ui.label("Start a removal").classes("text-2xl font-semibold")
            site = self._site_field()
            search = ui.input("Find the insertion: patient name or id").props(
                "outlined clearable autofocus data-testid=removal-search"
            )
            search.classes(INPUT)
            results = ui.column().classes("w-full gap-2").props("data-testid=removal-results")
            message = ui.label("").classes("text-lg text-red-800").props("data-testid=removal-message")

            async def find() -> None:
                found = await off_loop(
                    lambda: finalised_insertions(
                        self.station, self.actor, site.value, search=search.value or ""
                    )
                )
                results.clear()
                with results:
                    if not found:
                        ui.label("No finalised insertion found at this site.").classes("text-lg")
                    for choice in found:
                        self._insertion_choice(choice, lambda c=choice: choose(c), "Remove")

            async def choose(choice: InsertionChoice, confirmed: bool = False) -> None:
                message.text = ""
                call = lambda: start_removal(  # noqa: E731
                    self.station,
                    self.actor,
                    insertion_id=choice.treatment_id,
                    confirm_outside_window=confirmed,
                )
                try:
                    change = await off_loop(call)
                except ConfirmationRequired as question:
                    message.text = question.message
                    with results:
                        ui.button(
                            f"Confirm: remove from {choice.patient_label or choice.subject_id}",
                            icon="check",
                            on_click=lambda: choose(choice, True),
                        ).props("size=lg color=warning data-testid=removal-confirm").classes(BUTTON)
                    return
                except StoreError as refusal:
                    message.text = refusal.message
                    return
                dialog.close()
                ui.navigate.to(treatment_path(change.record["id"], "removal"))

            search.on("keydown.enter", find)
            search.on_value_change(find)
            site.on_value_change(find)
            ui.timer(0.05, find, once=True)
            ui.button("Close", on_click=dialog.close).props("flat size=lg").classes(BUTTON)
        dialog.open()

    # --- continuation -------------------------------------------------------------------------------------
    async def continuation_dialog(self) -> None:
        choices = await off_loop(continuable, self.station, self.actor, self.site)
        with (
            ui.dialog().props("data-testid=continuation-dialog") as dialog,
            ui.card().classes("w-[44rem] gap-3"),
        ):
            ui.label("Continue an insertion").classes("text-2xl font-semibold")
            ui.label(
                "A finalised insertion may be continued within 24 hours, for the same patient and site. "
                "Check the patient before continuing."
            ).classes("text-base")
            message = ui.label("").classes("text-lg text-red-800").props("data-testid=continuation-message")
            if not choices:
                ui.label("No insertion at this site was finalised in the last 24 hours.").classes("text-lg")

            async def choose(choice: InsertionChoice) -> None:
                message.text = ""
                try:
                    change = await off_loop(
                        lambda: start_continuation(self.station, self.actor, parent_id=choice.treatment_id)
                    )
                except StoreError as refusal:
                    message.text = refusal.message
                    return
                dialog.close()
                ui.navigate.to(treatment_path(change.record["id"], "insertion"))

            for choice in choices:
                self._insertion_choice(choice, lambda c=choice: choose(c), "Continue for")
            ui.button("Close", on_click=dialog.close).props("flat size=lg").classes(BUTTON)
        dialog.open()

    # --- shared pieces ------------------------------------------------------------------------------------
    def _insertion_choice(self, choice: InsertionChoice, on_click: Callable[[], Any], verb: str) -> None:
        elapsed = (self.station.local_today() - choice.day).days
        with ui.row().classes("w-full items-center gap-4 border rounded p-2"):
            with ui.column().classes("gap-0"):
                ui.label(choice.patient_label or "Name not recorded").classes("text-xl font-bold")
                ui.label(
                    f"ID {choice.subject_id or '?'} · inserted {choice.day:%d %b %Y} ({elapsed} days ago) · "
                    f"{choice.deployed_seeds} seeds deployed"
                ).classes("text-base")
            ui.space()
            if choice.has_removal and verb == "Remove":
                ui.label("Removal already started").classes("text-base")
            ui.button(
                f"{verb} {choice.patient_label or choice.subject_id}", icon="arrow_forward", on_click=on_click
            ).props(f"size=lg data-testid=choose-{choice.treatment_id}").classes(BUTTON)

    def _site_field(self) -> ui.select:
        field = ui.select(self.sites, value=self.site, label="Site").props("outlined data-testid=dialog-site")
        field.classes(INPUT)
        if len(self.sites) == 1:
            field.disable()  # a single-site user's site is fixed (domain.md)
        return field

    def _day_field(self, value: date) -> ui.radio:
        options = {day: f"{word} ({day:%d %b})" for word, day in zip(DAY_WORDS, self.days, strict=True)}
        return (
            ui.radio(options, value=value).props("inline size=lg data-testid=dialog-day").classes("text-lg")
        )

    def _buttons(self, dialog: ui.dialog, text: str, start: Callable[[], Any], testid: str) -> None:
        ui.label("").classes("text-lg text-red-800").props("data-testid=dialog-message")
        with ui.row().classes("w-full justify-end gap-3"):
            ui.button("Cancel", on_click=dialog.close).props("flat size=lg").classes(BUTTON)
            ui.button(text, icon="play_arrow", on_click=start).props(
                f"size=lg color=primary data-testid={testid}"
            ).classes(BUTTON)

    async def _start(
        self, dialog: ui.dialog, call: Callable[[], Any], fields: dict[str, Any], *, kind: str
    ) -> None:
        """Run a store command off the loop; a refusal goes to its field, success opens the page."""
        try:
            change = await off_loop(call)
        except StoreError as refusal:
            target = fields.get(refusal.field or "")
            if target is not None and hasattr(target, "error"):
                target.error = refusal.message
            else:  # a refusal of the whole request: said above the buttons
                for element in dialog.descendants():
                    if element.props.get("data-testid") == "dialog-message":
                        element.text = refusal.message  # type: ignore[attr-defined]
            return
        dialog.close()
        ui.navigate.to(treatment_path(change.record["id"], kind))


def _clear(fields: dict[str, Any]) -> None:
    for field in fields.values():
        if hasattr(field, "error"):
            field.error = None


def _order_words(choice: OrderChoice) -> str:
    seeds = f" · {choice.seeds} seeds" if choice.seeds is not None else ""
    started = " · already started" if choice.started else ""
    name = choice.patient_label or "Name not recorded"
    return f"{name} · {choice.order_name} · {choice.indication}{seeds}{started}"


def _progress_words(item: WorkItem) -> str:
    if item.kind == "removal":
        return f"{item.applicators} applicator(s)"
    planned = f" / {item.planned_seeds}" if item.planned_seeds is not None else ""
    percent = f" ({item.percent:.0f}%)" if item.percent is not None else ""
    return f"{item.deployed_seeds}{planned} seeds deployed{percent} · {item.applicators} applicator(s)"
