"""Commands on applicators already in a treatment: status moves, packages, amendments, details."""

from typing import Any

from sqlalchemy import RowMapping, func, select

from store.enums import ApplicatorStatus, Indication, Priority, allowed_moves
from store.errors import ConfirmationRequired, InvalidInput, NotPermitted, TransitionNotAllowed
from store.guards import (
    APPLICATORS,
    clean_text,
    load_applicator,
    load_treatment,
    require_access,
    require_open,
)
from store.journal import Change, transaction
from store.models import ApplicatorPackage
from store.station import Actor, Station

PACKAGES = ApplicatorPackage.__table__
PACKAGE_SIZE = 4


def change_status(
    station: Station,
    actor: Actor,
    *,
    applicator_id: str,
    status: ApplicatorStatus,
    comment: str | None = None,
    deployed_seeds: int | None = None,
    confirm_permanent: bool = False,
) -> Change:
    """Move an applicator along its indication's workflow (domain.md, "Allowed moves")."""
    target = _status(status)
    with transaction(station, actor) as journal:
        applicator = load_applicator(journal.conn, applicator_id)
        treatment = load_treatment(journal.conn, applicator["treatment_id"])
        require_access(actor, treatment)
        require_open(station, treatment, unused_applicator=True)
        current = ApplicatorStatus(applicator["status"])
        allowed = allowed_moves(Indication(treatment["indication"]), current)
        if target not in allowed:
            raise TransitionNotAllowed(_refusal(current, target, allowed), field="status")
        changes = _status_fields(applicator, target, comment, deployed_seeds)
        if target.is_terminal and not confirm_permanent:
            raise ConfirmationRequired(
                f"{target.label} is permanent: applicator {applicator['serial_number']} can never change "
                "status again. Confirm to continue."
            )
        changes["status_changed_at"] = journal.now
        return journal.update(
            APPLICATORS,
            applicator,
            changes,
            priority=Priority.ROUTINE,
            action="applicator_status_changed",
            treatment_id=treatment["id"],
        )


def update_details(
    station: Station,
    actor: Actor,
    *,
    applicator_id: str,
    comment: str | None = None,
    photo_path: str | None = None,
) -> Change:
    """Record a comment or a photo for an applicator (allowed while the treatment is open)."""
    with transaction(station, actor) as journal:
        applicator = load_applicator(journal.conn, applicator_id)
        treatment = load_treatment(journal.conn, applicator["treatment_id"])
        require_access(actor, treatment)
        require_open(station, treatment)
        changes: dict[str, Any] = {}
        if comment is not None:
            text = clean_text(comment, field="comment", label="The comment")
            if text is None and ApplicatorStatus(applicator["status"]).needs_comment:
                raise InvalidInput("This status needs a comment; it cannot be emptied.", field="comment")
            changes["comments"] = text
        if photo_path is not None:
            changes["photo_path"] = clean_text(photo_path, field="photo", label="The photo path")
        if all(applicator[k] == v for k, v in changes.items()):
            raise InvalidInput("Nothing was changed.")
        return journal.update(
            APPLICATORS,
            applicator,
            changes,
            priority=Priority.ROUTINE,
            action="applicator_details_changed",
            treatment_id=treatment["id"],
        )


def create_package(
    station: Station, actor: Actor, *, treatment_id: str, applicator_ids: list[str]
) -> list[Change]:
    """Label four OPENED applicators of one capacity as the next package (P1, P2, ...) and load them."""
    if len(set(applicator_ids)) != PACKAGE_SIZE:
        raise InvalidInput(
            f"A package holds exactly {PACKAGE_SIZE} different applicators.", field="applicators"
        )
    with transaction(station, actor) as journal:
        treatment = load_treatment(journal.conn, treatment_id)
        require_access(actor, treatment)
        require_open(station, treatment)
        if treatment["indication"] == Indication.SKIN:
            raise InvalidInput("Skin treatments do not use packages.", field="applicators")
        members = [load_applicator(journal.conn, a) for a in applicator_ids]
        if any(m["treatment_id"] != treatment_id for m in members):
            raise InvalidInput(
                "Every applicator of a package must be in this treatment.", field="applicators"
            )
        not_opened = [m["serial_number"] for m in members if m["status"] != ApplicatorStatus.OPENED]
        if not_opened:
            raise InvalidInput(
                f"Only opened applicators can be packaged: {', '.join(not_opened)}.", field="applicators"
            )
        if any(m["package_id"] for m in members):
            raise InvalidInput("An applicator can be in only one package.", field="applicators")
        capacities = {m["seed_quantity"] for m in members}
        if len(capacities) != 1:
            raise InvalidInput(
                "The applicators of a package must hold the same number of seeds.", field="applicators"
            )
        count = journal.conn.execute(
            select(func.count()).where(PACKAGES.c.treatment_id == treatment_id)
        ).scalar_one()
        package = journal.insert(
            PACKAGES,
            {
                "id": journal.new_id(),
                "treatment_id": treatment_id,
                "label": f"P{count + 1}",
                "capacity": capacities.pop(),
                "created_by": actor.user_id,
            },
            priority=Priority.ROUTINE,
            action="package_created",
            treatment_id=treatment_id,
            after=[("treatments", treatment_id)],
        )
        changes = [package]
        for member in members:
            changes.append(
                journal.update(
                    APPLICATORS,
                    member,
                    {
                        "status": ApplicatorStatus.LOADED.value,
                        "package_id": package.record["id"],
                        "status_changed_at": journal.now,
                    },
                    priority=Priority.ROUTINE,
                    action="applicator_packaged",
                    treatment_id=treatment_id,
                    after=[("applicator_packages", package.record["id"])],
                )
            )
        return changes


