"""/review: what waits for a person. Conflicts held by the sync rules, and changes the cloud refused.

Invariants 5 and 6: a field both sides changed that a rule may not decide (a safety field, a clock
past the skew threshold) is held here, never resolved automatically; a change the cloud refused is
quarantined and shown here, never dropped. Each item shows whose record it is (patient, id, site,
applicator serial) before any button. A resolution needs a reason and is made by the store
(store/resolution.py: keep this station's value, keep the cloud's, or enter the right one), audited
and sent to the cloud like any change.
"""

import json
from collections.abc import Callable
from typing import Any

from nicegui import ui

from store import quarantine, resolution
from store.errors import StoreError
from store.pulled_resolutions import PAIR_RULES
from store.resolution import AwaitingConflict, conflicts_awaiting
from store.review_items import HeldChange, RecordContext, held_changes, treatment_contexts
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
        conflicts, contexts, held = await off_loop(_awaiting, self.station, self.actor)
        self.body.clear()
        with self.body:
            if not conflicts and not held:
                ui.label("Nothing waits for a person.").classes("text-xl").props("data-testid=review-empty")
                return
            if conflicts:
                ui.label(f"Conflicts ({len(conflicts)})").classes("text-2xl font-semibold")
                for conflict in conflicts:
                    self._conflict(conflict, [contexts[t] for t in conflict.treatment_ids if t in contexts])
            if held:
                ui.label(f"Changes the cloud did not accept ({len(held)})").classes("text-2xl font-semibold")
                for change in held:
                    self._held(change)

    def _conflict(self, conflict: AwaitingConflict, contexts: list[RecordContext]) -> None:
        colour = "border-red-600" if conflict.is_safety else "border-amber-500"
        card = ui.card().classes(f"w-full border-l-8 {colour} gap-2")
        with card.props(f"data-testid=conflict-{conflict.conflict_id}"):
            title = RULE_WORDS.get(conflict.rule, f"Both sides changed “{conflict.field}”")
            ui.label(f"Safety: {title}" if conflict.is_safety else title).classes("text-xl font-bold")
            for context in contexts or [RecordContext(None, None, None, None, None)]:
                _context(context)
            ui.label(conflict.summary).classes("text-lg")
            pair = conflict.rule in PAIR_RULES
            if not pair:
                with ui.row().classes("w-full gap-8"):
                    _value("This station", conflict.local_value)
                    _value("The cloud", conflict.server_value)
            reason = ui.input("Why is this the right choice? (recorded)").props(
                f"outlined data-testid=reason-{conflict.conflict_id}"
            )
            reason.classes("w-full text-lg")
            with ui.row().classes("gap-3 flex-wrap"):
                if conflict.admin_only:
                    self._button("Acknowledge", "keep_local", conflict, reason, None)
                elif pair:
                    for context in contexts:
                        who = context.patient_label or context.subject_id or context.treatment_id
                        ui.button(
                            f"Keep it in the treatment of {who}",
                            on_click=lambda c=context: self._resolve(
                                "keep_in_treatment", conflict, reason, None, c.treatment_id
                            ),
                        ).props(f"size=lg data-testid=keep-in-{context.treatment_id}").classes(BUTTON)
                else:
                    merged = ui.input(f"The right value of “{conflict.field}”").props(
                        f"outlined data-testid=merged-{conflict.conflict_id}"
                    )
                    merged.classes("w-full text-lg")
                    self._button("Keep this station's value", "keep_local", conflict, reason, None)
                    self._button("Keep the cloud's value", "keep_server", conflict, reason, None)
                    self._button("Enter the right value", "keep_merged", conflict, reason, merged)

    def _button(
        self, text: str, kind: str, conflict: AwaitingConflict, reason: ui.input, merged: ui.input | None
    ) -> None:
        ui.button(text, on_click=lambda: self._resolve(kind, conflict, reason, merged, None)).props(
            f"size=lg data-testid={kind}-{conflict.conflict_id}"
        ).classes(BUTTON)

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
            if not quarantine.can_send_again(change.code):
                ui.label(
                    "The cloud refused it for good: sending it again would get the same answer. It stays "
                    "on this station and holds back only the changes that depend on it; call Alpha Tau "
                    "support."
                ).classes("text-base")
                return
            ui.label(
                "It stays on this station and holds back only the changes that depend on it. "
                "When its cause was fixed elsewhere, send it again; otherwise call Alpha Tau support."
            ).classes("text-base")
            reason = ui.input("Why send it again? (recorded)").props(
                f"outlined data-testid=reason-{change.op_id}"
            )
            reason.classes("w-full text-lg")
            ui.button("Send again", on_click=lambda: self._send_again(change, reason)).props(
                f"size=lg data-testid=send-again-{change.op_id}"
            ).classes(BUTTON)

    async def _send_again(self, change: HeldChange, reason: ui.input) -> None:
        reason.error = None
        if not (reason.value or "").strip():
            reason.error = "Give the reason for sending it again: it is recorded with it."
            return
        try:
            await off_loop(quarantine.send_again, self.station, self.actor, change.op_id, reason.value)
        except StoreError as refusal:
            reason.error = refusal.message
            return
        ui.notify("Back in the queue; it goes to the cloud with the next sync.", type="positive")
        await self.refresh()

    async def _resolve(
        self,
        kind: str,
        conflict: AwaitingConflict,
        reason: ui.input,
        merged: ui.input | None,
        keeper: str | None,
    ) -> None:
        reason.error = None
        if merged is not None:
            merged.error = None
        if not (reason.value or "").strip():
            reason.error = "Give the reason for this decision: it is recorded with it."
            return
        if kind == "keep_merged" and merged is not None and not (merged.value or "").strip():
            merged.error = "Enter the value that is right."
            return
        call = _command(self.station, self.actor, kind, conflict, reason.value, merged, keeper)
        try:
            await off_loop(call)
        except StoreError as refusal:
            target = merged if merged is not None and refusal.field not in (None, "reason") else reason
            target.error = refusal.message
            return
        ui.notify("Decided and recorded; it goes to the cloud with the next sync.", type="positive")
        await self.refresh()


def _awaiting(
    station: Station, actor: Actor
) -> tuple[list[AwaitingConflict], dict[str, RecordContext], list[HeldChange]]:
    """What waits for a person at the actor's sites, with the patients of the treatments concerned."""
    conflicts = conflicts_awaiting(station)
    contexts = treatment_contexts(station, [t for c in conflicts for t in c.treatment_ids])
    visible = [
        c
        for c in conflicts
        if all(contexts[t].site is None or actor.may_access(contexts[t].site or "") for t in c.treatment_ids)
    ]
    return visible, contexts, held_changes(station, actor)


def _command(
    station: Station,
    actor: Actor,
    kind: str,
    conflict: AwaitingConflict,
    reason: str,
    merged: ui.input | None,
    keeper: str | None,
) -> Callable[[], Any]:
    """The store's decision (store/resolution.py), as a call for a worker thread."""
    conflict_id = conflict.conflict_id
    if kind == "keep_in_treatment":
        return lambda: resolution.keep_in_treatment(station, actor, conflict_id, keeper or "", reason)
    if kind == "keep_merged":
        values = {conflict.field: _parse(merged.value if merged is not None else "")}
        return lambda: resolution.keep_merged(station, actor, conflict_id, values, reason)
    command = resolution.keep_local if kind == "keep_local" else resolution.keep_server
    return lambda: command(station, actor, conflict_id, reason)


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
