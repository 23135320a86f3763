"""Commands on whole treatments: start (insertion, emergency, removal, continuation), finalise, delete."""

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, func, select

from store.enums import (
    TERMINAL_STATUSES,
    ConflictStatus,
    Indication,
    Priority,
    Role,
    SignatureMode,
    SignatureStatus,
    TreatmentType,
)
from store.errors import ConfirmationRequired, InvalidInput, NotPermitted, TreatmentLocked
from store.guards import (
    APPLICATORS,
    TREATMENTS,
    clean_text,
    live_applicators,
    load_treatment,
    require_access,
    require_open,
)
from store.journal import Change, transaction
from store.models import SyncConflict
from store.removal_counts import removal_counts
from store.station import Actor, Station
from store.validation_cache import ScheduledOrder, find_order

CONFLICTS = SyncConflict.__table__


@dataclass(frozen=True)
class EmergencyPatient:
    """An insertion started without a Priority order (Decision: flagged for reconciliation)."""

    subject_id: str  # the hospital's identifier for the patient
    patient_label: str | None = None
    indication: Indication = Indication.UNKNOWN
    planned_seeds: int | None = None
    activity_per_seed: float | None = None


def start_insertion(
    station: Station,
    actor: Actor,
    *,
    site: str,
    day: date,
    surgeon: str,
    order_names: list[str] | None = None,
    emergency: EmergencyPatient | None = None,
) -> Change:
    """Start an insertion for the patient of one day's order(s), or an emergency one without an order."""
    if not actor.may_access(site):
        raise NotPermitted(f"You are not authorised for site {site}.", field="site")
    _require_day_near(station, day)
    surgeon_name = clean_text(surgeon, field="surgeon", label="The surgeon", required=True)
    if (order_names is None) == (emergency is None):
        raise InvalidInput(
            "Choose the patient's order, or start an emergency insertion without one.", field="order"
        )
    with transaction(station, actor) as journal:
        if emergency is not None:
            values = _emergency_values(station, emergency)
        else:
            values = _order_values(station, journal.conn, site, day, order_names or [])
        _refuse_duplicate(journal.conn, values["subject_hash"], day, TreatmentType.INSERTION)
        values |= {
            "id": journal.new_id(),
            "type": TreatmentType.INSERTION.value,
            "site": site,
            "date": day,
            "surgeon": surgeon_name,
            "started_by": actor.user_id,
            "started_at": journal.now,
            "is_complete": False,
        }
        return journal.insert(
            TREATMENTS,
            values,
            priority=Priority.CRITICAL_TREATMENT,
            action="treatment_started",
            treatment_id=values["id"],
        )


def start_removal(
    station: Station,
    actor: Actor,
    *,
    insertion_id: str,
    day: date | None = None,
    confirm_outside_window: bool = False,
) -> Change:
    """Start the removal of a completed insertion; outside the expected window the user confirms."""
    day = day or station.local_today()
    _require_day_near(station, day)
    with transaction(station, actor) as journal:
        insertion = load_treatment(journal.conn, insertion_id)
        require_access(actor, insertion)
        if insertion["type"] != TreatmentType.INSERTION:
            raise InvalidInput("A removal must be linked to an insertion.", field="insertion")
        if not insertion["is_complete"]:
            raise InvalidInput(
                "This insertion is not finalised yet; finalise it before starting its removal.",
                field="insertion",
            )
        existing = journal.conn.execute(
            select(TREATMENTS.c.id).where(
                TREATMENTS.c.insertion_treatment_id == insertion_id, TREATMENTS.c.deleted_at.is_(None)
            )
        ).first()
        if existing is not None:
            raise InvalidInput("A removal for this insertion already exists.", field="insertion")
        low, high = station.settings.removal_window_days
        elapsed = (day - insertion["date"]).days
        if not low <= elapsed <= high and not confirm_outside_window:
            raise ConfirmationRequired(
                f"This removal is {elapsed} days after the insertion; {low} to {high} days are expected. "
                "Confirm that this is the right patient and insertion."
            )
        values = _same_patient(insertion) | {
            "id": journal.new_id(),
            "type": TreatmentType.REMOVAL.value,
            "date": day,
            "surgeon": insertion["surgeon"],
            "insertion_treatment_id": insertion_id,
            "started_by": actor.user_id,
            "started_at": journal.now,
            "is_complete": False,
        }
        return journal.insert(
            TREATMENTS,
            values,
            priority=Priority.CRITICAL_TREATMENT,
            action="removal_started",
            treatment_id=values["id"],
            after=[("treatments", insertion_id)],
        )


