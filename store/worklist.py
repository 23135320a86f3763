"""Reads for the Today page: a site's treatments around today, the orders to start, what may be removed
or continued. Nothing here writes; the page calls these through `run.io_bound`.

Patient fields are decrypted here, for the actor's sites only, so that the page shows names and ids
and never handles ciphertext.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, select, text

from store.engine import read_transaction
from store.enums import Role, SignatureStatus, TreatmentType
from store.guards import TREATMENTS
from store.station import Actor, Station
from store.validation_cache import orders_for_day

_PROGRESS = text(
    "SELECT treatment_id, applicator_count, deployed_seeds, percent_deployed FROM treatment_progress"
    " WHERE treatment_id IN (SELECT value FROM json_each(:ids))"
)


@dataclass(frozen=True)
class WorkItem:
    """One line of the Today page: a treatment on this station, or an order not started yet."""

    day: date
    site: str
    kind: str  # insertion | removal | order
    patient_label: str | None
    subject_id: str | None
    indication: str
    status: str  # in words: Scheduled, In progress, Finalised, ...
    treatment_id: str | None = None
    order_name: str | None = None
    surgeon: str | None = None
    planned_seeds: int | None = None
    deployed_seeds: int = 0
    percent: float | None = None
    applicators: int = 0
    continuation: bool = False
    emergency: bool = False


@dataclass(frozen=True)
class OrderChoice:
    order_name: str  # one order, or several joined with "+" (combined pancreas orders)
    patient_label: str | None
    indication: str
    seeds: int | None
    started: bool  # an insertion was already started from it


@dataclass(frozen=True)
class InsertionChoice:
    """A finalised insertion: to remove, or to continue."""

    treatment_id: str
    site: str
    day: date
    patient_label: str | None
    subject_id: str | None
    surgeon: str | None
    completed_at: datetime | None
    deployed_seeds: int
    has_removal: bool


def sites_for(station: Station, actor: Actor) -> list[str]:
    """The sites the actor may work at on this station (Alpha Tau and admins: every site it serves)."""
    if actor.role in (Role.ALPHATAU, Role.ADMIN) or not actor.sites:
        with read_transaction(station.engine) as conn:
            rows = conn.execute(text("SELECT DISTINCT site FROM validation_cache WHERE site IS NOT NULL"))
            found = {r[0] for r in rows} | set(actor.sites)
            found |= set(conn.execute(select(TREATMENTS.c.site).distinct()).scalars())
        return sorted(found)
    return sorted(actor.sites)


def day_list(station: Station, actor: Actor, site: str, days: list[date]) -> list[WorkItem]:
    """Treatments at the site on these days (this station's), then the days' orders not started yet."""
    if not actor.may_access(site):
        return []
    with read_transaction(station.engine) as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                select(TREATMENTS)
                .where(
                    TREATMENTS.c.site == site, TREATMENTS.c.date.in_(days), TREATMENTS.c.deleted_at.is_(None)
                )
                .order_by(TREATMENTS.c.date, TREATMENTS.c.started_at)
            ).mappings()
        ]
        progress = _progress(conn, [r["id"] for r in rows])
        started_orders = {h for r in rows for h in (r["order_hashes"] or [])}
        orders = [o for day in days for o in orders_for_day(conn, site, day)]
    items = [_treatment_item(station, row, progress.get(row["id"], {})) for row in rows]
    for order in sorted(orders, key=lambda o: (o.day, o.order_hash)):
        if order.order_hash in started_orders:
            continue
        items.append(
            WorkItem(
                day=order.day,
                site=site,
                kind="order",
                patient_label=station.cipher.decrypt(order.patient_label_enc),
                subject_id=station.cipher.decrypt(order.order_name_enc),
                indication=order.indication,
                status="Scheduled, not started",
                order_name=station.cipher.decrypt(order.order_name_enc),
                planned_seeds=order.seeds,
            )
        )
    return sorted(items, key=lambda i: (i.day, i.kind == "order"))


def order_choices(station: Station, actor: Actor, site: str, day: date) -> list[OrderChoice]:
    """The day's orders at the site, for starting an insertion (patient from the cached orders)."""
    if not actor.may_access(site):
        return []
    with read_transaction(station.engine) as conn:
        orders = orders_for_day(conn, site, day)
        started = {
            h
            for hashes in conn.execute(
                select(TREATMENTS.c.order_hashes).where(
                    TREATMENTS.c.site == site, TREATMENTS.c.deleted_at.is_(None)
                )
            ).scalars()
            for h in hashes or []
        }
    choices = [
        OrderChoice(
            order_name=station.cipher.decrypt(o.order_name_enc) or "",
            patient_label=station.cipher.decrypt(o.patient_label_enc),
            indication=o.indication,
            seeds=o.seeds,
            started=o.order_hash in started,
        )
        for o in orders
    ]
    return sorted(choices, key=lambda c: (c.patient_label or "", c.order_name))


def finalised_insertions(
    station: Station, actor: Actor, site: str, *, search: str = "", since_days: int = 60, limit: int = 30
) -> list[InsertionChoice]:
    """Finalised insertions at the site (newest first), whose patient name or id contains `search`."""
    if not actor.may_access(site):
        return []
    first = station.local_today() - timedelta(days=since_days)
    with read_transaction(station.engine) as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                select(TREATMENTS)
                .where(
                    TREATMENTS.c.site == site,
                    TREATMENTS.c.type == TreatmentType.INSERTION.value,
                    TREATMENTS.c.is_complete,
                    TREATMENTS.c.deleted_at.is_(None),
                    TREATMENTS.c.date >= first,
                )
                .order_by(TREATMENTS.c.date.desc(), TREATMENTS.c.completed_at.desc())
            ).mappings()
        ]
        progress = _progress(conn, [r["id"] for r in rows])
        removed_from = set(
            conn.execute(
                select(TREATMENTS.c.insertion_treatment_id).where(
                    TREATMENTS.c.insertion_treatment_id.is_not(None), TREATMENTS.c.deleted_at.is_(None)
                )
            ).scalars()
        )
    needle = search.strip().casefold()
    found: list[InsertionChoice] = []
    for row in rows:
        label = station.cipher.decrypt(row["patient_label_enc"])
        subject = station.cipher.decrypt(row["subject_id_enc"])
        if needle and needle not in f"{label or ''} {subject or ''}".casefold():
            continue
        found.append(
            InsertionChoice(
                treatment_id=row["id"],
                site=row["site"],
                day=row["date"],
                patient_label=label,
                subject_id=subject,
                surgeon=row["surgeon"],
                completed_at=row["completed_at"],
                deployed_seeds=int(progress.get(row["id"], {}).get("deployed_seeds") or 0),
                has_removal=row["id"] in removed_from,
            )
        )
        if len(found) >= limit:
            break
    return found


