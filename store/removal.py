"""Commands of a removal treatment: take applicators out, single seeds, the removal form."""

from datetime import date

from sqlalchemy import RowMapping, select

from store.enums import ApplicatorStatus, Priority, SeedRemovalReason, TreatmentType
from store.errors import InvalidInput, NotFound
from store.guards import APPLICATORS, TREATMENTS, clean_text, load_treatment, require_access, require_open
from store.journal import Change, Journal, transaction
from store.models import RemovedSeed
from store.removal_counts import insertion_family, removal_counts
from store.station import Actor, Station

SEEDS = RemovedSeed.__table__
REMOVABLE = (ApplicatorStatus.INSERTED.value, ApplicatorStatus.FAULTY.value)


def remove_applicator(
    station: Station,
    actor: Actor,
    *,
    removal_id: str,
    capacity: int | None = None,
    applicator_id: str | None = None,
    comment: str | None = None,
    photo_path: str | None = None,
) -> Change:
    """Mark the next applicator of a capacity group (or a chosen one) as removed."""
    with transaction(station, actor) as journal:
        removal = _open_removal(station, actor, journal, removal_id)
        family = insertion_family(journal.conn, removal["insertion_treatment_id"])
        query = select(APPLICATORS).where(
            APPLICATORS.c.treatment_id.in_(family),
            APPLICATORS.c.deleted_at.is_(None),
            APPLICATORS.c.status.in_(REMOVABLE),
            APPLICATORS.c.deployed_seeds > 0,
            ~APPLICATORS.c.is_removed,
        )
        if applicator_id is not None:
            query = query.where(APPLICATORS.c.id == applicator_id)
        elif capacity is not None:
            query = query.where(APPLICATORS.c.seed_quantity == capacity)
        else:
            raise InvalidInput("Choose which applicator group to remove from.", field="capacity")
        applicator = (
            journal.conn.execute(query.order_by(APPLICATORS.c.status_changed_at, APPLICATORS.c.id).limit(1))
            .mappings()
            .first()
        )
        if applicator is None:
            raise NotFound("Every applicator of this group has already been removed.", field="capacity")
        changes = {
            "is_removed": True,
            "removal_treatment_id": removal_id,
            "removal_time": journal.now,
            "removed_by": actor.user_id,
            "removal_comment": clean_text(comment, field="comment", label="The removal comment"),
            "removal_photo_path": clean_text(photo_path, field="photo", label="The photo path"),
        }
        return journal.update(
            APPLICATORS,
            applicator,
            changes,
            priority=Priority.APPLICATOR_REMOVAL,
            action="applicator_removed",
            treatment_id=removal_id,
            after=[("treatments", removal_id)],
        )


def remove_single_seed(
    station: Station,
    actor: Actor,
    *,
    removal_id: str,
    reason: SeedRemovalReason,
    reason_text: str | None = None,
) -> Change:
    """Record one seed removed on its own, with its reason."""
    try:
        why = SeedRemovalReason(reason)
    except ValueError:
        raise InvalidInput("Choose why the seed was removed.", field="reason") from None
    text = clean_text(
        reason_text, field="reason_text", label="The description", required=why is SeedRemovalReason.OTHER
    )
    with transaction(station, actor) as journal:
        _open_removal(station, actor, journal, removal_id)
        values = {
            "id": journal.new_id(),
            "treatment_id": removal_id,
            "reason": why.value,
            "reason_text": text,
            "removed_at": journal.now,
            "removed_by": actor.user_id,
        }
        return journal.insert(
            SEEDS,
            values,
            priority=Priority.APPLICATOR_REMOVAL,
            action="single_seed_removed",
            treatment_id=removal_id,
            after=[("treatments", removal_id)],
        )


def fill_removal_form(
    station: Station,
    actor: Actor,
    *,
    removal_id: str,
    removal_date: date,
    all_same_day: bool,
    other_date: date | None = None,
    other_reason: str | None = None,
    lost: int = 0,
    retrieved: int = 0,
    in_tissue: int = 0,
    other: int = 0,
    other_text: str | None = None,
) -> Change:
    """Save the removal form; the four categories must explain exactly the seeds not accounted for."""
    amounts = {"gap_lost": lost, "gap_retrieved": retrieved, "gap_in_tissue": in_tissue, "gap_other": other}
    for name, amount in amounts.items():
        if amount is None or amount < 0:
            raise InvalidInput("Amounts cannot be negative.", field=name)
    reason = clean_text(other_reason, field="other_reason", label="The reason")
    if not all_same_day and (other_date is None or reason is None):
        raise InvalidInput(
            "Give the other removal date and the reason not everything came out the same day.",
            field="other_date",
        )
    description = clean_text(other_text, field="gap_other_text", label="The description", required=other > 0)
    with transaction(station, actor) as journal:
        removal = _open_removal(station, actor, journal, removal_id)
        counts = removal_counts(journal.conn, removal)
        explained = sum(amounts.values())
        if explained != abs(counts.gap):
            raise InvalidInput(
                f"{counts.removed} seeds removed of {counts.deployed} deployed: "
                f"the difference is {abs(counts.gap)}, "
                f"but the categories add up to {explained}.",
                field="gap_lost",
            )
        if counts.gap < 0 and other != explained:
            raise InvalidInput(
                "More seeds were removed than deployed; explain the extra seeds under 'other'.",
                field="gap_other",
            )
        changes = {
            "removal_date": removal_date,
            "removal_all_same_day": all_same_day,
            "removal_other_date": None if all_same_day else other_date,
            "removal_other_reason": None if all_same_day else reason,
            **amounts,
            "gap_other_text": description,
        }
        return journal.update(
            TREATMENTS,
            removal,
            changes,
            priority=Priority.APPLICATOR_REMOVAL,
            action="removal_form_saved",
            treatment_id=removal_id,
        )


def _open_removal(station: Station, actor: Actor, journal: Journal, removal_id: str) -> RowMapping:
    removal = load_treatment(journal.conn, removal_id)
    require_access(actor, removal)
    if removal["type"] != TreatmentType.REMOVAL:
        raise InvalidInput("This is not a removal treatment.")
    require_open(station, removal)
    return removal