def start_continuation(
    station: Station, actor: Actor, *, parent_id: str, surgeon: str | None = None
) -> Change:
    """Continue a completed insertion today, within 24 hours of its last activity (same patient, site)."""
    with transaction(station, actor) as journal:
        parent = load_treatment(journal.conn, parent_id)
        require_access(actor, parent)
        if parent["type"] != TreatmentType.INSERTION or not parent["is_complete"]:
            raise InvalidInput("Only a finalised insertion can be continued.", field="parent")
        last_activity = max(
            [parent["completed_at"], *(a["updated_at"] for a in live_applicators(journal.conn, [parent_id]))]
        )
        window = timedelta(hours=station.settings.continuation_hours)
        if journal.now - last_activity > window:
            raise InvalidInput(
                f"This insertion ended more than {station.settings.continuation_hours} hours ago; "
                "start a new insertion instead.",
                field="parent",
            )
        values = _same_patient(parent) | {
            "id": journal.new_id(),
            "type": TreatmentType.INSERTION.value,
            "date": station.local_today(),
            "surgeon": clean_text(surgeon, field="surgeon", label="The surgeon") or parent["surgeon"],
            "parent_treatment_id": parent_id,
            "started_by": actor.user_id,
            "started_at": journal.now,
            "is_complete": False,
        }
        return journal.insert(
            TREATMENTS,
            values,
            priority=Priority.CRITICAL_TREATMENT,
            action="continuation_started",
            treatment_id=values["id"],
            after=[("treatments", parent_id)],
        )


def finalise_treatment(
    station: Station,
    actor: Actor,
    *,
    treatment_id: str,
    mode: SignatureMode,
    signer_name: str | None = None,
    signer_position: str | None = None,
    signer_user_id: str | None = None,
) -> Change:
    """Check the treatment is complete, sign it and lock it."""
    mode = SignatureMode(mode)
    with transaction(station, actor) as journal:
        treatment = load_treatment(journal.conn, treatment_id)
        require_access(actor, treatment)
        require_open(station, treatment, unused_applicator=True)
        _require_no_safety_conflict(journal.conn, treatment_id)
        if treatment["type"] == TreatmentType.INSERTION:
            _require_all_terminal(journal.conn, treatment_id)
        else:
            _require_removal_form_complete(journal.conn, treatment)
        signature = _signature(actor, mode, signer_name, signer_position, signer_user_id)
        changes = {
            **signature,
            "signed_at": journal.now,
            "is_complete": True,
            "completed_by": actor.user_id,
            "completed_at": journal.now,
        }
        # Finalising must reach the cloud after every change of the treatment's rows.
        return journal.update(
            TREATMENTS,
            treatment,
            changes,
            priority=Priority.COMPLETED_TREATMENT,
            action="treatment_finalised",
            treatment_id=treatment_id,
            after_ops=journal.open_ops_for_treatment(treatment_id),
        )


def delete_treatment(station: Station, actor: Actor, *, treatment_id: str, reason: str) -> Change:
    """Soft-delete an unfinished treatment (admin only); the rows and their history stay."""
    if actor.role != Role.ADMIN:
        raise NotPermitted("Only an administrator can delete a treatment.")
    text = clean_text(reason, field="reason", label="The reason for deleting", required=True)
    with transaction(station, actor) as journal:
        treatment = load_treatment(journal.conn, treatment_id)
        if treatment["is_complete"]:
            raise TreatmentLocked("A finalised treatment cannot be deleted.")
        deployed = [
            a["serial_number"] for a in live_applicators(journal.conn, [treatment_id]) if a["deployed_seeds"]
        ]
        if deployed:
            # Seeds in a patient are a radiation record: such a treatment is finished, not deleted.
            raise InvalidInput(
                f"Seeds were deployed from {len(deployed)} applicator(s) of this treatment; "
                "it cannot be deleted."
            )
        return journal.update(
            TREATMENTS,
            treatment,
            {"deleted_at": journal.now, "deleted_by": actor.user_id, "deleted_reason": text},
            priority=Priority.ROUTINE,
            action="treatment_deleted",
            treatment_id=treatment_id,
            reason=text,
            after_ops=journal.open_ops_for_treatment(treatment_id),
        )


