"""A person's action on a change held back from the cloud: send it again.

A change the cloud refused (quarantined) or that was retried too often (needs_person) waits on the
review page (invariant 6). When its cause was fixed elsewhere (Priority's inventory corrected, the
device's sites fixed in the cloud), a person sends it again: the entry goes back to pending with its
attempts and backoff reset, under the SAME op id, so the cloud's ledger still answers a delivery it
already took with its original result (invariant 3). The entries held back because they depend on
it become sendable with it: the push order holds a dependant back only while its dependency is open
and not sendable (sync/engine.py `push_order`), so nothing else needs to change.

One command, one transaction: the reset and its audit entry (who, when, which entry, why) commit
together or not at all. Who may do it: anyone who may work at the record's site, the same rule as a
conflict's decision (store/resolution.py).
"""

from sqlalchemy import update

from store.enums import QueueStatus
from store.errors import InvalidInput, NotFound
from store.fastsql import codec
from store.guards import clean_text
from store.journal import transaction
from store.models import SyncQueueEntry
from store.resolution import _require_site as require_site
from store.station import Actor, Station
from sync.protocol import Code

QUEUE = SyncQueueEntry.__table__
HELD = (QueueStatus.QUARANTINED.value, QueueStatus.NEEDS_PERSON.value)
# Refusals only the cloud gives and keeps in its ledger for good: the same op id would get the same
# answer however often it is sent, so "send again" would only pretend to help.
FINAL_IN_CLOUD = frozenset({Code.RECORD_EXISTS, Code.ALREADY_RESOLVED, Code.SIGNATURE_UNVERIFIED})


def can_send_again(code: str | None) -> bool:
    """Whether sending a held change again can change the cloud's answer (the page hides the button)."""
    return code not in FINAL_IN_CLOUD


def send_again(station: Station, actor: Actor, op_id: str, reason: str) -> None:
    """Put a held entry back in the queue, same op id, attempts and backoff reset; audited with `reason`."""
    why = clean_text(reason, field="reason", label="The reason for sending it again", required=True)
    with transaction(station, actor) as journal:
        rows = codec(QUEUE).select(journal.conn, "op_id = ?", (op_id,))
        if not rows:
            raise NotFound("This change is not on this station.")
        entry = rows[0]
        require_site(actor, journal.conn, entry)
        if entry["status"] not in HELD:
            raise InvalidInput(
                "This change is no longer held: someone sent it again already, or the cloud has taken "
                "it. Nothing was changed; refresh the review page.",
                field="reason",
            )
        refused = entry["result"] or {}
        if not can_send_again(refused.get("code")):
            raise InvalidInput(
                f"The cloud refused this change for good ({refused.get('code')}): sent again it would get "
                "the same answer. Nothing was changed; call Alpha Tau support.",
                field="reason",
            )
        journal.conn.execute(
            update(QUEUE)
            .where(QUEUE.c.op_id == op_id, QUEUE.c.status == entry["status"])
            .values(
                status=QueueStatus.PENDING.value,
                attempts=0,
                next_attempt_at=None,
                last_error=None,
                result=None,
            )
        )
        journal.audit_only(
            "sync_op_sent_again",
            table=entry["table_name"],
            record_id=entry["record_id"],
            new={
                "op_id": op_id,
                "was": entry["status"],
                "attempts": entry["attempts"],
                "code": refused.get("code"),
                "message": refused.get("message") or entry["last_error"],
            },
            reason=why,
        )