def amend_status(
    station: Station,
    actor: Actor,
    *,
    applicator_id: str,
    status: ApplicatorStatus,
    reason: str,
    comment: str | None = None,
    deployed_seeds: int | None = None,
) -> Change:
    """Correct a mistaken terminal status: a supervisor, a reason, and the audit trail (domain.md)."""
    target = _status(status)
    if actor.role not in station.settings.supervisor_roles:
        raise NotPermitted("Only a supervisor can correct a final status.")
    why = clean_text(reason, field="reason", label="The reason for the correction", required=True)
    with transaction(station, actor) as journal:
        applicator = load_applicator(journal.conn, applicator_id)
        treatment = load_treatment(journal.conn, applicator["treatment_id"])
        require_access(actor, treatment)
        current = ApplicatorStatus(applicator["status"])
        if not current.is_terminal:
            raise InvalidInput(
                "Only a final status is corrected by amendment; change this one normally.", field="status"
            )
        if target == current:
            raise InvalidInput(f"The applicator is already {target.label.lower()}.", field="status")
        if target not in _statuses_of(Indication(treatment["indication"])):
            raise TransitionNotAllowed(
                f"{target.label} is not used for this kind of procedure.", field="status"
            )
        if applicator["is_removed"]:
            raise InvalidInput("This applicator has been removed; its status can no longer be corrected.")
        changes = _status_fields(applicator, target, comment, deployed_seeds)
        changes |= {
            "status_changed_at": journal.now,
            "amended_at": journal.now,
            "amended_by": actor.user_id,
            "amendment_reason": why,
        }
        return journal.update(
            APPLICATORS,
            applicator,
            changes,
            priority=Priority.ROUTINE,
            action="applicator_status_amended",
            treatment_id=treatment["id"],
            reason=why,
        )


def _status(value: ApplicatorStatus | str) -> ApplicatorStatus:
    try:
        return ApplicatorStatus(value)
    except ValueError:
        raise InvalidInput(f"{value!r} is not an applicator status.", field="status") from None


def _status_fields(
    applicator: RowMapping, target: ApplicatorStatus, comment: str | None, deployed_seeds: int | None
) -> dict[str, Any]:
    capacity = applicator["seed_quantity"]
    text = clean_text(comment, field="comment", label="The comment")
    if target.needs_comment and text is None and not applicator["comments"]:
        raise InvalidInput(
            f"Say why the applicator is {target.label.lower()} (a comment is required).", field="comment"
        )
    if target is ApplicatorStatus.FAULTY:
        if deployed_seeds is None:
            raise InvalidInput(
                f"Enter how many seeds were deployed (0 to {capacity}).", field="deployed_seeds"
            )
        if not 0 <= deployed_seeds <= capacity:
            raise InvalidInput(f"Seeds deployed must be between 0 and {capacity}.", field="deployed_seeds")
        deployed = deployed_seeds
    else:
        deployed = capacity if target is ApplicatorStatus.INSERTED else 0
        if deployed_seeds is not None and deployed_seeds != deployed:
            hint = " Record a partial deployment as Faulty." if target is ApplicatorStatus.INSERTED else ""
            raise InvalidInput(
                f"{target.label} means {deployed} seeds deployed.{hint}", field="deployed_seeds"
            )
    changes: dict[str, Any] = {"status": target.value, "deployed_seeds": deployed}
    if text is not None:
        changes["comments"] = text
    return changes


def _refusal(
    current: ApplicatorStatus, target: ApplicatorStatus, allowed: frozenset[ApplicatorStatus]
) -> str:
    if current.is_terminal:
        return (
            f"{current.label} is a final status and cannot change. A supervisor can correct a mistake "
            "with an amendment."
        )
    options = ", ".join(sorted(s.label for s in allowed)) or "none"
    return (
        f"An applicator that is {current.label.lower()} cannot become {target.label.lower()}; "
        f"allowed: {options}."
    )


def _statuses_of(indication: Indication) -> set[ApplicatorStatus]:
    from store.enums import TRANSITIONS

    statuses: set[ApplicatorStatus] = set()
    for source, targets in TRANSITIONS[indication].items():
        statuses |= {source, *targets}
    return statuses
