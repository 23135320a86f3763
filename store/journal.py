"""The one way a command writes: the record change, its sync-queue entry and its audit entry, together.

Invariant 2 says no record change exists without its queue entry and its audit entry, and no entry
without its change. Commands therefore never touch clinical tables directly: they open a
`transaction()` and call `Journal.insert` / `Journal.update`, which write all three inside the same
SQLite transaction and advance the device's counters (queue sequence, hybrid logical clock, audit
hash chain) in the single `device_state` row, also in that transaction.
"""

import hashlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table

from store import fastsql
from store.clock import HLC, to_ms
from store.enums import OperationKind, QueueStatus, RowSyncStatus
from store.errors import InvalidInput
from store.fastsql import codec
from store.models import AuditLog, DeviceState, SyncQueueEntry
from store.station import Actor, Station
from store.types import dumps

QUEUE = SyncQueueEntry.__table__
AUDIT = AuditLog.__table__
DEVICE = DeviceState.__table__

# Local bookkeeping that is not part of what the cloud receives.
_LOCAL_ONLY = frozenset({"usage", "sync_status", "cloud_version", "local_version"})
_OPEN_QUEUE_STATES = (
    QueueStatus.PENDING,
    QueueStatus.IN_FLIGHT,
    QueueStatus.QUARANTINED,
    QueueStatus.NEEDS_PERSON,
)

_OPEN = ", ".join(f"'{s.value}'" for s in _OPEN_QUEUE_STATES)
_NEWEST_OPEN_OP = (
    f"SELECT op_id FROM sync_queue WHERE table_name = ? AND record_id = ? AND status IN ({_OPEN})"
    " ORDER BY device_seq DESC LIMIT 1"
)
_OPEN_OPS_OF_TREATMENT = (
    f"SELECT op_id FROM sync_queue WHERE treatment_id = ? AND status IN ({_OPEN}) ORDER BY device_seq"
)
_SAVE_DEVICE = (
    "UPDATE device_state SET last_device_seq = ?, last_audit_seq = ?, last_audit_hash = ?,"
    " hlc_wall_ms = ?, hlc_counter = ? WHERE id = 1"
)


@dataclass
class Change:
    """What one journalled write did, for the caller and for tests."""

    op_id: str
    record: dict[str, Any]


