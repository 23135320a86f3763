"""What the sync engine writes on the station: pulled changes, push results, conflicts, sync state.

Each public function is ONE transaction (`store.journal.transaction`), like a command:

- a pulled page: its records written and audited (`pulled_change`) and the pull cursor advanced
  together, so the cursor never passes a change that is not committed here (invariant 4). Pulled
  changes are never queued: they came from the cloud. An incoming change that meets local edits
  not yet confirmed by the cloud is merged field by field with the shared rules (sync/rules.py);
  fields both sides changed are recorded in `sync_conflicts`, decided or held (invariant 5). A
  pulled applicator whose serial is live in another treatment here is a safety conflict on both
  rows (invariant 9);
- push results: each queue entry done, back to pending (with its next attempt), quarantined or
  needing a person; the conflicts the cloud reports stored for the review page, and the values it
  decided taken over; rows whose entries are all done get their receipt (`sync_status`);
- the sync state: the cloud link with its sealed credential, the cursor, the last rounds.
"""

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, func, select, update
from sqlalchemy.exc import IntegrityError

from store import fastsql
from store.engine import read_transaction
from store.enums import (
    TERMINAL_STATUSES,
    CacheType,
    ConflictResolution,
    ConflictStatus,
    QueueStatus,
    RowSyncStatus,
)
from store.fastsql import codec
from store.incidents import raise_for_stuck
from store.journal import QUEUE, Journal, keep_updated_at, transaction
from store.models import SyncConflict, SyncState, ValidationCacheEntry
from store.pulled_resolutions import settle_after_pull
from store.station import Station
from sync.protocol import IMMUTABLE_FIELDS, ConflictInfo, OpResult, PullChange
from sync.rules import Action, FieldOutcome, RuleContext, followers_of, merge, same
from sync.wire import (
    SEALED,
    TABLES,
    local_record,
    sealed_value,
    site_of,
    station_field,
    station_values,
    typed_changes,
    typed_record,
    typed_value,
)

STATE = SyncState.__table__
CONFLICTS = SyncConflict.__table__
CACHE = ValidationCacheEntry.__table__
TREATMENTS = TABLES["treatments"]
APPLICATORS = TABLES["applicators"]

OPEN_QUEUE = (QueueStatus.PENDING, QueueStatus.IN_FLIGHT, QueueStatus.QUARANTINED, QueueStatus.NEEDS_PERSON)
BOOKKEEPING = frozenset({"cloud_version", "sync_status", "local_version"})
# Conflicts about which applicator is where, not about one field's value (cloud/push.py).
SERIAL_RULES = frozenset(
    {"serial_in_two_treatments", "serial_scanned_twice", "not_in_inventory", "used_in_priority"}
)
# What the station's own constraints refuse; anything else (a disk error, a bug) stops the page.
REFUSALS = ("CHECK constraint failed", "NOT NULL constraint failed", "UNIQUE constraint failed")

PROVISIONAL = (
    "Decided on this station when the cloud's change met a change not sent yet; "
    "the cloud decides again when the change arrives."
)


class CursorMoved(RuntimeError):
    """The stored pull cursor is not the one this page continues from (another round ran)."""


class ParentsMissing(RuntimeError):
    """Rows of this window point at records a later page brings: pull more before committing."""


# --- sync state ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncStatus:
    cloud_url: str | None
    cloud_device_id: str | None
    credential: str | None
    pull_cursor: int
    last_attempt_at: datetime | None
    last_sync_at: datetime | None
    last_error: str | None
    last_bundle_at: datetime | None

    @property
    def linked(self) -> bool:
        return bool(self.cloud_url and self.credential)


def link_cloud(station: Station, *, cloud_url: str, credential: str, device_id: str) -> None:
    """Remember the cloud and this device's credential (sealed with the station's data key)."""
    with transaction(station, None) as journal:
        link_cloud_in(journal, cloud_url=cloud_url, credential=credential, device_id=device_id)


def link_cloud_in(journal: Journal, *, cloud_url: str, credential: str, device_id: str) -> None:
    """`link_cloud` inside a transaction the caller holds (enrolment adopts the device id with it)."""
    current = _state_row(journal.conn)
    values: dict[str, Any] = {
        "cloud_url": cloud_url,
        "cloud_device_id": device_id,
        "credential_enc": journal.station.cipher.encrypt(credential),
    }
    if current["cloud_url"] != cloud_url:
        values["pull_cursor"] = 0  # another cloud's sequence numbers mean nothing here
    journal.conn.execute(update(STATE).where(STATE.c.id == 1).values(values))
    # The credential is a secret: the audit says who the station talks to, never with what.
    journal.audit_only("cloud_linked", new={"cloud_url": cloud_url, "device_id": device_id})


def load_state(station: Station) -> SyncStatus:
    with read_transaction(station.engine) as conn:
        row = _state_row(conn)
    return SyncStatus(
        cloud_url=row["cloud_url"],
        cloud_device_id=row["cloud_device_id"],
        credential=station.cipher.decrypt(row["credential_enc"]),
        pull_cursor=row["pull_cursor"] or 0,
        last_attempt_at=row["last_attempt_at"],
        last_sync_at=row["last_sync_at"],
        last_error=row["last_error"],
        last_bundle_at=row["last_bundle_at"],
    )


