"""A person's decision on held conflicts, recorded by the cloud (docs/sync-protocol.md, "Manual resolution").

A station resolves a conflict with an ordinary operation (the record's fields set to the values the
person chose, or nothing changed when the cloud's value stands) that carries a `resolution`: which
conflicts it settles, how, why and who decided. `cloud.push` calls `settle` for such an operation
inside the operation's own savepoint and BEFORE the operation's change is merged, so:

- the conflicts rows the decision names end `resolved` with who, when and how, and an audit event
  keeps the reason; the same transaction applies the chosen values (a retry is answered from the
  ledger: a decision is recorded once);
- a conflict the operation's own merge raises (the cloud's value moved on since the person looked)
  is a new conflict, not settled by a decision made without seeing it;
- two people deciding the same conflict on two laptops: the first decision to arrive stands; the
  second is refused (`already_resolved`) and nothing of it is applied, so the two decisions never
  both take effect (for a serial in two treatments: never both applicators removed).

A conflict is named by the cloud's id when the station knows it (the cloud reported it), otherwise
by its place: (site, table, record, field) and the rule's family (a serial clash or a field's value),
because a conflict the station found itself while pulling has no cloud id.
"""

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from cloud import audit
from cloud.schema import conflicts
from sync.protocol import PATIENT_FIELDS, Code, Operation, OpResult, SettledConflict

# Conflicts about which applicator is where (cloud/push.py), as against a field's value.
SERIAL_RULES = frozenset(
    {"serial_in_two_treatments", "serial_scanned_twice", "not_in_inventory", "used_in_priority"}
)
SETTLEABLE = ("open", "resolved")  # an auto_resolved row was decided by a rule: nothing to settle


def settle(conn: Connection, device_id: str, op: Operation) -> OpResult | None:
    """Mark the conflicts the operation's resolution names resolved, or answer why it may not apply
    (then nothing of the operation is applied; the answer is final and kept in the ledger).

    Conflicts at sites outside the transaction's scope are invisible (row-level security) and so
    never settled from here."""
    resolution = op.resolution
    assert resolution is not None
    targets = list(resolution.settles)
    rows = conn.execute(
        select(
            conflicts.c.site,
            conflicts.c.id,
            conflicts.c.status,
            conflicts.c.resolved_by,
            conflicts.c.resolved_at,
            conflicts.c.resolution,
        )
        .where(conflicts.c.status.in_(SETTLEABLE), or_(*_matches(op.site, targets)))
        .order_by(conflicts.c.site, conflicts.c.id)
        .with_for_update()  # two decisions on one conflict arriving together: one waits for the other
    ).all()
    open_rows = [r for r in rows if r.status == "open"]
    if rows and not open_rows:
        first = rows[0]
        return OpResult(
            op_id=op.op_id,
            status="rejected",
            code=Code.ALREADY_RESOLVED,
            message=f"This conflict was already resolved by {first.resolved_by} at "
            f"{first.resolved_at:%d %b %Y %H:%M} UTC ({first.resolution}); this decision was not applied. "
            "Review the record as it is now.",
        )
    # When the person decided, by the station's clock corrected with its measured offset to ours.
    decided_at = resolution.resolved_at + timedelta(milliseconds=op.clock_offset_ms or 0)
    for row in open_rows:
        conn.execute(
            update(conflicts)
            .where(conflicts.c.site == row.site, conflicts.c.id == row.id)
            .values(
                status="resolved",
                resolved_at=decided_at,
                resolved_by=resolution.resolved_by,
                resolution=resolution.how,
            )
        )
    audit.append(
        conn,
        "conflict_resolved",
        site=op.site,
        actor=resolution.resolved_by,
        device_id=device_id,
        details=_details(op, [(r.site, r.id) for r in open_rows]),
    )
    return None


def _matches(site: str, targets: Iterable[SettledConflict]) -> list[Any]:
    found = []
    for target in targets:
        where_site = conflicts.c.site == (target.site or site)
        if target.conflict_id:
            found.append(and_(where_site, conflicts.c.id == target.conflict_id))
        family = (
            conflicts.c.rule == target.rule
            if target.rule in SERIAL_RULES
            else conflicts.c.rule.not_in(SERIAL_RULES)
        )
        found.append(
            and_(
                where_site,
                conflicts.c.table_name == target.table,
                conflicts.c.record_id == target.record_id,
                conflicts.c.field == target.field,
                family,
            )
        )
    return found


def _details(op: Operation, settled: list[tuple[str, str]]) -> dict[str, Any]:
    """What the audit keeps of a decision; a patient field's chosen value is named, never written."""
    resolution = op.resolution
    assert resolution is not None
    chosen = {
        name: "(patient field, sealed in the record)" if name in PATIENT_FIELDS else new
        for name, (_base, new) in op.changed.items()
    }
    return {
        "op_id": op.op_id,
        "table": op.table,
        "record_id": op.record_id,
        "how": resolution.how,
        "reason": resolution.reason,
        "keep_treatment_id": resolution.keep_treatment_id,
        "settled": [{"site": site, "conflict_id": conflict_id} for site, conflict_id in settled],
        "values": chosen,
        "decided_at_station": resolution.resolved_at.isoformat(),
    }
