"""What the sync banner shows, read from the station's store: the truth, never a hopeful guess.

`read_banner` gathers in one read transaction: where the station stands with the cloud (the
connectivity comes from the monitor, everything else from the database), how many changes wait and
at which priority, whether the station's clock can be trusted for "latest wins" (the same test the
conflict rules apply, `sync.rules`), how fresh the validation data is, and how many things wait for
a person. `read_receipt` says where one record stands: saved here, sent, confirmed by the cloud, or
held for a person.

Both are synchronous and cheap (a handful of indexed counts): the UI calls them through
`run.io_bound`, never on its event loop.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import Connection, Integer, func, select, text

from store.engine import read_transaction
from store.enums import CacheType, ConflictStatus, Priority, QueueStatus
from store.models import CORE_TABLES, SyncConflict, SyncQueueEntry, SyncState, User, ValidationCacheEntry
from store.station import Station
from sync.monitor import Connectivity
from sync.rules import SKEW_THRESHOLD_MS

QUEUE = SyncQueueEntry.__table__
CONFLICTS = SyncConflict.__table__
CACHE = ValidationCacheEntry.__table__
STATE = SyncState.__table__
USERS = User.__table__

# Queue priorities by name, in push order (store.enums.Priority): the banner's labels.
PRIORITY_LABELS: dict[int, str] = {
    Priority.CRITICAL_TREATMENT: "critical_treatment",
    Priority.COMPLETED_TREATMENT: "completed_treatment",
    Priority.APPLICATOR_REMOVAL: "applicator_removal",
    Priority.NEW_APPLICATOR: "new_applicator",
    Priority.ROUTINE: "routine",
}
# Entries that still go to the cloud by themselves (a retry after backoff included).
WAITING = (QueueStatus.PENDING.value, QueueStatus.IN_FLIGHT.value)
# Entries that stay until a person looks at them (invariant 6: shown, never dropped).
HELD = (QueueStatus.QUARANTINED.value, QueueStatus.NEEDS_PERSON.value)
CACHE_KINDS = ("users", "schedule", "inventory")


class Receipt(StrEnum):
    """Where one record stands with the cloud (the per-record receipt the pages show)."""

    SAVED_HERE = "saved_here"  # durable on this station; its latest change has not left it yet
    SENT = "sent"  # sent to the cloud, not confirmed yet (in flight, or retried later)
    CONFIRMED = "confirmed"  # every change of the record is confirmed by the cloud
    NEEDS_PERSON = "needs_person"  # a conflict or a refused change of the record waits for a person


@dataclass(frozen=True)
class CacheFreshness:
    """One kind of validation data: which bundle it came from and until when it may be trusted."""

    kind: str  # users | schedule | inventory
    bundle_version: str | None  # None: no validation data was ever installed
    valid_until: datetime | None  # UTC
    fresh: bool  # valid_until is still ahead; a stale cache makes offline scans ask for confirmation
    entries: int


@dataclass(frozen=True)
class BannerStatus:
    connectivity: Connectivity
    last_success_at: datetime | None  # UTC: the last round that completed (None: never)
    last_attempt_at: datetime | None  # UTC: the last round, whatever its end
    last_error: str | None  # why the last round did not complete (None: it did, or none ran)
    waiting_total: int  # changes that will still go to the cloud by themselves
    waiting_by_priority: dict[str, int]  # PRIORITY_LABELS label -> waiting changes, in push order
    clock_offset_ms: int | None  # cloud clock minus station clock, last measured (None: never)
    clock_unreliable: bool  # beyond the skew threshold or never measured: "latest wins" is held
    cache: dict[str, CacheFreshness]  # per kind (CACHE_KINDS)
    needs_person: int  # open_conflicts + quarantined + entries_needing_person
    open_conflicts: int  # conflicts held for a person on the review page
    safety_conflicts: int  # of those, the ones that block finalising a treatment
    quarantined: int  # changes the cloud refused: shown, never blocking the others
    entries_needing_person: int  # changes retried too often
    checked_at: datetime  # UTC, the station's clock
    connectivity_detail: str | None = None  # in words: why degraded or offline (the monitor's last word)

    @property
    def cache_fresh(self) -> bool:
        return all(c.fresh for c in self.cache.values())


def clock_unreliable(offset_ms: int | None, threshold_ms: int = SKEW_THRESHOLD_MS) -> bool:
    """The conflict rules' own test (sync.rules `_skewed`): an unmeasured clock is not trusted either."""
    return offset_ms is None or abs(offset_ms) > threshold_ms