def treatment_summary(station: Station, treatment: RowMapping | dict[str, Any]) -> dict[str, Any]:
    """The treatment with its patient fields decrypted, for the pages and reports."""
    return {
        **dict(treatment),
        "subject_id": station.cipher.decrypt(treatment["subject_id_enc"]),
        "patient_label": station.cipher.decrypt(treatment["patient_label_enc"]),
    }


# --- helpers ----------------------------------------------------------------------------------
_PATIENT_FIELDS = (
    "indication",
    "subject_id_enc",
    "subject_hash",
    "patient_label_enc",
    "order_hashes",
    "needs_reconciliation",
    "site",
    "planned_seeds",
    "activity_per_seed",
)


def _same_patient(treatment: RowMapping) -> dict[str, Any]:
    """What a removal or a continuation takes from its insertion: the patient, the site, the plan."""
    return {key: treatment[key] for key in _PATIENT_FIELDS}


def _require_day_near(station: Station, day: date) -> None:
    today = station.local_today()
    if abs((day - today).days) > 1:
        raise InvalidInput("A treatment's date must be yesterday, today or tomorrow.", field="date")


def _order_values(
    station: Station, conn: Connection, site: str, day: date, names: list[str]
) -> dict[str, Any]:
    cleaned = [n.strip() for n in names if n and n.strip()]
    if not cleaned:
        raise InvalidInput("Choose the patient's order.", field="order")
    orders: list[ScheduledOrder] = []
    for name in cleaned:
        order = find_order(conn, station.cipher.lookup_hash(name))
        if order is None or order.site != site or order.day != day:
            raise InvalidInput(
                f"Order {name} is not scheduled at site {site} on {day:%d %b %Y}.", field="order"
            )
        orders.append(order)
    if len({o.indication for o in orders}) > 1:
        raise InvalidInput("Orders of different procedure kinds cannot be combined.", field="order")
    seeds = [o.seeds for o in orders]
    activities = {o.activity_per_seed for o in orders if o.activity_per_seed is not None}
    if len(activities) > 1:
        raise InvalidInput("The combined orders have different activities per seed.", field="order")
    subject = "+".join(cleaned)
    return {
        "indication": orders[0].indication,
        "subject_id_enc": station.cipher.encrypt(subject),
        "subject_hash": station.cipher.lookup_hash(subject),
        "patient_label_enc": orders[0].patient_label_enc,
        "order_hashes": [o.order_hash for o in orders],
        "needs_reconciliation": False,
        "planned_seeds": None if any(s is None for s in seeds) else sum(s or 0 for s in seeds),
        "activity_per_seed": activities.pop() if activities else None,
    }


def _emergency_values(station: Station, patient: EmergencyPatient) -> dict[str, Any]:
    subject = clean_text(
        patient.subject_id, field="subject_id", label="The patient identifier", required=True
    )
    label = clean_text(patient.patient_label, field="patient_label", label="The patient name")
    if patient.planned_seeds is not None and patient.planned_seeds < 0:
        raise InvalidInput("The planned number of seeds cannot be negative.", field="planned_seeds")
    if patient.activity_per_seed is not None and patient.activity_per_seed < 0:
        raise InvalidInput("The activity per seed cannot be negative.", field="activity_per_seed")
    return {
        "indication": Indication(patient.indication).value,
        "subject_id_enc": station.cipher.encrypt(subject),
        "subject_hash": station.cipher.lookup_hash(subject or ""),
        "patient_label_enc": station.cipher.encrypt(label),
        "order_hashes": [],
        "needs_reconciliation": True,
        "planned_seeds": patient.planned_seeds,
        "activity_per_seed": patient.activity_per_seed,
    }


