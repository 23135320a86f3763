"""Incidents this station raises: an INSERTED or FAULTY applicator whose change is stuck (invariant 6).

When the sync engine quarantines an entry (the cloud refused it for good, or it cannot even be put
on the wire) or gives up on it after its attempts ("needs a person"), and the entry records an
applicator INSERTED into a patient or FAULTY, the hospital must hear of it from the cloud, not
only from this laptop. The incident is queued like a change (table `incidents`, an insert), in
the same transaction as the verdict that made the entry stuck, so it is never lost and is sent
by the next round with the rest of the queue (docs/sync-protocol.md, "Incidents").

Exactly once per stuck entry, across retries and restarts:

- here: the incident's record id is derived from the stuck operation's id, and one is queued only
  if none exists for it (the verdict and the incident commit together, so a crash leaves both or
  neither);
- in the cloud: the incident row's id is derived from the device, the stuck operation and its
  record (cloud/incidents.py), the same id as the cloud's own incident for a rejected applicator,
  so a report and the cloud's own record are one incident.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from store import fastsql
from store.engine import read_transaction
from store.enums import ApplicatorStatus, OperationKind, Priority, QueueStatus
from store.fastsql import codec
from store.journal import QUEUE, Journal, transaction
from store.station import Station

KIND = "rejected_applicator"
INCIDENT_STATUSES = frozenset({ApplicatorStatus.INSERTED.value, ApplicatorStatus.FAULTY.value})
STUCK = frozenset({QueueStatus.QUARANTINED, QueueStatus.NEEDS_PERSON})
# Fixed for ever: the incident of a stuck entry has one id on every run of every version.
NAMESPACE = uuid.UUID("3b0f6f3e-5c1d-4c8e-9f4a-7d2b9e61a0c5")

_EXISTS = "SELECT 1 FROM sync_queue WHERE table_name = 'incidents' AND record_id = ? LIMIT 1"
_SITE = "SELECT site FROM treatments WHERE id = ?"
_STATUS = "SELECT status FROM applicators WHERE id = ?"
_STUCK = (
    "SELECT op_id, status, table_name, record_id, kind, result, last_error, attempts FROM sync_queue"
    " WHERE status IN ('quarantined', 'needs_person') ORDER BY device_seq"
)
_RAISED = "SELECT record_id FROM sync_queue WHERE table_name = 'incidents'"
# Stuck applicator entries whose applicator is (now) INSERTED or FAULTY, not reported yet.
_UNREPORTED = (
    "SELECT q.op_id FROM sync_queue q JOIN applicators a ON a.id = q.record_id"
    " WHERE q.table_name = 'applicators' AND q.status IN ('quarantined', 'needs_person')"
    " AND (a.status IN ('INSERTED', 'FAULTY')"
    " OR json_extract(q.payload, '$.status') IN ('INSERTED', 'FAULTY'))"
    " ORDER BY q.device_seq"
)


def incident_id(stuck_op_id: str) -> str:
    """The station's record id of the incident about one stuck entry."""
    return str(uuid.uuid5(NAMESPACE, f"{stuck_op_id}:{KIND}"))


def needs_incident(entry: Mapping[str, Any], current_status: str | None) -> bool:
    """An entry of an applicator recorded INSERTED or FAULTY, by the entry itself or since: a stuck
    insert holds back the status changes made after it, which never get an answer of their own."""
    if entry["table_name"] != "applicators":
        return False
    return entry["payload"].get("status") in INCIDENT_STATUSES or current_status in INCIDENT_STATUSES


@dataclass(frozen=True)
class StuckEntry:
    """A queue entry that needs a person: quarantined, or given up on after its attempts."""

    op_id: str
    status: str  # quarantined | needs_person
    table: str
    record_id: str
    kind: str
    code: str | None
    message: str | None
    attempts: int
    incident_raised: bool


