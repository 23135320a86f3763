"""/review: what waits for a person. Conflicts held by the sync rules, and changes the cloud refused.

Invariants 5 and 6: a field both sides changed that a rule may not decide (a safety field, a clock
past the skew threshold) is held here, never resolved automatically; a change the cloud refused is
quarantined and shown here, never dropped. Each item shows whose record it is (patient, id, site,
applicator serial) before any button. A resolution needs a reason and is made by the store
(store/resolution.py: keep this station's value, keep the cloud's, or enter the right one), audited
and sent to the cloud like any change.
"""

import importlib.util
import json
from collections.abc import Callable
from typing import Any

from nicegui import ui

from store.errors import StoreError
from store.review_items import ConflictItem, HeldChange, RecordContext, awaiting_person
from store.station import Actor, Station
from ui.frame import BUTTON, frame
from ui.offloop import off_loop
from ui.session import current_station, require_actor

RULE_WORDS = {
    "serial_in_two_treatments": "One applicator is recorded in two treatments",
    "serial_scanned_twice": "One applicator was scanned twice",
    "not_in_inventory": "The applicator is not in the site's inventory",
    "used_in_priority": "Priority records the applicator as used already",
    "refused_by_station": "This station could not store the cloud's version",
    "manual": "Both sides changed a field that only a person may decide",
}


@ui.page("/review")
async def review_page() -> None:
    actor = require_actor()
    if actor is None:
        return
    with frame("Needs a person"):
        ReviewPage(current_station(), actor)


class ReviewPage:
    def __init__(self, station: Station, actor: Actor) -> None:
        self.station = station
        self.actor = actor
        self.body = ui.column().classes("w-full gap-4").props("data-testid=review-list")
        ui.timer(0.05, self.refresh, once=True)

    async def refresh(self) -> None:
        conflicts, held = await off_loop(awaiting_person, self.station, self.actor)
        self.body.clear()
        with self.body:
            if not conflicts and not held:
                ui.label("Nothing waits for a person.").classes("text-xl").props("data-testid=review-empty")
                return
            if conflicts:
                ui.label(f"Conflicts ({len(conflicts)})").classes("text-2xl font-semibold")
                for conflict in conflicts:
                    self._conflict(conflict)
            if held:
                ui.label(f"Changes the cloud did not accept ({len(held)})").classes("text-2xl font-semibold")
                for change in held:
                    self._held(change)

    def _conflict(self, conflict: ConflictItem) -> None:
        colour = "border-red-600" if conflict.is_safety else "border-amber-500"
        with (
            ui.card()
            .classes(f"w-full border-l-8 {colour} gap-2")
            .props(f"data-testid=conflict-{conflict.id}")
        ):
            title = RULE_WORDS.get(conflict.rule or "", f"Both sides changed “{conflict.field}”")
            if conflict.is_safety:
                title = f"Safety: {title}"
            ui.label(title).classes("text-xl font-bold")
            _context(conflict.context)
            ui.label(f"{conflict.table} · field “{conflict.field}”").classes("text-base")
            with ui.row().classes("w-full gap-8"):
                _value("This station", conflict.local_value)
                _value("The cloud", conflict.server_value)
            if conflict.reason:
                ui.label(conflict.reason).classes("text-base italic")
            reason = ui.input("Why is this the right choice? (recorded)").props(
                f"outlined data-testid=reason-{conflict.id}"
            )
            reason.classes("w-full text-lg")
            merged = ui.input("The right value (for “Enter the right value”)").props(
                f"outlined data-testid=merged-{conflict.id}"
            )
            merged.classes("w-full text-lg")
            with ui.row().classes("gap-3"):
                for text, kind in (
                    ("Keep this station's value", "keep_local"),
                    ("Keep the cloud's value", "keep_server"),
                    ("Enter the right value", "keep_merged"),
                ):
                    ui.button(
                        text, on_click=lambda k=kind, c=conflict: self._resolve(k, c, reason, merged)
                    ).props(f"size=lg data-testid={kind}-{conflict.id}").classes(BUTTON)

    def _held(self, change: HeldChange) -> None:
        with (
            ui.card()
            .classes("w-full border-l-8 border-red-600 gap-2")
            .props(f"data-testid=held-{change.op_id}")
        ):
            status = "Refused by the cloud" if change.status == "quarantined" else "Retried too often"
            ui.label(f"{status}: {change.kind} of {change.table}").classes("text-xl font-bold")
            _context(change.context)
            ui.label(change.message or "No reason was given.").classes("text-lg")
            if change.code:
                ui.label(f"Code {change.code} · {change.attempts} attempt(s)").classes("text-base")
            ui.label(
                "It stays on this station and holds back only the changes that depend on it. "
                "Call Alpha Tau support to reconcile it with the cloud."
            ).classes("text-base")

    async def _resolve(self, kind: str, conflict: ConflictItem, reason: ui.input, merged: ui.input) -> None:
        reason.error = None
        merged.error = None
        if not (reason.value or "").strip():
            reason.error = "Give the reason for this decision: it is recorded with it."
            return
        if kind == "keep_merged" and not (merged.value or "").strip():
            merged.error = "Enter the value that is right."
            return
        resolver = _resolver(kind)
        if resolver is None:
            reason.error = "Resolving conflicts on this station is not available in this version."
            return
        value = _parse(merged.value) if kind == "keep_merged" else None
        try:
            await off_loop(resolver(self.station, self.actor, conflict.id, reason.value, value))
        except StoreError as refusal:
            target = merged if refusal.field in ("value", "merged") else reason
            target.error = refusal.message
            return
        ui.notify("Resolved and recorded; it goes to the cloud with the next sync.", type="positive")
        await self.refresh()


def _resolver(kind: str) -> Callable[[Station, Actor, str, str, Any], Callable[[], Any]] | None:
    """The store's resolution command (store/resolution.py), as a call ready for a worker thread."""
    if importlib.util.find_spec("store.resolution") is None:
        return None
    from store import resolution

    command = getattr(resolution, kind)
    if kind == "keep_merged":
        return lambda station, actor, conflict_id, reason, value: (
            lambda: command(station, actor, conflict_id=conflict_id, value=value, reason=reason)
        )
    return lambda station, actor, conflict_id, reason, _value: (
        lambda: command(station, actor, conflict_id=conflict_id, reason=reason)
    )


def _context(context: RecordContext) -> None:
    with ui.row().classes("gap-6 bg-amber-50 px-3 py-1 rounded w-full"):
        ui.label(f"Patient: {context.patient_label or 'not on this station'}").classes("text-lg font-bold")
        ui.label(f"ID {context.subject_id or '?'}").classes("text-lg")
        ui.label(f"Site {context.site or '?'}").classes("text-lg")
        if context.serial:
            ui.label(f"Applicator {context.serial}").classes("text-lg")


def _value(side: str, value: Any) -> None:
    with ui.column().classes("gap-0"):
        ui.label(side).classes("text-base text-slate-600")
        ui.label(_show(value)).classes("text-lg font-semibold")


def _show(value: Any) -> str:
    if value is None:
        return "(empty)"
    if isinstance(value, dict):
        if {"treatment_id", "site"} <= value.keys():
            return f"in treatment {value['treatment_id']} at site {value['site']}"
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _parse(text: str) -> Any:
    """What the person typed: a number or true/false where it is one, the text otherwise."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        return stripped
