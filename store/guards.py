"""Reads and checks that several commands share before they write."""

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, select

from store.errors import InvalidInput, NotFound, NotPermitted, TreatmentLocked
from store.fastsql import codec
from store.models import Applicator, Treatment
from store.station import Actor, Station

TREATMENTS = Treatment.__table__
APPLICATORS = Applicator.__table__

MAX_TEXT = 2000


def load_treatment(conn: Connection, treatment_id: str) -> RowMapping:
    rows = codec(TREATMENTS).select(conn, "id = ?", (treatment_id,))
    row = rows[0] if rows else None
    if row is None or row["deleted_at"] is not None:
        raise NotFound("This treatment does not exist or was deleted.")
    return row


def load_applicator(conn: Connection, applicator_id: str) -> RowMapping:
    rows = codec(APPLICATORS).select(conn, "id = ?", (applicator_id,))
    row = rows[0] if rows else None
    if row is None or row["deleted_at"] is not None:
        raise NotFound("This applicator is not recorded in any treatment.")
    return row


def require_access(actor: Actor, treatment: RowMapping) -> None:
    if not actor.may_access(treatment["site"]):
        raise NotPermitted(f"You are not authorised for site {treatment['site']}.")


def require_open(station: Station, treatment: RowMapping, *, unused_applicator: bool = False) -> None:
    """Refuse changes to a finalised treatment, or one older than the edit window.

    Past the window (21 days) only applicators that are still unused may change (domain.md).
    """
    if treatment["is_complete"]:
        raise TreatmentLocked("This treatment is finalised and locked; nothing can be added or changed.")
    if unused_applicator:
        return
    age = station.local_today() - treatment["date"]
    if age > timedelta(days=station.settings.edit_lock_days):
        raise TreatmentLocked(
            f"This treatment is more than {station.settings.edit_lock_days} days old "
            "and can no longer be edited."
        )


def clean_text(value: str | None, *, field: str, label: str, required: bool = False) -> str | None:
    """Trimmed free text; None when empty. Refuses what no person would type."""
    text = (value or "").strip()
    if not text:
        if required:
            raise InvalidInput(f"{label} is required.", field=field)
        return None
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"{label} is too long (at most {MAX_TEXT} characters).", field=field)
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in text):
        raise InvalidInput(f"{label} contains control characters.", field=field)
    return text


def live_applicators(conn: Connection, treatment_ids: list[str]) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(APPLICATORS)
        .where(APPLICATORS.c.treatment_id.in_(treatment_ids), APPLICATORS.c.deleted_at.is_(None))
        .order_by(APPLICATORS.c.scanned_at, APPLICATORS.c.id)
    )
    return [dict(r) for r in rows.mappings()]