def read_banner(
    station: Station,
    connectivity: Connectivity,
    *,
    detail: str | None = None,
    skew_threshold_ms: int = SKEW_THRESHOLD_MS,
) -> BannerStatus:
    now = station.now()
    with read_transaction(station.engine) as conn:
        state = conn.execute(select(STATE).where(STATE.c.id == 1)).mappings().one()
        offset = conn.exec_driver_sql("SELECT clock_offset_ms FROM device_state WHERE id = 1").scalar()
        by_status_priority = _queue_counts(conn)
        open_conflicts, safety_conflicts = _open_conflicts(conn)
        cache = _cache_freshness(conn, now)
    if not (state["cloud_url"] and state["credential_enc"]):
        connectivity = Connectivity.NOT_LINKED  # the store is the truth, whatever was probed before
        detail = "This station is not linked to a cloud: everything stays saved here."
    waiting = {label: 0 for label in PRIORITY_LABELS.values()}
    for (status, priority), n in by_status_priority.items():
        if status in WAITING:
            label = PRIORITY_LABELS.get(priority, f"priority_{priority}")
            waiting[label] = waiting.get(label, 0) + n
    quarantined = sum(n for (s, _p), n in by_status_priority.items() if s == QueueStatus.QUARANTINED.value)
    needing = sum(n for (s, _p), n in by_status_priority.items() if s == QueueStatus.NEEDS_PERSON.value)
    return BannerStatus(
        connectivity=connectivity,
        last_success_at=state["last_sync_at"],
        last_attempt_at=state["last_attempt_at"],
        last_error=state["last_error"],
        waiting_total=sum(waiting.values()),
        waiting_by_priority=waiting,
        clock_offset_ms=offset,
        clock_unreliable=clock_unreliable(offset, skew_threshold_ms),
        cache=cache,
        needs_person=open_conflicts + quarantined + needing,
        open_conflicts=open_conflicts,
        safety_conflicts=safety_conflicts,
        quarantined=quarantined,
        entries_needing_person=needing,
        checked_at=now,
        connectivity_detail=detail,
    )


def read_receipt(station: Station, table: str, record_id: str) -> Receipt:
    """The receipt of one record; LookupError when this station does not hold it."""
    if table not in CORE_TABLES:
        raise ValueError(f"{table!r} is not a synced table (one of: {', '.join(CORE_TABLES)})")
    with read_transaction(station.engine) as conn:
        exists = conn.exec_driver_sql(f"SELECT 1 FROM {table} WHERE id = ?", (record_id,)).first()
        if exists is None:
            raise LookupError(f"This station holds no {table} record {record_id}.")
        entries = conn.execute(
            select(QUEUE.c.status, QUEUE.c.sent_at).where(
                QUEUE.c.table_name == table,
                QUEUE.c.record_id == record_id,
                QUEUE.c.status != QueueStatus.DONE.value,
            )
        ).all()
        held = conn.execute(
            select(func.count()).where(
                CONFLICTS.c.table_name == table,
                CONFLICTS.c.record_id == record_id,
                CONFLICTS.c.status == ConflictStatus.OPEN.value,
            )
        ).scalar_one()
    return _receipt(bool(held), [(e.status, e.sent_at) for e in entries])


def read_receipts(station: Station, records: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Receipt]:
    """The receipts of many records (table, id) in one read: three indexed queries per table, whatever
    the number of records (a page of 200 applicators refreshes its badges every few seconds). A record
    this station does not hold is left out of the answer."""
    wanted: dict[str, list[str]] = {}
    for table, record_id in records:
        if table not in CORE_TABLES:
            raise ValueError(f"{table!r} is not a synced table (one of: {', '.join(CORE_TABLES)})")
        wanted.setdefault(table, []).append(record_id)
    found: dict[tuple[str, str], Receipt] = {}
    with read_transaction(station.engine) as conn:
        for table, ids in wanted.items():
            listed = orjson.dumps(sorted(set(ids))).decode()
            held = {r for (r,) in conn.exec_driver_sql(_HELD_RECORDS, (table, listed))}
            entries: dict[str, list[tuple[str, Any]]] = {}
            for record_id, status, sent_at in conn.exec_driver_sql(_OPEN_ENTRIES, (table, listed)):
                entries.setdefault(record_id, []).append((status, sent_at))  # sent_at: only None matters
            held_here = conn.exec_driver_sql(_EXISTING.format(table=table), (listed,))
            for (record_id,) in held_here:
                found[(table, record_id)] = _receipt(record_id in held, entries.get(record_id, []))
    return found