def continuable(station: Station, actor: Actor, site: str) -> list[InsertionChoice]:
    """Finalised insertions at the site finished within the continuation window (24 hours)."""
    window = timedelta(hours=station.settings.continuation_hours)
    now = station.now()
    return [
        choice
        for choice in finalised_insertions(station, actor, site, since_days=2)
        if choice.completed_at is not None and now - choice.completed_at <= window
    ]


def surgeon_names(station: Station, site: str) -> list[str]:
    """Surgeons named in earlier treatments at the site, for the surgeon field's suggestions."""
    with read_transaction(station.engine) as conn:
        names = conn.execute(
            select(TREATMENTS.c.surgeon)
            .where(TREATMENTS.c.site == site, TREATMENTS.c.surgeon.is_not(None))
            .distinct()
        ).scalars()
        return sorted(n for n in names if n)


# --- helpers ----------------------------------------------------------------------------------------
def _progress(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = conn.execute(_PROGRESS, {"ids": orjson.dumps(ids).decode()}).mappings()
    return {r["treatment_id"]: dict(r) for r in rows}


def _treatment_item(station: Station, row: dict[str, Any], progress: dict[str, Any]) -> WorkItem:
    return WorkItem(
        day=row["date"],
        site=row["site"],
        kind=row["type"],
        patient_label=station.cipher.decrypt(row["patient_label_enc"]),
        subject_id=station.cipher.decrypt(row["subject_id_enc"]),
        indication=row["indication"],
        status=_status_words(row),
        treatment_id=row["id"],
        surgeon=row["surgeon"],
        planned_seeds=row["planned_seeds"],
        deployed_seeds=int(progress.get("deployed_seeds") or 0),
        percent=progress.get("percent_deployed"),
        applicators=int(progress.get("applicator_count") or 0),
        continuation=row["parent_treatment_id"] is not None,
        emergency=bool(row["needs_reconciliation"]),
    )


def _status_words(row: dict[str, Any]) -> str:
    if not row["is_complete"]:
        return "In progress"
    if row["signature_status"] == SignatureStatus.AWAITING_CLOUD.value:
        return "Finalised, signed offline: awaiting cloud confirmation"
    return "Finalised"
