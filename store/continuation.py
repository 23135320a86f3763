"""A continuation takes over its parent's opened or loaded applicators (domain.md, "continued").

The applicator is the same physical one, already checked when the parent scanned it, so it is not
scanned again: it gets a row in the continuation with the status it had, `reused_from_id` naming
the parent's row and `scan_outcome` 'reused'. The cloud and the sync engine know such a pair is one
applicator moving on, not one serial in two treatments (cloud/push.py, store/remote.py `_clash`).
Terminal applicators stay where they are: seeds in a patient or a discarded applicator never move.
"""

from typing import Any

from sqlalchemy import select

from store.enums import ApplicatorStatus, Priority
from store.errors import InvalidInput
from store.guards import (
    APPLICATORS,
    live_applicators,
    load_applicator,
    load_treatment,
    require_access,
    require_open,
)
from store.journal import Change, transaction
from store.station import Actor, Station

REUSABLE = (ApplicatorStatus.OPENED.value, ApplicatorStatus.LOADED.value)

# What the continuation's row copies from the parent's: the applicator's identity and its state.
_COPIED = (
    "serial_number",
    "gtin",
    "lot",
    "expiry_date",
    "catalogue_number",
    "applicator_type",
    "seed_quantity",
    "seed_length",
    "status",
    "bundle_version",
)


def reusable_applicators(station: Station, actor: Actor, *, treatment_id: str) -> list[dict[str, Any]]:
    """The parent's opened or loaded applicators this continuation has not taken over yet."""
    with station.engine.connect() as conn, conn.begin():
        treatment = load_treatment(conn, treatment_id)
        require_access(actor, treatment)
        parent_id = treatment["parent_treatment_id"]
        if parent_id is None:
            return []
        taken = set(
            conn.execute(
                select(APPLICATORS.c.reused_from_id).where(
                    APPLICATORS.c.reused_from_id.is_not(None), APPLICATORS.c.deleted_at.is_(None)
                )
            ).scalars()
        )
        return [
            a for a in live_applicators(conn, [parent_id]) if a["status"] in REUSABLE and a["id"] not in taken
        ]


def reuse_applicator(
    station: Station, actor: Actor, *, treatment_id: str, parent_applicator_id: str
) -> Change:
    """Take one of the parent's opened or loaded applicators into this continuation."""
    with transaction(station, actor) as journal:
        treatment = load_treatment(journal.conn, treatment_id)
        require_access(actor, treatment)
        require_open(station, treatment)
        if treatment["parent_treatment_id"] is None:
            raise InvalidInput("Only a continuation takes over applicators of an earlier insertion.")
        original = load_applicator(journal.conn, parent_applicator_id)
        if original["treatment_id"] != treatment["parent_treatment_id"]:
            raise InvalidInput("This applicator is not from the insertion this treatment continues.")
        if original["status"] not in REUSABLE:
            status = ApplicatorStatus(original["status"]).label.lower()
            raise InvalidInput(
                f"Applicator {original['serial_number']} is {status}: only opened or loaded applicators "
                "can be used again."
            )
        already = journal.conn.execute(
            select(APPLICATORS.c.treatment_id).where(
                APPLICATORS.c.reused_from_id == parent_applicator_id, APPLICATORS.c.deleted_at.is_(None)
            )
        ).first()
        if already is not None:
            raise InvalidInput(f"Applicator {original['serial_number']} has already been taken over.")
        here = journal.conn.execute(
            select(APPLICATORS.c.id).where(
                APPLICATORS.c.treatment_id == treatment_id,
                APPLICATORS.c.serial_number == original["serial_number"],
                APPLICATORS.c.deleted_at.is_(None),
            )
        ).first()
        if here is not None:
            raise InvalidInput(f"Applicator {original['serial_number']} is already in this treatment.")
        values = {key: original[key] for key in _COPIED} | {
            "id": journal.new_id(),
            "treatment_id": treatment_id,
            "deployed_seeds": 0,
            "comments": None,
            "scanned_at": journal.now,
            "scanned_by": actor.user_id,
            "status_changed_at": journal.now,
            "scan_outcome": "reused",
            "scan_warnings": [],
            "reused_from_id": parent_applicator_id,
            "is_removed": False,
        }
        return journal.insert(
            APPLICATORS,
            values,
            priority=Priority.NEW_APPLICATOR,
            action="applicator_reused",
            treatment_id=treatment_id,
            after=[("treatments", treatment_id), ("applicators", parent_applicator_id)],
        )
