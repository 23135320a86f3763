"""Incidents a station reports: an INSERTED or FAULTY applicator whose change is stuck (invariant 6).

A station that quarantines such a change, or gives up on it after its attempts, queues an
operation on the `incidents` table (store/incidents.py). The cloud keeps ONE incident per stuck
operation: its id is the one the cloud gives the incident of a rejected applicator itself
(`cloud.push`, "rejected_applicator": device, op id, kind, record), so the station's report and
the cloud's own rejection land on the same row, whose details the report completes (how the
station holds the entry now, after how many attempts). The operation's own id is fixed by the
stuck entry as well, so however often it is sent, the ledger applies it once.
"""

import uuid
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cloud.schema import incidents
from sync.protocol import Code, Operation, OpResult, canonical_uuid

KINDS = frozenset({"rejected_applicator"})
# Fields of the report kept in the incident's details (the rest is the operation's own framing).
DETAIL_FIELDS = (
    "table",
    "treatment_id",
    "serial",
    "status",
    "code",
    "message",
    "queue_status",
    "attempts",
    "raised_at",
)


def record_incident(conn: Connection, device_id: str, op: Operation) -> OpResult:
    """Store (or complete) the incident the operation reports; applied once per stuck operation.

    A report the cloud cannot read is answered `rejected` (final: kept in the ledger like any)."""
    from cloud.push import INCIDENT_NAMESPACE  # one id scheme with the cloud's own incidents

    report = op.payload
    kind = str(report.get("kind"))
    if kind not in KINDS:
        return _refused(op, f"Unknown incident kind {kind!r}; this cloud knows {', '.join(sorted(KINDS))}.")
    try:
        stuck_op = canonical_uuid(str(report.get("op_id")))
    except ValueError as exc:
        return _refused(op, f"The incident names no operation: {exc}")
    record_id = str(report.get("record_id") or "")[:36] or None
    details: dict[str, Any] = {k: report[k] for k in DETAIL_FIELDS if k in report}
    details |= {"op_id": stuck_op, "device_id": device_id, "reported_by_station": True}
    key = f"{device_id}:{stuck_op}:{kind}:{record_id}"
    statement = pg_insert(incidents).values(
        id=str(uuid.uuid5(INCIDENT_NAMESPACE, key)),
        site=op.site,
        kind=kind,
        record_id=record_id,
        details=details,
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["site", "id"],
            # The cloud's own record of the rejection stays; the station's account is added to it.
            set_={"details": incidents.c.details.op("||")(statement.excluded.details)},
        )
    )
    return OpResult(op_id=op.op_id, status="applied", version=1)


def _refused(op: Operation, message: str) -> OpResult:
    return OpResult(op_id=op.op_id, status="rejected", code=Code.INVALID_OPERATION, message=message)
