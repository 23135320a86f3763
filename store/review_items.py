"""Reads for the conflict review page: what waits for a person, with the patient it concerns.

Two kinds (invariants 5 and 6): conflicts held for a person (`sync_conflicts` open), and changes the
cloud refused or that were retried too often (`sync_queue` quarantined / needs_person). Each is shown
with its treatment's patient and site, so that the person deciding sees whose record it is. Values of
patient fields are stored sealed and are opened here for the actor's sites only.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from store.engine import read_transaction
from store.enums import ConflictStatus, QueueStatus
from store.guards import APPLICATORS, TREATMENTS
from store.models import SyncConflict, SyncQueueEntry
from store.station import Actor, Station

CONFLICTS = SyncConflict.__table__
QUEUE = SyncQueueEntry.__table__
HELD = (QueueStatus.QUARANTINED.value, QueueStatus.NEEDS_PERSON.value)


@dataclass(frozen=True)
class RecordContext:
    """Whose record it is: the treatment's patient and site, and the applicator's serial."""

    treatment_id: str | None
    site: str | None
    patient_label: str | None
    subject_id: str | None
    serial: str | None


@dataclass(frozen=True)
class ConflictItem:
    id: str
    table: str
    record_id: str
    field: str
    local_value: Any
    server_value: Any
    rule: str | None
    is_safety: bool
    detected_at: datetime
    reason: str | None
    context: RecordContext


@dataclass(frozen=True)
class HeldChange:
    op_id: str
    table: str
    record_id: str
    kind: str
    status: str  # quarantined | needs_person
    code: str | None
    message: str | None
    attempts: int
    created_at: datetime
    context: RecordContext


def awaiting_person(station: Station, actor: Actor) -> tuple[list[ConflictItem], list[HeldChange]]:
    """Open conflicts and held changes at the actor's sites (safety conflicts first, then oldest)."""
    with read_transaction(station.engine) as conn:
        conflict_rows = [
            dict(r)
            for r in conn.execute(
                select(CONFLICTS)
                .where(CONFLICTS.c.status == ConflictStatus.OPEN.value)
                .order_by(CONFLICTS.c.is_safety.desc(), CONFLICTS.c.detected_at)
            ).mappings()
        ]
        held_rows = [
            dict(r)
            for r in conn.execute(
                select(QUEUE).where(QUEUE.c.status.in_(HELD)).order_by(QUEUE.c.device_seq)
            ).mappings()
        ]
        contexts = {
            (row["table_name"], row["record_id"]): _context(
                station, conn, row["table_name"], row["record_id"]
            )
            for row in [*conflict_rows, *held_rows]
        }
    conflicts = [
        ConflictItem(
            id=row["id"],
            table=row["table_name"],
            record_id=row["record_id"],
            field=_wire_name(row["field"]),
            local_value=_open(station, row["field"], row["local_value"]),
            server_value=_open(station, row["field"], row["server_value"]),
            rule=row["rule"],
            is_safety=bool(row["is_safety"]),
            detected_at=row["detected_at"],
            reason=row["reason"],
            context=contexts[(row["table_name"], row["record_id"])],
        )
        for row in conflict_rows
    ]
    held = [
        HeldChange(
            op_id=row["op_id"],
            table=row["table_name"],
            record_id=row["record_id"],
            kind=row["kind"],
            status=row["status"],
            code=(row["result"] or {}).get("code"),
            message=(row["result"] or {}).get("message") or row["last_error"],
            attempts=row["attempts"],
            created_at=row["created_at"],
            context=contexts[(row["table_name"], row["record_id"])],
        )
        for row in held_rows
    ]
    visible = _visible(actor)
    return (
        [c for c in conflicts if visible(c.context)],
        [h for h in held if visible(h.context)],
    )


def treatment_contexts(station: Station, treatment_ids: list[str]) -> dict[str, RecordContext]:
    """Patient, id and site of each treatment this station holds (for the conflicts' headings)."""
    with read_transaction(station.engine) as conn:
        return {tid: _context(station, conn, "treatments", tid) for tid in dict.fromkeys(treatment_ids)}


def held_changes(station: Station, actor: Actor) -> list[HeldChange]:
    """Changes the cloud refused or that were retried too often, at the actor's sites."""
    return awaiting_person(station, actor)[1]


def _visible(actor: Actor) -> Any:
    # A record this station holds no treatment for (the other side of a serial clash) is shown: the
    # person must see it to decide, and it came from this station's own sites.
    return lambda context: context.site is None or actor.may_access(context.site)


def _context(station: Station, conn: Connection, table: str, record_id: str) -> RecordContext:
    serial = None
    treatment_id: str | None = record_id if table == "treatments" else None
    if table == "applicators":
        row = conn.execute(
            select(APPLICATORS.c.serial_number, APPLICATORS.c.treatment_id).where(
                APPLICATORS.c.id == record_id
            )
        ).first()
        if row is not None:
            serial, treatment_id = row.serial_number, row.treatment_id
    elif table != "treatments":
        other = conn.exec_driver_sql(f"SELECT treatment_id FROM {table} WHERE id = ?", (record_id,)).first()
        treatment_id = other[0] if other else None
    treatment = (
        conn.execute(
            select(TREATMENTS.c.site, TREATMENTS.c.patient_label_enc, TREATMENTS.c.subject_id_enc).where(
                TREATMENTS.c.id == treatment_id
            )
        ).first()
        if treatment_id
        else None
    )
    if treatment is None:
        return RecordContext(treatment_id, None, None, None, serial)
    return RecordContext(
        treatment_id=treatment_id,
        site=treatment.site,
        patient_label=station.cipher.decrypt(treatment.patient_label_enc),
        subject_id=station.cipher.decrypt(treatment.subject_id_enc),
        serial=serial,
    )


def _open(station: Station, field: str, value: Any) -> Any:
    """A sealed patient value opened (conflict rows keep patient fields encrypted)."""
    if field.endswith("_enc") and isinstance(value, str):
        try:
            return station.cipher.decrypt(value)
        except ValueError:
            return value
    return value


def _wire_name(field: str) -> str:
    return field.removesuffix("_enc")