class Journal:
    """Writes through one open transaction on behalf of one actor."""

    def __init__(self, station: Station, actor: Actor | None, conn: Connection) -> None:
        self.station = station
        self.actor = actor
        self.conn = conn
        self.now: datetime = station.now()
        state = codec(DEVICE).select(conn, "id = 1", ())[0]
        self._device_id: str = state["device_id"]
        self._device_seq: int = state["last_device_seq"]
        self._audit_seq: int = state["last_audit_seq"]
        self._audit_hash: str = state["last_audit_hash"]
        self._hlc = HLC(state["hlc_wall_ms"], state["hlc_counter"])
        self._offset_ms: int | None = state["clock_offset_ms"]
        self._dirty = False

    @property
    def user_id(self) -> str | None:
        return self.actor.user_id if self.actor else None

    def new_id(self) -> str:
        return str(uuid.uuid4())

    # --- journalled writes -------------------------------------------------------------------
    def insert(
        self,
        table: Table,
        values: Mapping[str, Any],
        *,
        priority: int,
        action: str,
        treatment_id: str | None,
        after: Iterable[tuple[str, str]] = (),
    ) -> Change:
        """Insert a new clinical row; `after` names the (table, id) rows whose pending changes go first."""
        hlc = self._tick()
        record = {
            **values,
            "device_id": self._device_id,
            "local_version": 1,
            "sync_status": RowSyncStatus.PENDING.value,
            "hlc": hlc,
            "created_at": self.now,
            "updated_at": self.now,
        }
        codec(table).insert(self.conn, record)
        depends_on = self._open_ops(after)
        payload = _payload(record)
        # An insert has no base values: its payload is the whole change.
        op_id = self._enqueue(
            table.name,
            record["id"],
            OperationKind.INSERT,
            payload,
            {},
            base_version=None,
            hlc=hlc,
            priority=priority,
            depends_on=depends_on,
            treatment_id=treatment_id,
        )
        self._audit(action, table.name, record["id"], op_id, old=None, new=payload)
        return Change(op_id, record)

    def update(
        self,
        table: Table,
        before: Mapping[str, Any],
        changes: Mapping[str, Any],
        *,
        priority: int,
        action: str,
        treatment_id: str | None,
        after: Iterable[tuple[str, str]] = (),
        after_ops: Iterable[str] = (),
        reason: str | None = None,
    ) -> Change:
        """Change fields of an existing row read in this transaction (`before` is its full row)."""
        changed = {k: v for k, v in changes.items() if before.get(k) != v}
        if not changed:
            raise InvalidInput("Nothing was changed: the record is already saved this way.")
        hlc = self._tick()
        meta = {
            "local_version": before["local_version"] + 1,
            "sync_status": RowSyncStatus.PENDING.value,
            "hlc": hlc,
            # Always forward, so the database's own updated_at trigger (for writes that forget it)
            # never replaces the value the queue entry and the audit entry carry.
            "updated_at": max(self.now, before["updated_at"] + timedelta(microseconds=1)),
        }
        codec(table).update(self.conn, before["id"], {**changed, **meta})
        record = {**before, **changed, **meta}
        depends_on = self._open_ops([(table.name, before["id"]), *after])
        depends_on += [op for op in after_ops if op not in depends_on]
        field_changes = {k: [before.get(k), v] for k, v in changed.items()}
        op_id = self._enqueue(
            table.name,
            before["id"],
            OperationKind.UPDATE,
            _payload(record),
            field_changes,
            base_version=before.get("cloud_version"),
            hlc=hlc,
            priority=priority,
            depends_on=depends_on,
            treatment_id=treatment_id,
        )
        self._audit(
            action,
            table.name,
            before["id"],
            op_id,
            old={k: before.get(k) for k in changed},
            new=dict(changed),
            reason=reason,
        )
        return Change(op_id, record)

    def audit_only(
        self,
        action: str,
        *,
        table: str | None = None,
        record_id: str | None = None,
        new: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        """An audited event that changes no clinical record (a bundle installed, a login)."""
        self._audit(action, table, record_id, None, old=None, new=new, reason=reason)

    def remote_write(
        self,
        table: Table,
        values: Mapping[str, Any],
        *,
        before: Mapping[str, Any] | None,
        action: str,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
    ) -> None:
        """Write a change that came from the cloud: audited like every change, but never queued.

        The cloud already holds it; a queue entry would send it back as a new operation. `values`
        is the whole row for an insert (`before` None) or the changed columns of `before`'s row.
        """
        if before is None:
            codec(table).insert(self.conn, values)
            record_id = values["id"]
        else:
            record_id = before["id"]
            codec(table).update(self.conn, record_id, values)
            keep_updated_at(self.conn, table, record_id, values.get("updated_at", before["updated_at"]))
        self._audit(action, table.name, record_id, None, old=old, new=new)

    def observe(self, stamp: str) -> None:
        """Move this device's clock past a stamp seen from another device, so that its later edits
        are later by the hybrid logical clock whatever its wall clock says (invariant 8)."""
        self._hlc = self._hlc.receive(HLC.parse(stamp), to_ms(self.now))
        self._dirty = True

    def open_ops_for_treatment(self, treatment_id: str) -> list[str]:
        """Every unconfirmed operation of a treatment's rows: a finalise must reach the cloud after them."""
        return [row[0] for row in fastsql.execute(self.conn, _OPEN_OPS_OF_TREATMENT, (treatment_id,))]

    # --- internals ---------------------------------------------------------------------------
    def _tick(self) -> str:
        self._hlc = self._hlc.tick(to_ms(self.now))
        self._dirty = True
        return self._hlc.stamp(self._device_id)

    def _open_ops(self, records: Iterable[tuple[str, str]]) -> list[str]:
        """The newest unconfirmed operation of each named row."""
        found: list[str] = []
        for table_name, record_id in records:
            rows = fastsql.execute(self.conn, _NEWEST_OPEN_OP, (table_name, record_id))
            if rows and rows[0][0] not in found:
                found.append(rows[0][0])
        return found

    def _enqueue(
        self,
        table_name: str,
        record_id: str,
        kind: OperationKind,
        payload: dict[str, Any],
        changed: dict[str, Any],
        *,
        base_version: int | None,
        hlc: str,
        priority: int,
        depends_on: list[str],
        treatment_id: str | None,
    ) -> str:
        self._device_seq += 1
        op_id = str(uuid.uuid4())
        codec(QUEUE).insert(
            self.conn,
            {
                "op_id": op_id,
                "device_id": self._device_id,
                "device_seq": self._device_seq,
                "table_name": table_name,
                "record_id": record_id,
                "treatment_id": treatment_id,
                "kind": kind.value,
                "payload": payload,
                "changed_fields": changed,
                "base_version": base_version,
                "hlc": hlc,
                "clock_offset_ms": self._offset_ms,
                "priority": priority,
                "depends_on": depends_on,
                "status": QueueStatus.PENDING.value,
                "attempts": 0,
                "created_at": self.now,
            },
        )
        return op_id

    def _audit(
        self,
        action: str,
        table_name: str | None,
        record_id: str | None,
        op_id: str | None,
        *,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
        reason: str | None = None,
    ) -> None:
        self._audit_seq += 1
        entry = {
            "event_id": str(uuid.uuid4()),
            "device_id": self._device_id,
            "device_seq": self._audit_seq,
            "user_id": self.user_id,
            "action": action,
            "table_name": table_name,
            "record_id": record_id,
            "op_id": op_id,
            "old_values": old,
            "new_values": new,
            "reason": reason,
            "created_at": self.now,
            "prev_hash": self._audit_hash,
        }
        entry["hash"] = audit_hash(entry)
        self._audit_hash = entry["hash"]
        self._dirty = True
        codec(AUDIT).insert(self.conn, entry)

    def flush(self) -> None:
        if self._dirty:
            fastsql.execute(
                self.conn,
                _SAVE_DEVICE,
                (self._device_seq, self._audit_seq, self._audit_hash, self._hlc.wall_ms, self._hlc.counter),
            )


def keep_updated_at(conn: Connection, table: Table, record_id: str, updated_at: datetime) -> None:
    """Give a row back the updated_at it should have after an UPDATE that did not change it.

    The touch trigger (store/migrations/guards.py) stamps the wall clock on any UPDATE that leaves
    updated_at as it was. Sync bookkeeping and the cloud's values are not local edits: they must
    keep the clinical timestamp (a continuation's 24-hour window is measured from it).
    """
    stamp = codec(table).bind("updated_at", updated_at)
    fastsql.execute(
        conn,
        f"UPDATE {table.name} SET updated_at = ? WHERE id = ? AND updated_at IS NOT ?",
        (stamp, record_id, stamp),
    )


def audit_hash(entry: Mapping[str, Any]) -> str:
    """The chain link: SHA-256 over the previous hash and this entry's canonical JSON."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "id")}
    return hashlib.sha256(dumps(body).encode()).hexdigest()


def verify_audit_chain(rows: Iterable[Mapping[str, Any]], genesis: str = "0" * 64) -> int | None:
    """The device_seq of the first entry whose link is broken, or None when the chain holds."""
    previous = genesis
    for row in rows:
        if row["prev_hash"] != previous or audit_hash(row) != row["hash"]:
            return row["device_seq"]
        previous = row["hash"]
    return None


@contextmanager
def transaction(station: Station, actor: Actor | None) -> Iterator[Journal]:
    """One command's atomic unit: all of its journalled writes commit together or none do."""
    with station.writer.begin() as conn:
        journal = Journal(station, actor, conn)
        yield journal
        journal.flush()


def _payload(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _LOCAL_ONLY}