def _refuse_duplicate(conn: Connection, subject_hash: str, day: date, kind: TreatmentType) -> None:
    existing = conn.execute(
        select(TREATMENTS.c.id).where(
            TREATMENTS.c.subject_hash == subject_hash,
            TREATMENTS.c.date == day,
            TREATMENTS.c.type == kind.value,
            TREATMENTS.c.deleted_at.is_(None),
            TREATMENTS.c.parent_treatment_id.is_(None),
        )
    ).first()
    if existing is not None:
        raise InvalidInput(
            "An insertion for this patient on this date has already been started; open it instead.",
            field="order",
        )


def _require_no_safety_conflict(conn: Connection, treatment_id: str) -> None:
    applicator_ids = select(APPLICATORS.c.id).where(APPLICATORS.c.treatment_id == treatment_id)
    open_safety = conn.execute(
        select(func.count()).where(
            CONFLICTS.c.status == ConflictStatus.OPEN.value,
            CONFLICTS.c.is_safety,
            ((CONFLICTS.c.table_name == "treatments") & (CONFLICTS.c.record_id == treatment_id))
            | ((CONFLICTS.c.table_name == "applicators") & CONFLICTS.c.record_id.in_(applicator_ids)),
        )
    ).scalar_one()
    if open_safety:
        raise InvalidInput(
            "This treatment has a safety conflict waiting for review; it cannot be finalised until a person "
            "resolves it on the conflict review page."
        )


def _require_all_terminal(conn: Connection, treatment_id: str) -> None:
    applicators = live_applicators(conn, [treatment_id])
    if not applicators:
        raise InvalidInput("No applicator has been recorded in this treatment.")
    open_serials = [a["serial_number"] for a in applicators if a["status"] not in TERMINAL_STATUSES]
    if open_serials:
        shown = ", ".join(open_serials[:5]) + (" ..." if len(open_serials) > 5 else "")
        raise InvalidInput(
            f"{len(open_serials)} applicator(s) still need a final status before finalising: {shown}."
        )


def _require_removal_form_complete(conn: Connection, treatment: RowMapping) -> None:
    if treatment["removal_date"] is None or treatment["removal_all_same_day"] is None:
        raise InvalidInput(
            "Complete the removal form (removal date, and whether everything came out that day)."
        )
    counts = removal_counts(conn, treatment)
    explained = sum(treatment[k] or 0 for k in ("gap_lost", "gap_retrieved", "gap_in_tissue", "gap_other"))
    if explained != abs(counts.gap):
        raise InvalidInput(
            f"{counts.removed} seeds were removed of {counts.deployed} deployed; the difference of "
            f"{abs(counts.gap)} must be explained (lost, retrieved to site, remained in tissue, other), "
            f"and {explained} is explained."
        )


def _signature(
    actor: Actor, mode: SignatureMode, name: str | None, position: str | None, user_id: str | None
) -> dict[str, Any]:
    if mode in (SignatureMode.SELF, SignatureMode.OFFLINE_PIN):
        if actor.role != Role.HOSPITAL:
            raise NotPermitted("An Alpha Tau user chooses a hospital signer, who confirms with a code.")
        return {
            "signed_by_user_id": actor.user_id,
            "signer_name": clean_text(
                name or actor.name, field="signer_name", label="Your name", required=True
            ),
            "signer_position": clean_text(
                position or actor.position, field="signer_position", label="Your position", required=True
            ),
            "signature_mode": mode.value,
            "signature_status": (
                SignatureStatus.AWAITING_CLOUD
                if mode is SignatureMode.OFFLINE_PIN
                else SignatureStatus.CONFIRMED
            ).value,
        }
    if actor.role == Role.HOSPITAL:
        raise NotPermitted("A hospital user signs for themselves.")
    if not user_id:
        raise InvalidInput("Choose the signer from the site's staff list.", field="signer")
    return {
        "signed_by_user_id": user_id,
        "signer_name": clean_text(name, field="signer_name", label="The signer's name", required=True),
        "signer_position": clean_text(position, field="signer_position", label="The signer's position"),
        "signature_mode": mode.value,
        "signature_status": SignatureStatus.CONFIRMED.value,
    }
