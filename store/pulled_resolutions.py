"""Serial clashes resolved on another station, seen here when the pull brings the outcome.

A serial in two treatments is held on every station that holds both applicators (each found it,
or the cloud said so). A person resolves it on one of them by removing the applicator from the
treatment that must not keep it (store/resolution.py); that removal reaches this station as a
pulled change. `settle_after_pull` then closes this station's rows of the clash, saying who
decided and why (the removal's `deleted_by` and `deleted_reason`), inside the page's transaction.

Kept apart from store/resolution.py because the pull (store/remote.py) calls it, and the
resolution commands call the pull's receipts: neither module imports the other.
"""

from typing import Any

from store import fastsql
from store.enums import ConflictResolution, ConflictStatus
from store.fastsql import codec
from store.journal import Journal
from store.models import SyncConflict

CONFLICTS = SyncConflict.__table__
PAIR_RULES = ("serial_in_two_treatments", "serial_scanned_twice")

_OPEN_PAIRS = (
    "SELECT id FROM sync_conflicts WHERE status = 'open' AND rule IN (?, ?)"
    " AND (record_id = ? OR json_extract(server_value, '$.applicator_id') = ?)"
)
_USE = (
    "SELECT a.deleted_at, a.deleted_by, a.deleted_reason, t.deleted_at, t.deleted_by, t.deleted_reason"
    " FROM applicators a JOIN treatments t ON t.id = a.treatment_id WHERE a.id = ?"
)


def settle_after_pull(journal: Journal, applicator_id: str) -> list[str]:
    """Close the open serial clashes involving a pulled applicator that no longer clash; the ids of
    the applicators whose receipts must be renewed."""
    touched: list[str] = []
    found = fastsql.execute(journal.conn, _OPEN_PAIRS, (*PAIR_RULES, applicator_id, applicator_id))
    for (conflict_id,) in found:
        row = codec(CONFLICTS).select(journal.conn, "id = ?", (conflict_id,))[0]
        here, there = row["record_id"], (row["server_value"] or {}).get("applicator_id")
        gone = _removed(journal, here, there)
        if gone is None:
            continue  # both still live in their treatments: the clash stands
        removed_id, by, why = gone
        journal.conn.execute(
            CONFLICTS.update()
            .where(CONFLICTS.c.id == conflict_id)
            .values(
                status=ConflictStatus.RESOLVED.value,
                resolved_at=journal.now,
                resolved_by=by or "unknown",
                resolution=(
                    ConflictResolution.KEEP_SERVER if removed_id == here else ConflictResolution.KEEP_LOCAL
                ).value,
                reason=f"Resolved on another station: {why or 'the other applicator was removed'}",
            )
        )
        journal.audit_only(
            "sync_conflict_settled_by_pull",
            table="applicators",
            record_id=here,
            new={"conflict_id": conflict_id, "removed_applicator_id": removed_id, "resolved_by": by},
            reason=why,
        )
        touched += [here, there]
    return touched


def _removed(journal: Journal, here: str, there: Any) -> tuple[str, str | None, str | None] | None:
    """(applicator id, by whom, why) of the side no longer in its treatment, or None."""
    for applicator_id in (here, there):
        rows = fastsql.execute(journal.conn, _USE, (str(applicator_id),))
        if not rows:
            return None  # not on this station: nothing can be concluded here
        a_deleted, a_by, a_why, t_deleted, t_by, t_why = rows[0]
        if a_deleted is not None:
            return str(applicator_id), a_by, a_why
        if t_deleted is not None:
            return str(applicator_id), t_by, t_why
    return None
