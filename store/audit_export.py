"""Reading the station's audit chain for the cloud, and remembering how far the cloud holds it.

The audit upload (sync/audit_upload.py) sends the entries above `acknowledged_seq`, oldest first,
exactly as they are stored (every field the hash covers), each with the site whose auditors should
see it: the site of the clinical record it concerns, or None for an event of the station as a
whole (a sign-in, emergency access, a bundle installed), which the cloud files at every site the
station serves. The position moves only to what the cloud answered, never ahead of it.
"""

from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.sql.elements import ColumnElement

from store.engine import read_transaction
from store.journal import AUDIT
from store.models import Applicator, ApplicatorPackage, RemovedSeed, SyncState, Treatment
from store.station import Station

STATE = SyncState.__table__
TREATMENTS = Treatment.__table__
# Clinical tables whose rows belong to a treatment, and so to its site.
_CHILD_TABLES = {
    t.name: t for t in (Applicator.__table__, ApplicatorPackage.__table__, RemovedSeed.__table__)
}


def acknowledged_seq(station: Station) -> int:
    """The last entry the cloud acknowledged (0: none yet)."""
    with read_transaction(station.engine) as conn:
        return conn.execute(select(STATE.c.audit_acked_seq).where(STATE.c.id == 1)).scalar() or 0


def acknowledge(station: Station, seq: int) -> None:
    """Remember the cloud's answer: its last entry of this station's chain."""
    with station.writer.begin() as conn:
        conn.execute(update(STATE).where(STATE.c.id == 1).values(audit_acked_seq=seq))


def entries_after(station: Station, seq: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` entries with `device_seq > seq`, in chain order, each with its `site`."""
    query = (
        select(*(c for c in AUDIT.columns if c.name != "id"), _site().label("site"))
        .where(AUDIT.c.device_seq > seq)
        .order_by(AUDIT.c.device_seq)
        .limit(limit)
    )
    with read_transaction(station.engine) as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def _site() -> ColumnElement[Any]:
    """The site of the clinical record an entry concerns (a child row: its treatment's), else NULL."""
    whens: list[tuple[ColumnElement[bool], Any]] = [
        (
            AUDIT.c.table_name == TREATMENTS.name,
            select(TREATMENTS.c.site).where(TREATMENTS.c.id == AUDIT.c.record_id).scalar_subquery(),
        )
    ]
    for name, table in _CHILD_TABLES.items():
        site = (
            select(TREATMENTS.c.site)
            .join(table, table.c.treatment_id == TREATMENTS.c.id)
            .where(table.c.id == AUDIT.c.record_id)
            .scalar_subquery()
        )
        whens.append((AUDIT.c.table_name == name, site))
    return case(*whens, else_=None)