def save_clock_offset(station: Station, offset_ms: int) -> None:
    """The measured offset to the cloud's clock; every queue entry made from now on carries it."""
    with station.writer.begin() as conn:
        fastsql.execute(conn, "UPDATE device_state SET clock_offset_ms = ? WHERE id = 1", (offset_ms,))


def record_round(station: Station, *, at: datetime, error: str | None) -> None:
    values: dict[str, Any] = {"last_attempt_at": at, "last_error": error}
    if error is None:
        values["last_sync_at"] = at
    with station.writer.begin() as conn:
        conn.execute(update(STATE).where(STATE.c.id == 1).values(values))


def record_bundle(station: Station, *, at: datetime) -> None:
    with station.writer.begin() as conn:
        conn.execute(update(STATE).where(STATE.c.id == 1).values(last_bundle_at=at))


def bundle_fetched_at(station: Station) -> datetime | None:
    """When the installed validation bundle was fetched (None: there is none)."""
    with read_transaction(station.engine) as conn:
        return conn.execute(
            select(CACHE.c.fetched_at).where(
                CACHE.c.cache_type == CacheType.BUNDLE.value, CACHE.c.cache_key == "current"
            )
        ).scalar()


def _state_row(conn: Connection) -> Mapping[str, Any]:
    row = conn.execute(select(STATE).where(STATE.c.id == 1)).mappings().first()
    if row is None:
        raise RuntimeError("sync_state has no row: the station database is not migrated (revision 0003)")
    return row


# --- pull ---------------------------------------------------------------------------------------------
@dataclass
class PageResult:
    written: int = 0  # records inserted or changed
    unchanged: int = 0  # already as the cloud has them (or older than what is here)
    merged: int = 0  # met local changes not confirmed yet, merged by the rules
    refused: int = 0  # the station's constraints refused the cloud's record (held for a person)
    conflicts: int = 0


def apply_pulled(
    station: Station, changes: Sequence[PullChange], *, cursor: int, next_cursor: int
) -> PageResult:
    """Apply pulled changes and advance the cursor from `cursor` to `next_cursor`, all or nothing."""
    result = PageResult()
    with transaction(station, None) as journal:
        # Each change carries its record as it is NOW, which may point at a record a later change
        # of the window brings: foreign keys are checked once, before the commit.
        fastsql.execute(journal.conn, "PRAGMA defer_foreign_keys = ON", ())
        page = _Page(station, journal, result)
        for change in changes:
            page.apply(change)
        _require_parents(journal.conn)
        _advance_cursor(journal.conn, cursor, next_cursor)
        stamps = [str(c.record["hlc"]) for c in changes if c.record.get("hlc")]
        if stamps:
            journal.observe(max(stamps))
    return result


def _require_parents(conn: Connection) -> None:
    broken = fastsql.execute(conn, "PRAGMA foreign_key_check", ())
    if broken:
        raise ParentsMissing(
            f"{len(broken)} row(s) point at records not pulled yet (first: {tuple(broken[0])})"
        )


def _advance_cursor(conn: Connection, cursor: int, next_cursor: int) -> None:
    moved = conn.execute(
        update(STATE)
        .where(STATE.c.id == 1, func.coalesce(STATE.c.pull_cursor, 0) == cursor)
        .values(pull_cursor=next_cursor)
    )
    if moved.rowcount != 1:
        raise CursorMoved(f"the pull cursor is no longer {cursor}: another sync round moved it")