def stuck_entries(station: Station) -> list[StuckEntry]:
    """What the review page lists as needing a person, oldest first (never hidden, never blocking)."""
    with read_transaction(station.engine) as conn:
        rows = fastsql.execute(conn, _STUCK, ())
        raised = {r[0] for r in fastsql.execute(conn, _RAISED, ())}
    found = []
    for op_id, status, table, record_id, kind, result, last_error, attempts in rows:
        answer = orjson.loads(result) if result else {}
        found.append(
            StuckEntry(
                op_id=op_id,
                status=status,
                table=table,
                record_id=record_id,
                kind=kind,
                code=answer.get("code"),
                message=answer.get("message") or last_error,
                attempts=attempts,
                incident_raised=incident_id(op_id) in raised,
            )
        )
    return found


def raise_pending(station: Station) -> int:
    """Raise the incidents still missing for stuck entries (an applicator moved to INSERTED or FAULTY
    after its insert got stuck; or a crash between two rounds); how many were raised."""
    with read_transaction(station.engine) as conn:
        raised_ids = {r[0] for r in fastsql.execute(conn, _RAISED, ())}
        candidates = [
            r for r in fastsql.execute(conn, _UNREPORTED, ()) if incident_id(r[0]) not in raised_ids
        ]
    if not candidates:  # the usual case: no write transaction at all
        return 0
    raised = 0
    with transaction(station, None) as journal:
        for (op_id,) in candidates:
            entry = codec(QUEUE).select(journal.conn, "op_id = ?", (op_id,))[0]
            answer = entry["result"] or {}
            raised += bool(
                raise_for_stuck(
                    journal,
                    entry,
                    QueueStatus(entry["status"]),
                    code=answer.get("code"),
                    message=answer.get("message") or entry["last_error"],
                    attempts=entry["attempts"],
                )
            )
    return raised


def raise_for_stuck(
    journal: Journal,
    entry: Mapping[str, Any],
    queue_status: QueueStatus,
    *,
    code: str | None,
    message: str | None,
    attempts: int,
) -> str | None:
    """Queue the incident about a stuck entry (in the caller's transaction); its op id, or None when
    the entry needs none or already has one."""
    if queue_status not in STUCK:
        return None
    payload = entry["payload"]
    current = fastsql.execute(journal.conn, _STATUS, (entry["record_id"],))
    current_status = current[0][0] if current else None
    if not needs_incident(entry, current_status):
        return None
    record_id = incident_id(entry["op_id"])
    if fastsql.execute(journal.conn, _EXISTS, (record_id,)):
        return None  # raised when the entry first got stuck: once per entry, however often it is tried
    sites = fastsql.execute(journal.conn, _SITE, (payload.get("treatment_id"),))
    report = {
        "id": record_id,
        # Unknown (the treatment is not on this station): the report is then quarantined here, shown.
        "site": sites[0][0] if sites else None,
        "kind": KIND,
        "op_id": entry["op_id"],
        "table": entry["table_name"],
        "record_id": entry["record_id"],
        "treatment_id": payload.get("treatment_id"),
        "serial": payload.get("serial_number"),
        "status": current_status or payload.get("status"),
        "code": code,
        "message": message,
        "queue_status": queue_status.value,
        "attempts": attempts,
        "raised_at": journal.now.isoformat(),
    }
    # NOTE: the journal's own queueing (store-internal): an incident is a queued record with no row
    # of a clinical table behind it, so Journal.insert (which writes one) does not fit.
    op_id = journal._enqueue(
        "incidents",
        record_id,
        OperationKind.INSERT,
        report,
        {},
        base_version=None,
        hlc=journal._tick(),
        priority=Priority.CRITICAL_TREATMENT,
        depends_on=[],  # never behind the stuck entry it reports
        treatment_id=None,  # a finalise never waits for it
    )
    journal.audit_only(
        "incident_raised",
        table=entry["table_name"],
        record_id=entry["record_id"],
        new={"incident_op_id": op_id, "stuck_op_id": entry["op_id"], "kind": KIND, "code": code},
        reason=message,
    )
    return op_id
