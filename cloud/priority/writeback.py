"""Writing treatment results back to Priority: queued with the change, sent later, retried.

A push records what Priority must learn (a terminal applicator's use, an order's new status) in
`writeback_queue` inside the push's own transaction, so nothing is lost and the push never waits
for Priority. A background job sends the queue; a failure is retried with backoff and shown to
admins (`last_error`), and never blocks clinical work.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from cloud.db import SiteScope, scoped_transaction
from cloud.priority.adapter import PriorityClient, PriorityFailure
from cloud.schema import priority_applicators, writeback_queue
from store.crypto import PatientCipher

USAGE_BY_STATUS = {"INSERTED": "Full use", "FAULTY": "Faulty"}
TERMINAL = frozenset({"INSERTED", "FAULTY", "DISPOSED", "DISCHARGED", "DEPLOYMENT_FAILURE"})
ORDER_STATUS_BY_TYPE = {"insertion": "Performed", "removal": "Removed"}
MAX_BACKOFF = timedelta(hours=1)
BATCH = 50


@dataclass
class WritebackReport:
    sent: int = 0
    failed: int = 0


def enqueue_applicator(conn: Connection, site: str, record: dict[str, Any]) -> bool:
    """Queue a terminal applicator's use for its Priority order line; False when nothing to send."""
    if record.get("status") not in TERMINAL:
        return False
    line = conn.execute(
        select(priority_applicators.c.data).where(
            priority_applicators.c.site == site,
            priority_applicators.c.serial == line_serial(record),
        )
    ).scalar()
    payload = applicator_payload(record, line)
    if payload is None:
        return False
    _enqueue(conn, site, "applicator", payload)
    return True


def line_serial(record: dict[str, Any]) -> str:
    """The priority_applicators serial an applicator record's order line is kept under."""
    return str(record.get("serial_number", "")).upper()


def applicator_payload(record: dict[str, Any], line: dict[str, Any] | None) -> dict[str, Any] | None:
    """What Priority must learn of a terminal applicator on its order line (`line`: the
    priority_applicators data of `line_serial(record)`); None when there is nothing to send.
    (Pure, so that a push batch can queue many at once: cloud/push.py.)"""
    if record.get("status") not in TERMINAL:
        return None
    if not line or line.get("priority_order") is None or line.get("kline") is None:
        return None  # an applicator Priority does not list (emergency stock): nothing to write
    return {
        "order": line["priority_order"],
        "kline": line["kline"],
        "usage": USAGE_BY_STATUS.get(record["status"], "No Use"),
        "deployed_seeds": int(record.get("deployed_seeds") or 0),
        "comments": record.get("comments"),
        "insertion_date": record.get("status_changed_at"),
    }


def enqueue_order_status(conn: Connection, site: str, record: dict[str, Any], cipher: PatientCipher) -> int:
    """Queue the status of every Priority order of a completed treatment (Performed, Removed)."""
    payloads = order_status_payloads(record, cipher)
    for payload in payloads:
        _enqueue(conn, site, "order_status", payload)
    return len(payloads)


def order_status_payloads(record: dict[str, Any], cipher: PatientCipher) -> list[dict[str, Any]]:
    """The status each Priority order of a completed treatment (`record` as stored) must get."""
    status = ORDER_STATUS_BY_TYPE.get(record.get("type", ""))
    subject = cipher.decrypt(record.get("subject_id_enc")) if record.get("subject_id_enc") else None
    if not record.get("is_complete") or status is None or not subject or record.get("needs_reconciliation"):
        return []
    return [{"order": name, "status": status} for name in subject.split("+") if name]


def send_due(engine: Engine, client: PriorityClient, *, now: datetime | None = None) -> WritebackReport:
    """Send what is due, oldest first; each row is done, or retried later with a longer wait."""
    now = now or datetime.now(UTC)
    report = WritebackReport()
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        due = (
            conn.execute(
                select(writeback_queue)
                .where(writeback_queue.c.done_at.is_(None), writeback_queue.c.next_attempt_at <= now)
                .order_by(writeback_queue.c.created_at)
                .limit(BATCH)
                .with_for_update(skip_locked=True)  # two workers never send the same row
            )
            .mappings()
            .all()
        )
        for row in due:
            try:
                _send(client, row["kind"], row["payload"])
            except (PriorityFailure, ValueError) as exc:
                report.failed += 1
                attempts = row["attempts"] + 1
                conn.execute(
                    update(writeback_queue)
                    .where(writeback_queue.c.site == row["site"], writeback_queue.c.id == row["id"])
                    .values(
                        attempts=attempts,
                        last_error=f"{type(exc).__name__}: {exc}",
                        next_attempt_at=now + min(MAX_BACKOFF, timedelta(seconds=30 * 2**attempts)),
                    )
                )
                continue
            report.sent += 1
            conn.execute(
                update(writeback_queue)
                .where(writeback_queue.c.site == row["site"], writeback_queue.c.id == row["id"])
                .values(done_at=now, last_error=None)
            )
    return report


def _send(client: PriorityClient, kind: str, payload: dict[str, Any]) -> None:
    if kind == "applicator":
        moment = payload.get("insertion_date")
        client.write_back_applicator(
            payload["order"],
            int(payload["kline"]),
            usage=payload["usage"],
            deployed_seeds=int(payload["deployed_seeds"]),
            comments=payload.get("comments"),
            insertion_date=datetime.fromisoformat(moment) if isinstance(moment, str) else None,
        )
    else:
        client.write_back_order_status(payload["order"], payload["status"])


def _enqueue(conn: Connection, site: str, kind: str, payload: dict[str, Any]) -> None:
    conn.execute(writeback_queue.insert().values(id=str(uuid.uuid4()), site=site, kind=kind, payload=payload))