class _Page:
    """The writes of one pulled window, inside its transaction."""

    def __init__(self, station: Station, journal: Journal, result: PageResult) -> None:
        self.station = station
        self.journal = journal
        self.conn = journal.conn
        self.result = result
        self.conflicts = _Conflicts(station, journal)

    def apply(self, change: PullChange) -> None:
        table = TABLES[change.table]
        incoming = typed_record(change.table, change.record) | {"id": change.record_id}
        row = _load(self.conn, table, change.record_id)
        if row is None:
            self._insert(change, table, incoming)
            return
        if row["cloud_version"] is not None and change.version < row["cloud_version"]:
            self.result.unchanged += 1  # older than what this station has confirmed already
            return
        local = local_record(self.station.cipher, change.table, row)
        pending = _open_ops(self.conn, change.table, change.record_id)
        target = self._merged(change, local, incoming, pending) if pending else incoming
        self._update(change, table, row, local, target, pending=bool(pending))

    def _insert(self, change: PullChange, table: Table, incoming: dict[str, Any]) -> None:
        values = station_values(self.station.cipher, change.table, incoming)
        values |= {
            "cloud_version": change.version,
            "sync_status": RowSyncStatus.SYNCED.value,
            "local_version": 1,
        }
        if not self._write(table, change.record_id, values, before=None):
            return
        self.result.written += 1
        if change.table == "applicators" and incoming.get("deleted_at") is None:
            self._check_serial(incoming)

    def _update(
        self,
        change: PullChange,
        table: Table,
        row: Mapping[str, Any],
        local: dict[str, Any],
        target: dict[str, Any],
        *,
        pending: bool,
    ) -> None:
        diff = {
            k: v
            for k, v in target.items()
            if k not in IMMUTABLE_FIELDS and k in local and not same(local[k], v)
        }
        bookkeeping = {
            "cloud_version": max(row["cloud_version"] or 0, change.version),
            "sync_status": _row_status(self.conn, change.table, change.record_id, pending=pending),
        }
        if not diff:
            self.result.unchanged += 1
            set_bookkeeping(self.conn, table, row, bookkeeping)
            return
        values = station_values(self.station.cipher, change.table, diff, row=target)
        values |= bookkeeping | {"local_version": row["local_version"] + 1}
        if self._write(table, change.record_id, values, before=row):
            self.result.written += 1

    def _write(
        self, table: Table, record_id: str, values: dict[str, Any], *, before: Mapping[str, Any] | None
    ) -> bool:
        """One record from the cloud, in a savepoint: refused by this station's constraints, it is
        held for a person instead of stopping every later change for ever."""
        clinical = {k: v for k, v in values.items() if k not in BOOKKEEPING}
        old = None if before is None else {k: before[k] for k in clinical}
        try:
            with self.conn.begin_nested():
                self.journal.remote_write(
                    table, values, before=before, action="pulled_change", old=old, new=clinical
                )
        except (IntegrityError, sqlite3.IntegrityError) as exc:
            if _refusal(exc) is None:
                raise
            self.result.refused += 1
            self.conflicts.refused(table.name, record_id, clinical, str(_refusal(exc)))
            return False
        if table.name == "applicators":  # a serial clash a person resolved on another station
            for applicator_id in settle_after_pull(self.journal, record_id):
                receipt(self.conn, "applicators", applicator_id, None)
        return True

    # --- a change that meets local changes not confirmed yet ----------------------------------------
    def _merged(
        self,
        change: PullChange,
        local: dict[str, Any],
        incoming: dict[str, Any],
        pending: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """The record as this station keeps it meanwhile: the cloud's, with the local changes the
        rules let stand. Its own entries still go to the cloud, which decides again on arrival."""
        bases, newest = self._local_changes(change.table, pending)
        # The record's own stamps (hlc, updated_at) stay the cloud's: the pending entries carry their
        # own, and when one changes the cloud's record the next pull brings the stamps it got there.
        # Keeping the newer local ones diverged for ever when the cloud took nothing from the entry.
        target = dict(incoming)
        groups: dict[str, list[str]] = defaultdict(list)
        for name in bases:
            if name in incoming:
                groups[newest[name]["op_id"]].append(name)
        ops = {op["op_id"]: op for op in pending}
        held_leaders: set[str] = set()
        for op_id, names in groups.items():
            ctx = self._context(change, ops[op_id], local, incoming, bases)
            changed = {name: (bases[name], local.get(name)) for name in names}
            for outcome in merge(change.table, changed, incoming, ctx):
                if outcome.action is Action.TAKE:
                    target[outcome.field] = outcome.value
                elif outcome.action is Action.HOLD:
                    # The clinician's entry stands here until a person decides.
                    target[outcome.field] = outcome.local
                    if followers_of(change.table, outcome.field):
                        held_leaders.add(outcome.field)
                if outcome.contested:
                    self.result.conflicts += self.conflicts.provisional(
                        change.table, change.record_id, outcome, op_id
                    )
        # Except a held leader (two statuses no move joins): it shows the cloud's value with the
        # cloud's followers, as the cloud keeps it until a person decides (the clinician's value is
        # in the conflict row). The local status beside the cloud's seed count was a row no station
        # may store: refused, and never pulled again.
        for leader in held_leaders:
            for name in (leader, *followers_of(change.table, leader)):
                if name in incoming:
                    target[name] = incoming[name]
        self.result.merged += 1
        return target

    def _local_changes(
        self, table_name: str, pending: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Each locally changed field's base (from its first open entry) and its newest entry."""
        bases: dict[str, Any] = {}
        newest: dict[str, dict[str, Any]] = {}
        for op in pending:
            for name, (base, _new) in typed_changes(
                self.station.cipher, table_name, op["changed_fields"]
            ).items():
                bases.setdefault(name, base)
                newest[name] = op
        return bases, newest

    def _context(
        self,
        change: PullChange,
        op: Mapping[str, Any],
        local: dict[str, Any],
        incoming: dict[str, Any],
        bases: dict[str, Any],
    ) -> RuleContext:
        # The pull does not say which clock offsets the cloud's values were written with: unknown,
        # so a contested "latest wins" field is held here until the cloud's own answer arrives.
        return RuleContext(
            local_hlc=op["hlc"],
            local_offset_ms=op["clock_offset_ms"],
            server_hlcs=change.field_hlc,
            indication=self._indication(change.table, incoming),
            local_record=local,
            server_record=incoming,
            local_base=bases,
            role_of=self._role_of,
        )

    def _indication(self, table_name: str, record: Mapping[str, Any]) -> str:
        if table_name == "treatments":
            return str(record.get("indication") or "unknown")
        rows = fastsql.execute(
            self.conn, "SELECT indication FROM treatments WHERE id = ?", (record.get("treatment_id"),)
        )
        return rows[0][0] if rows else "unknown"

    def _role_of(self, user_id: Any) -> str | None:
        rows = fastsql.execute(self.conn, "SELECT role FROM users WHERE id = ?", (str(user_id),))
        return rows[0][0] if rows else None

    # --- one serial in two treatments (invariant 9) --------------------------------------------------
    def _check_serial(self, record: Mapping[str, Any]) -> None:
        """The cloud's check (cloud/push.py `_clash`), made here on a pulled applicator: a station that
        scanned the same serial offline sees the clash without waiting for its own push."""
        uses = _serial_uses(self.conn, str(record["serial_number"]))
        mine = next((u for u in uses if u["id"] == record["id"]), None)
        if mine is None:
            return
        for other in uses:
            if other["id"] != mine["id"] and _clash(mine, other):
                rule = (
                    "serial_scanned_twice"
                    if other["treatment_id"] == mine["treatment_id"]
                    else "serial_in_two_treatments"
                )
                self.result.conflicts += self.conflicts.serial_pair(mine, other, rule)
                for applicator_id in (mine["id"], other["id"]):
                    receipt(self.conn, "applicators", applicator_id, None)  # both rows show the conflict


_SERIAL_USES = (
    "SELECT a.id, a.treatment_id, a.status, a.reused_from_id, a.serial_number, t.site, t.is_complete,"
    " t.deleted_at IS NOT NULL FROM applicators a JOIN treatments t ON t.id = a.treatment_id"
    " WHERE a.serial_number = ? AND a.deleted_at IS NULL"
)
_USE_KEYS = ("id", "treatment_id", "status", "reused_from_id", "serial_number", "site", "complete", "deleted")


def _serial_uses(conn: Connection, serial: str) -> list[dict[str, Any]]:
    return [dict(zip(_USE_KEYS, row, strict=True)) for row in fastsql.execute(conn, _SERIAL_USES, (serial,))]


def _clash(mine: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether another live row of the serial is a real second use (the cloud's rules, both ways)."""
    if other["id"] == mine["reused_from_id"] or mine["id"] == other["reused_from_id"]:
        return False  # a continuation reusing its parent's opened or loaded applicator
    if other["deleted"]:
        return False  # a deleted treatment recorded it unused
    # Unused in a finished treatment: "previously no-use", which a person confirmed on the station.
    return not (other["complete"] and other["status"] not in TERMINAL_STATUSES)


# --- push ---------------------------------------------------------------------------------------------
def open_entries(station: Station) -> list[dict[str, Any]]:
    """Every queue entry the cloud has not confirmed, oldest first, with its record's site."""
    statuses = tuple(s.value for s in OPEN_QUEUE)
    with read_transaction(station.engine) as conn:
        entries = [
            dict(r)
            for r in conn.execute(
                select(QUEUE).where(QUEUE.c.status.in_(statuses)).order_by(QUEUE.c.device_seq)
            ).mappings()
        ]
        return _with_sites(conn, entries)


# What push_order needs of an entry. A station back after days offline holds thousands of open
# entries: holding them whole (payloads and all) for a round made the garbage collector's full
# passes long enough to stall the UI's event loop (docs/performance.md, sync_catchup.py).
SCHEDULING = ("op_id", "status", "priority", "created_at", "device_seq", "depends_on", "next_attempt_at")


def open_schedule(station: Station) -> list[dict[str, Any]]:
    """Every open entry, oldest first, with only its scheduling fields (`SCHEDULING`); `depends_on`
    a tuple: an entry then holds only atomic values and tuples of them, which the garbage collector
    stops tracking (tuples at its first pass, dicts at its first full one), so 10,000 entries held
    for a round no longer lengthen every full pass in the sync worker (a loop stall)."""
    statuses = ", ".join(f"'{s.value}'" for s in OPEN_QUEUE)
    with read_transaction(station.engine) as conn:
        rows = codec(QUEUE).select(conn, f"status IN ({statuses}) ORDER BY device_seq", (), SCHEDULING)
    for row in rows:
        row["depends_on"] = tuple(row["depends_on"])
    return rows


def load_entries(station: Station, op_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The whole entries named (a batch), in the order named, each with its record's site."""
    if not op_ids:
        return []
    with read_transaction(station.engine) as conn:
        rows = codec(QUEUE).select(conn, f"op_id IN ({', '.join('?' * len(op_ids))})", tuple(op_ids))
        by_id = {row["op_id"]: row for row in _with_sites(conn, rows)}
    return [by_id[op_id] for op_id in op_ids if op_id in by_id]


def _with_sites(conn: Connection, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    wanted = sorted(
        {str(e["payload"].get("treatment_id")) for e in entries if e["table_name"] != "treatments"}
    )
    sites = dict(
        conn.execute(select(TREATMENTS.c.id, TREATMENTS.c.site).where(TREATMENTS.c.id.in_(wanted))).all()
    )
    for entry in entries:
        entry["site"] = site_of(entry, sites)
    return entries


def mark_sent(station: Station, op_ids: Sequence[str], *, at: datetime) -> None:
    """Entries on their way: a crash before the answer leaves them in flight, sent again next round
    (the cloud's ledger answers a resent operation with its first result). Committed before they
    leave: enrolment refuses to move a device while anything sent is unanswered (sync/enrol.py)."""
    with station.writer.begin() as conn:
        _mark_sent(conn, op_ids, at)


def release(station: Station, op_ids: Sequence[str], *, not_sent: Sequence[Mapping[str, Any]] = ()) -> None:
    """No answer came (offline): the entries wait as they were, without counting an attempt; they
    may have reached the cloud, so they stay marked sent. `not_sent`: entries marked sent for the
    next push, which never left (`unmark_sent`)."""
    with station.writer.begin() as conn:
        conn.execute(
            update(QUEUE)
            .where(QUEUE.c.op_id.in_(op_ids), QUEUE.c.status == QueueStatus.IN_FLIGHT.value)
            .values(status=QueueStatus.PENDING.value)
        )
        unmark_sent(conn, not_sent)


def _mark_sent(conn: Connection, op_ids: Sequence[str], at: datetime) -> None:
    if op_ids:
        fastsql.execute(
            conn,
            f"UPDATE sync_queue SET status = ?, sent_at = ? WHERE op_id IN ({', '.join('?' * len(op_ids))})",
            (QueueStatus.IN_FLIGHT.value, codec(QUEUE).bind("sent_at", at), *op_ids),
        )


def unmark_sent(conn: Connection, entries: Sequence[Mapping[str, Any]]) -> None:
    """Entries marked sent that never left (held back after all, or the round ended first): their
    status and sent_at back as they were loaded before the mark, so that one never sent does not
    count as sent (a receipt, enrolment) and one sent in an earlier round still does."""
    queue = codec(QUEUE)
    for entry in entries:
        fastsql.execute(
            conn,
            "UPDATE sync_queue SET status = ?, sent_at = ? WHERE op_id = ? AND status = ?",
            (
                entry["status"],
                queue.bind("sent_at", entry["sent_at"]),
                entry["op_id"],
                QueueStatus.IN_FLIGHT.value,
            ),
        )


@dataclass(frozen=True)
class Verdict:
    """What becomes of one sent entry (decided by the engine's policy, written here)."""

    entry: Mapping[str, Any]
    status: QueueStatus
    result: OpResult  # the answer that counts (for a duplicate: the original)
    stored: dict[str, Any]  # the answer as received
    attempts: int
    next_attempt_at: datetime | None = None

    @property
    def error(self) -> str | None:
        if self.result.status != "rejected":
            return None
        return f"{self.result.code}: {self.result.message}" if self.result.code else self.result.message


@dataclass
class ResultCounts:
    conflicts: int = 0
    decided: int = 0  # local fields that took the value the cloud decided
    refused: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def record_results(
    station: Station,
    verdicts: Sequence[Verdict],
    *,
    at: datetime,
    sending: Sequence[str] = (),
    not_sent: Sequence[Mapping[str, Any]] = (),
) -> ResultCounts:
    """Write a batch's answers, its conflicts and the receipts of the records it finished, at once.

    In the same transaction (one durable commit per pushed batch, docs/performance.md): the entries
    `sending` marked sent (`mark_sent`), and the entries `not_sent` marked back (`unmark_sent`)."""
    counts = ResultCounts()
    with transaction(station, None) as journal:
        conflicts = _Conflicts(station, journal)
        touched: dict[tuple[str, str], int | None] = {}
        versions: dict[tuple[str, str], int | None] = {}  # the cloud version each row now mirrors
        for verdict in verdicts:
            entry = verdict.entry
            _write_verdict(journal.conn, verdict, at)
            if verdict.status is QueueStatus.DONE and entry["kind"] == "update":
                _follow_cloud_stamps(journal.conn, entry, verdict.result.version, versions)
            counts.by_status[verdict.status.value] += 1
            if verdict.status in (QueueStatus.QUARANTINED, QueueStatus.NEEDS_PERSON):
                journal.audit_only(
                    f"sync_op_{verdict.status.value}",
                    table=entry["table_name"],
                    record_id=entry["record_id"],
                    new={
                        "op_id": entry["op_id"],
                        "code": verdict.result.code,
                        "message": verdict.result.message,
                    },
                )
                raise_for_stuck(
                    journal,
                    entry,
                    verdict.status,
                    code=verdict.result.code,
                    message=verdict.result.message,
                    attempts=verdict.attempts,
                )
            key = (entry["table_name"], entry["record_id"])
            touched[key] = verdict.result.version if verdict.status is QueueStatus.DONE else touched.get(key)
            decided: dict[str, Any] = {}
            for info in verdict.result.conflicts or []:
                table_name, record_id = (
                    info.table or entry["table_name"],
                    info.record_id or entry["record_id"],
                )
                counts.conflicts += conflicts.from_cloud(info, table_name, record_id, entry["op_id"])
                touched.setdefault((table_name, record_id), None)
                if info.record_id is None and info.rule not in SERIAL_RULES:
                    decided[info.field] = info.value
            if decided:
                counts.decided += _take_cloud_values(station, journal, conflicts, entry, decided, counts)
        receipts(journal.conn, touched)
        _mark_sent(journal.conn, sending, at)
        unmark_sent(journal.conn, not_sent)
    return counts


_STAMPS = ("id", "cloud_version", "hlc", "updated_at")


def _follow_cloud_stamps(
    conn: Connection,
    entry: Mapping[str, Any],
    version: int | None,
    versions: dict[tuple[str, str], int | None],
) -> None:
    """The record's stamps (hlc, updated_at) as the cloud set them when this entry made the next
    version of the version this row mirrors: the later of the record's and the entry's
    (cloud/push.py). Any other version was made by someone else too: the next pull brings it."""
    if version is None:
        return
    table = TABLES[entry["table_name"]]
    # Only the stamps it compares: most entries of a catch-up are updates (docs/performance.md).
    rows = codec(table).select(conn, "id = ?", (entry["record_id"],), _STAMPS)
    if not rows:
        return
    row = rows[0]
    key = (table.name, row["id"])
    mirrored = versions.setdefault(key, row["cloud_version"])
    if mirrored is None or version != mirrored + 1:
        return
    versions[key] = version
    sent = entry["payload"].get("updated_at")
    stamps = {
        "hlc": max(row["hlc"], entry["hlc"]),
        "updated_at": max(row["updated_at"], typed_value(table, "updated_at", sent) or row["updated_at"]),
    }
    changed = {k: v for k, v in stamps.items() if row[k] != v}
    if changed:
        codec(table).update(conn, row["id"], changed)
        keep_updated_at(conn, table, row["id"], stamps["updated_at"])


def quarantine_unsendable(station: Station, entry: Mapping[str, Any], message: str, *, at: datetime) -> None:
    """An entry the station cannot even put on the wire: quarantined here, shown, never blocking."""
    result = OpResult(op_id=entry["op_id"], status="rejected", code="invalid_operation", message=message)
    verdict = Verdict(
        entry,
        QueueStatus.QUARANTINED,
        result,
        result.model_dump(mode="json", exclude_none=True),
        entry["attempts"],
    )
    with transaction(station, None) as journal:
        _write_verdict(journal.conn, verdict, at)
        journal.audit_only(
            "sync_op_quarantined",
            table=entry["table_name"],
            record_id=entry["record_id"],
            new={"op_id": entry["op_id"], "code": "invalid_operation", "message": message},
        )
        raise_for_stuck(
            journal,
            entry,
            QueueStatus.QUARANTINED,
            code="invalid_operation",
            message=message,
            attempts=entry["attempts"],
        )


_WRITE_VERDICT = (
    "UPDATE sync_queue SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, result = ?,"
    " server_version = ?, acknowledged_at = ? WHERE op_id = ?"
)


def _write_verdict(conn: Connection, verdict: Verdict, at: datetime) -> None:
    # One statement per answer on the driver connection (store/fastsql.py): built by Core, it cost
    # about 0.25 ms per entry, most of a catch-up's station-side time (docs/performance.md).
    done = verdict.status is QueueStatus.DONE
    queue = codec(QUEUE)
    fastsql.execute(
        conn,
        _WRITE_VERDICT,
        (
            verdict.status.value,
            verdict.attempts,
            queue.bind("next_attempt_at", verdict.next_attempt_at),
            verdict.error,
            queue.bind("result", verdict.stored),
            verdict.result.version if done else None,
            queue.bind("acknowledged_at", at if done else None),
            verdict.entry["op_id"],
        ),
    )


def _take_cloud_values(
    station: Station,
    journal: Journal,
    conflicts: "_Conflicts",
    entry: Mapping[str, Any],
    decided: Mapping[str, Any],
    counts: ResultCounts,
) -> int:
    """The values the cloud holds for the contested fields of an entry's record, taken here so that
    every station shows one record (the conflict rows keep this station's values for the person
    who reviews them). Taken together: a status never lands without the seed count that follows it."""
    table = TABLES[entry["table_name"]]
    row = _load(journal.conn, table, entry["record_id"])
    if row is None:
        return 0
    local = local_record(station.cipher, table.name, row)
    wanted = {
        name: value if name in SEALED else typed_value(table, name, value)
        for name, value in decided.items()
        if station_field(name) in table.c and not _changed_later(journal.conn, entry, name)
    }
    wanted = {name: value for name, value in wanted.items() if not same(local.get(name), value)}
    if not wanted:
        return 0
    clinical = station_values(station.cipher, table.name, wanted, row=local | wanted)
    try:
        with journal.conn.begin_nested():
            journal.remote_write(
                table,
                clinical | {"local_version": row["local_version"] + 1},
                before=row,
                action="conflict_decided_by_cloud",
                old={k: row[k] for k in clinical},
                new=clinical,
            )
    except (IntegrityError, sqlite3.IntegrityError) as exc:
        if _refusal(exc) is None:
            raise
        counts.refused += 1
        conflicts.refused(table.name, entry["record_id"], clinical, str(_refusal(exc)))
        return 0
    return len(wanted)


def _changed_later(conn: Connection, entry: Mapping[str, Any], wire_field: str) -> bool:
    """Whether a later entry, not confirmed yet, changes the field again (the cloud decides that one)."""
    column = station_field(wire_field)
    later = fastsql.execute(
        conn,
        "SELECT changed_fields FROM sync_queue WHERE table_name = ? AND record_id = ? AND device_seq > ?"
        " AND status <> 'done'",
        (entry["table_name"], entry["record_id"], entry["device_seq"]),
    )
    return any(column in codec(QUEUE).decode(("changed_fields",), row)["changed_fields"] for row in later)


# --- receipts -------------------------------------------------------------------------------------------
def receipt(conn: Connection, table_name: str, record_id: str, version: int | None) -> None:
    """The per-record receipt: synced once every entry of the row is done (conflict while one is open)."""
    if table_name not in TABLES:
        return  # an incident report: no row of this station behind it
    table = TABLES[table_name]
    row = _load(conn, table, record_id)
    if row is None:
        return  # the other side of a serial clash, on a record this station does not hold
    bookkeeping = {
        "cloud_version": max(row["cloud_version"] or 0, version or 0) or None,
        "sync_status": _row_status(
            conn, table_name, record_id, pending=bool(_open_ops(conn, table_name, record_id))
        ),
    }
    set_bookkeeping(conn, table, row, bookkeeping)


def receipts(conn: Connection, versions: Mapping[tuple[str, str], int | None]) -> None:
    """`receipt` for the records a pushed batch touched ((table, record id) -> the version the cloud
    confirmed, or None): per table one read of the rows, one of their open entries and one of their
    open conflicts, instead of three reads per record (docs/performance.md, sync_catchup)."""
    by_table: dict[str, dict[str, int | None]] = defaultdict(dict)
    for (table_name, record_id), version in versions.items():
        if table_name in TABLES:  # an incident report has no row of this station behind it
            by_table[table_name][record_id] = version
    open_statuses = ", ".join(f"'{s.value}'" for s in OPEN_QUEUE)
    for table_name, confirmed in by_table.items():
        table = TABLES[table_name]
        ids = tuple(confirmed)
        marks = ", ".join("?" * len(ids))
        rows = codec(table).select(conn, f"id IN ({marks})", ids)
        pending = _record_ids(
            conn,
            f"SELECT record_id FROM sync_queue WHERE table_name = ? AND record_id IN ({marks})"
            f" AND status IN ({open_statuses})",
            (table_name, *ids),
        )
        held = _record_ids(
            conn,
            f"SELECT record_id FROM sync_conflicts WHERE table_name = ? AND record_id IN ({marks})"
            " AND status = 'open'",
            (table_name, *ids),
        )
        for row in rows:  # a record this station does not hold (a serial clash's other side) has none
            record_id = row["id"]
            status = (
                RowSyncStatus.CONFLICT
                if record_id in held
                else RowSyncStatus.PENDING
                if record_id in pending
                else RowSyncStatus.SYNCED
            )
            version = max(row["cloud_version"] or 0, confirmed[record_id] or 0) or None
            set_bookkeeping(conn, table, row, {"cloud_version": version, "sync_status": status.value})


def _record_ids(conn: Connection, sql: str, params: Sequence[Any]) -> set[str]:
    return {row[0] for row in fastsql.execute(conn, sql, params)}


def set_bookkeeping(
    conn: Connection, table: Table, row: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """Sync bookkeeping on a row: not a clinical change, so neither queued, audited nor re-stamped."""
    changed = {k: v for k, v in values.items() if row[k] != v}
    if changed:
        codec(table).update(conn, row["id"], changed)
        keep_updated_at(conn, table, row["id"], row["updated_at"])


def _row_status(conn: Connection, table_name: str, record_id: str, *, pending: bool) -> str:
    held = fastsql.execute(
        conn,
        "SELECT 1 FROM sync_conflicts WHERE table_name = ? AND record_id = ? AND status = 'open' LIMIT 1",
        (table_name, record_id),
    )
    if held:
        return RowSyncStatus.CONFLICT.value
    return (RowSyncStatus.PENDING if pending else RowSyncStatus.SYNCED).value


def _refusal(exc: Exception) -> str | None:
    """The constraint's words when the station's own constraints refused a write, else None."""
    message = str(exc.orig if isinstance(exc, IntegrityError) else exc)
    return message if message.startswith(REFUSALS) else None


def _load(conn: Connection, table: Table, record_id: str) -> dict[str, Any] | None:
    rows = codec(table).select(conn, "id = ?", (record_id,))
    return rows[0] if rows else None


def _open_ops(conn: Connection, table_name: str, record_id: str) -> list[dict[str, Any]]:
    statuses = ", ".join(f"'{s.value}'" for s in OPEN_QUEUE)
    return codec(QUEUE).select(
        conn,
        f"table_name = ? AND record_id = ? AND status IN ({statuses}) ORDER BY device_seq",
        (table_name, record_id),
        ("op_id", "kind", "changed_fields", "hlc", "clock_offset_ms", "device_seq"),
    )


# --- conflicts --------------------------------------------------------------------------------------------
class _Conflicts:
    """sync_conflicts rows for the review page; patient values sealed with the station's key."""

    def __init__(self, station: Station, journal: Journal) -> None:
        self.cipher = station.cipher
        self.journal = journal
        self.conn = journal.conn

    def provisional(self, table_name: str, record_id: str, outcome: FieldOutcome, op_id: str) -> int:
        """A field both sides changed, decided (or held) here when the cloud's change arrived."""
        held = outcome.action is Action.HOLD
        row = self._row(
            table_name,
            record_id,
            outcome.field,
            local=outcome.local,
            server=outcome.server,
            base=outcome.base,
            rule=outcome.rule or "",
            held=held,
            is_safety=outcome.is_safety,
            value=outcome.value,
            reason=PROVISIONAL,
        )
        existing = self._find(
            "table_name = ? AND record_id = ? AND field = ? AND op_id = ? AND cloud_conflict_id IS NULL"
            " AND status <> 'resolved'",
            (table_name, record_id, row["field"], op_id),
        )
        return self._save(existing, row | {"op_id": op_id})

    def serial_pair(self, mine: Mapping[str, Any], other: Mapping[str, Any], rule: str) -> int:
        saved = 0
        for here, there in ((mine, other), (other, mine)):
            ref = {"site": there["site"], "treatment_id": there["treatment_id"], "applicator_id": there["id"]}
            known = self._find(
                "table_name = 'applicators' AND record_id = ? AND field = 'serial_number' AND rule = ?",
                (here["id"], rule),
            )
            if any((r["server_value"] or {}).get("applicator_id") == there["id"] for r in known):
                continue
            row = self._row(
                "applicators",
                here["id"],
                "serial_number",
                local=here["serial_number"],
                server=ref,
                base=None,
                rule=rule,
                held=True,
                is_safety=True,
                value=None,
                reason=f"Applicator {here['serial_number']} is live in two treatments (found when syncing).",
            )
            saved += self._save([], row)
        return saved

    def from_cloud(self, info: ConflictInfo, table_name: str, record_id: str, op_id: str) -> int:
        """A conflict the cloud reports: it replaces what this station decided alone, never twice."""
        if self._find("cloud_conflict_id = ?", (info.conflict_id,)):
            return 0  # a repeated answer (the ledger's duplicate) about a conflict already stored
        row = self._row(
            table_name,
            record_id,
            info.field,
            local=info.local_value,
            server=info.server_value,
            base=None,
            rule=info.rule,
            held=info.status == "open",
            is_safety=info.is_safety,
            value=info.value,
            reason=None if info.status == "open" else f"Decided by the cloud ({info.rule}).",
        )
        if self._decided_here(info, table_name, record_id, op_id):
            return 0
        candidates = [
            r
            for r in self._find(
                "table_name = ? AND record_id = ? AND field = ? AND cloud_conflict_id IS NULL"
                " AND status <> 'resolved'",
                (table_name, record_id, row["field"]),
            )
            if info.rule not in SERIAL_RULES
            or (r["rule"] == info.rule and r["server_value"] == info.server_value)
        ]
        candidates.sort(key=lambda r: r["op_id"] != op_id)
        return self._save(candidates[:1], row | {"op_id": op_id, "cloud_conflict_id": info.conflict_id})

    def _decided_here(self, info: ConflictInfo, table_name: str, record_id: str, op_id: str) -> bool:
        """A person resolved this conflict here before the cloud's answer about it came: the decision
        (queued behind the entry that met the conflict) stands; the row learns the cloud's id."""
        decided = [
            r
            for r in self._find(
                "table_name = ? AND record_id = ? AND field = ? AND cloud_conflict_id IS NULL"
                " AND status = 'resolved'",
                (table_name, record_id, station_field(info.field)),
            )
            if (r["rule"] == info.rule and r["server_value"] == info.server_value)
            or (info.rule not in SERIAL_RULES and r["rule"] not in SERIAL_RULES and r["op_id"] == op_id)
        ]
        if decided:
            self.conn.execute(
                update(CONFLICTS)
                .where(CONFLICTS.c.id == decided[0]["id"])
                .values(cloud_conflict_id=info.conflict_id)
            )
        return bool(decided)

    def refused(self, table_name: str, record_id: str, values: Mapping[str, Any], message: str) -> None:
        """A record from the cloud this station's constraints refuse: held for a person, never dropped."""
        self.journal.audit_only(
            "pulled_change_refused", table=table_name, record_id=record_id, new=dict(values), reason=message
        )
        if self._find(
            "table_name = ? AND record_id = ? AND rule = 'refused_by_station' AND status = 'open'",
            (table_name, record_id),
        ):
            return  # already held; this is a later change of the same record
        row = self._row(
            table_name,
            record_id,
            "*",
            local=None,
            server=None,
            base=None,
            rule="refused_by_station",
            held=True,
            is_safety=table_name in ("treatments", "applicators"),
            value=None,
            reason=f"This station could not store the cloud's version of the record: {message}",
        )
        self._save([], row)
        receipt(self.conn, table_name, record_id, None)  # the row shows it is held (when it is here)

    # --- rows ---------------------------------------------------------------------------------------
    def _row(
        self,
        table_name: str,
        record_id: str,
        wire_field: str,
        *,
        local: Any,
        server: Any,
        base: Any,
        rule: str,
        held: bool,
        is_safety: bool,
        value: Any,
        reason: str | None,
    ) -> dict[str, Any]:
        seal = self._sealed(wire_field)
        decided = (
            None
            if held
            else (ConflictResolution.KEEP_LOCAL if same(value, local) else ConflictResolution.KEEP_SERVER)
        )
        return {
            "table_name": table_name,
            "record_id": record_id,
            "field": station_field(wire_field),
            "local_value": seal(local),
            "server_value": seal(server),
            "base_value": seal(base),
            # Invariant 5: a value a rule chose is never a safety conflict; a held one may be.
            "is_safety": is_safety and held,
            "rule": rule[:32],
            "status": (ConflictStatus.OPEN if held else ConflictStatus.AUTO_RESOLVED).value,
            "resolved_at": None if held else self.journal.now,
            "resolution": None if decided is None else decided.value,
            "resolved_value": None if held else seal(value),
            "reason": reason,
        }

    def _sealed(self, wire_field: str) -> Any:
        return lambda value: sealed_value(self.cipher, wire_field, value)

    def _find(self, where: str, params: Iterable[Any]) -> list[dict[str, Any]]:
        return codec(CONFLICTS).select(self.conn, where, tuple(params))

    def _save(self, existing: list[dict[str, Any]], row: dict[str, Any]) -> int:
        if existing:
            self.conn.execute(update(CONFLICTS).where(CONFLICTS.c.id == existing[0]["id"]).values(row))
            conflict_id = existing[0]["id"]
        else:
            conflict_id = self.journal.new_id()
            codec(CONFLICTS).insert(self.conn, {"id": conflict_id, "detected_at": self.journal.now, **row})
        self.journal.audit_only(
            "sync_conflict_recorded",
            table=row["table_name"],
            record_id=row["record_id"],
            new={
                "conflict_id": conflict_id,
                "field": row["field"],
                "rule": row["rule"],
                "status": row["status"],
                "is_safety": row["is_safety"],
                "cloud_conflict_id": row.get("cloud_conflict_id"),
            },
        )
        return 1