def _receipt(held: bool, entries: list[tuple[str, Any]]) -> Receipt:
    """Where a record stands, from its open conflict (if any) and its queue entries not yet done."""
    if held or any(status in HELD for status, _sent in entries):
        return Receipt.NEEDS_PERSON
    if any(status == QueueStatus.PENDING.value and sent_at is None for status, sent_at in entries):
        return Receipt.SAVED_HERE
    return Receipt.SENT if entries else Receipt.CONFIRMED


# The bulk receipt reads: ids as one JSON array parameter (no limit on how many, one prepared text).
_IN_IDS = "(SELECT value FROM json_each(?))"
_EXISTING = "SELECT id FROM {table} WHERE id IN " + _IN_IDS
_HELD_RECORDS = (
    "SELECT DISTINCT record_id FROM sync_conflicts WHERE table_name = ? AND status = 'open'"
    " AND record_id IN " + _IN_IDS
)
_OPEN_ENTRIES = (
    "SELECT record_id, status, sent_at FROM sync_queue WHERE table_name = ? AND status <> 'done'"
    " AND record_id IN " + _IN_IDS
)


# --- reads ------------------------------------------------------------------------------------------
def _queue_counts(conn: Connection) -> dict[tuple[str, int], int]:
    open_statuses = (*WAITING, *HELD)
    rows = conn.execute(
        select(QUEUE.c.status, QUEUE.c.priority, func.count())
        .where(QUEUE.c.status.in_(open_statuses))
        .group_by(QUEUE.c.status, QUEUE.c.priority)
    )
    return {(status, priority): n for status, priority, n in rows}


def _open_conflicts(conn: Connection) -> tuple[int, int]:
    total, safety = conn.execute(
        select(func.count(), func.coalesce(func.sum(CONFLICTS.c.is_safety.cast(Integer)), 0)).where(
            CONFLICTS.c.status == ConflictStatus.OPEN.value
        )
    ).one()
    return int(total), int(safety)


def _cache_freshness(conn: Connection, now: datetime) -> dict[str, CacheFreshness]:
    """Each kind's earliest valid_until and its bundle version, by index (a bundle may hold 100,000
    applicators: a full scan every few seconds for the banner would not be cheap)."""
    bundle = conn.execute(_BUNDLE, {"kind": CacheType.BUNDLE.value}).first()
    cache: dict[str, CacheFreshness] = {}
    for kind in CACHE_KINDS:
        if kind == "users":
            # Users arrive with the bundle and live in their own table: the bundle's dates are theirs.
            source = bundle
            entries = conn.execute(select(func.count()).where(USERS.c.is_active)).scalar_one()
        else:
            # A bundle with none of this kind: that kind is as fresh as the bundle.
            source = conn.execute(_EARLIEST, {"kind": kind}).first() or bundle
            entries = conn.execute(_COUNT, {"kind": kind}).scalar_one()
        valid_until = source.valid_until if source is not None else None
        cache[kind] = CacheFreshness(
            kind=kind,
            bundle_version=source.bundle_version if source is not None else None,
            valid_until=valid_until,
            fresh=valid_until is not None and now < valid_until,
            entries=int(entries),
        )
    return cache


_TYPED = {"valid_until": CACHE.c.valid_until.type, "bundle_version": CACHE.c.bundle_version.type}
# `+cache_type` keeps SQLite off the cache_type indexes, so it walks the valid_until index in
# order and stops at the first row of the kind instead of sorting every row of it.
_EARLIEST = text(
    "SELECT valid_until, bundle_version FROM validation_cache WHERE +cache_type = :kind "
    "ORDER BY valid_until LIMIT 1"
).columns(**_TYPED)
_BUNDLE = text(
    "SELECT valid_until, bundle_version FROM validation_cache "
    "WHERE cache_type = :kind AND cache_key = 'current'"
).columns(**_TYPED)
_COUNT = text("SELECT count(*) FROM validation_cache WHERE cache_type = :kind")
