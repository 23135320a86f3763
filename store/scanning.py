"""Scanning an applicator into a treatment: every scan gives exactly one outcome (domain.md).

The checks run against the local store and the validation cache, so they work the same with no
network; the cloud re-checks every scan when it arrives. A refused scan writes nothing. Outcomes
that a person may override (wrong treatment, previously unused, a stale cache) are returned as
questions; the same scan repeated with the confirmation saves it and records what was confirmed.
"""

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, RowMapping

from store import fastsql
from store.barcode import BarcodeProblem, BarcodeReading, parse_scan
from store.enums import TERMINAL_STATUSES, ApplicatorStatus, Priority
from store.fastsql import codec
from store.guards import APPLICATORS, TREATMENTS, load_treatment, require_access, require_open
from store.journal import transaction
from store.station import Actor, Station
from store.validation_cache import InventoryItem, find_inventory, find_order


class ScanOutcome(StrEnum):
    VALID = "valid"
    ALREADY_SCANNED = "already_scanned"
    WRONG_TREATMENT = "wrong_treatment"
    PREVIOUSLY_NO_USE = "previously_no_use"
    USED_ELSEWHERE = "used_elsewhere"
    EXPIRED = "expired"
    NOT_ALLOWED = "not_allowed"
    ERROR = "error"


class Confirmation(StrEnum):
    """What a person may confirm to save a scan that would otherwise be held."""

    WRONG_TREATMENT = "wrong_treatment"
    PREVIOUSLY_NO_USE = "previously_no_use"
    STALE_CACHE = "stale_cache"


USED_IN_PRIORITY = frozenset({"full use", "faulty"})


@dataclass
class ScanResult:
    outcome: ScanOutcome
    message: str
    saved: bool = False
    applicator: dict[str, Any] | None = None
    needs_confirmation: Confirmation | None = None
    warnings: list[str] = field(default_factory=list)
    reading: BarcodeReading | None = None
    op_id: str | None = None


class _Stop(Exception):
    """A scan outcome that ends the scan without saving."""

    def __init__(self, outcome: ScanOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def scan_applicator(
    station: Station,
    actor: Actor,
    *,
    treatment_id: str,
    raw: str,
    confirmed: frozenset[Confirmation] = frozenset(),
) -> ScanResult:
    """Check what the scanner (or the keyboard) typed and, when it may be used, save the applicator."""
    today = station.local_today()
    reading = parse_scan(
        raw,
        today=today,
        group_separator=station.settings.group_separator,
        warn_days=station.settings.expiry_warning_days,
    )
    refused = _refuse_reading(reading)
    if refused is not None:
        return refused
    serial = (reading.serial or "").strip().upper()
    try:
        with transaction(station, actor) as journal:
            treatment = load_treatment(journal.conn, treatment_id)
            require_access(actor, treatment)
            require_open(station, treatment)
            check = _check(station, journal.conn, treatment, serial, reading, today)
            question = next((c for c in check.confirmations if c not in confirmed), None)
            if question is not None:
                return ScanResult(
                    outcome=check.outcome,
                    message=check.messages[question],
                    needs_confirmation=question,
                    warnings=check.warnings,
                    reading=reading,
                )
            values = _applicator_values(
                journal.new_id(), treatment_id, serial, reading, check, actor, journal.now
            )
            change = journal.insert(
                APPLICATORS,
                values,
                priority=Priority.NEW_APPLICATOR,
                action="applicator_scanned",
                treatment_id=treatment_id,
                after=[("treatments", treatment_id)],
            )
    except _Stop as stop:
        return ScanResult(outcome=stop.outcome, message=stop.message, reading=reading)
    message = f"Applicator {serial} added: {values['seed_quantity']} seeds, status Sealed."
    if check.warnings_text:
        message = f"{message} {' '.join(check.warnings_text)}"
    return ScanResult(
        outcome=check.outcome,
        message=message,
        saved=True,
        applicator=change.record,
        warnings=check.warnings,
        reading=reading,
        op_id=change.op_id,
    )


@dataclass
class _Check:
    inventory: InventoryItem
    expiry: date | None
    outcome: ScanOutcome = ScanOutcome.VALID
    confirmations: list[Confirmation] = field(default_factory=list)
    messages: dict[Confirmation, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    warnings_text: list[str] = field(default_factory=list)

    def ask(self, confirmation: Confirmation, message: str, outcome: ScanOutcome | None = None) -> None:
        self.confirmations.append(confirmation)
        self.messages[confirmation] = message
        if outcome is not None and self.outcome is ScanOutcome.VALID:
            self.outcome = outcome


def _refuse_reading(reading: BarcodeReading) -> ScanResult | None:
    if reading.problem is BarcodeProblem.EXPIRED:
        return ScanResult(outcome=ScanOutcome.EXPIRED, message=reading.message or "Expired.", reading=reading)
    if not reading.usable or not reading.serial:
        message = reading.message or "The scan could not be read. Scan again or type the serial number."
        return ScanResult(outcome=ScanOutcome.ERROR, message=message, reading=reading)
    return None


def _check(
    station: Station,
    conn: Connection,
    treatment: RowMapping,
    serial: str,
    reading: BarcodeReading,
    today: date,
) -> _Check:
    """Every rule of the scan table, in the order that stops the most dangerous case first."""
    elsewhere = _other_uses(conn, serial)
    if any(use["treatment_id"] == treatment["id"] and not use["deleted"] for use in elsewhere):
        raise _Stop(ScanOutcome.ALREADY_SCANNED, f"Applicator {serial} is already in this treatment.")
    for use in elsewhere:
        if use["status"] in TERMINAL_STATUSES:
            status = ApplicatorStatus(use["status"]).label.lower()
            raise _Stop(
                ScanOutcome.USED_ELSEWHERE,
                f"Do not use applicator {serial}: it is already {status} in the treatment of "
                f"{_patient(station, use)} on {_day(use['date'])}.",
            )
        if not use["is_complete"] and not use["deleted"]:
            raise _Stop(
                ScanOutcome.USED_ELSEWHERE,
                f"Applicator {serial} is in the open treatment of {_patient(station, use)} on "
                f"{_day(use['date'])}. It cannot be in two treatments at once.",
            )
    inventory = find_inventory(conn, serial)
    if inventory is None or inventory.site != treatment["site"]:
        raise _Stop(
            ScanOutcome.NOT_ALLOWED,
            f"Applicator {serial} is not in the inventory of site {treatment['site']}. Do not use it.",
        )
    if inventory.usage and inventory.usage.strip().lower() in USED_IN_PRIORITY:
        raise _Stop(
            ScanOutcome.USED_ELSEWHERE,
            f"Do not use applicator {serial}: Priority records it as already used ({inventory.usage}).",
        )
    if inventory.seeds is None or inventory.seeds < 0:
        raise _Stop(
            ScanOutcome.ERROR,
            f"The seed count of applicator {serial} is unknown, so it cannot be recorded. "
            "Ask Alpha Tau to complete its data in Priority.",
        )
    expiry = reading.expiry or inventory.expiry
    check = _Check(inventory=inventory, expiry=expiry)
    if expiry is not None:
        if expiry < today:
            raise _Stop(ScanOutcome.EXPIRED, f"Applicator {serial} expired on {_day(expiry)}. Do not use it.")
        if expiry <= today + timedelta(days=station.settings.expiry_warning_days):
            check.warnings.append("expiry_warning")
            check.warnings_text.append(f"It expires soon, on {_day(expiry)}.")
    _check_order(station, conn, treatment, serial, inventory, check)
    unused_before = [use for use in elsewhere if use["status"] not in TERMINAL_STATUSES]
    if unused_before or (inventory.usage or "").strip().lower() == "no use":
        where = (
            f"the treatment of {_patient(station, unused_before[0])} on {_day(unused_before[0]['date'])}"
            if unused_before
            else "an earlier treatment (Priority)"
        )
        check.ask(
            Confirmation.PREVIOUSLY_NO_USE,
            f"Applicator {serial} was recorded as not used in {where}. Confirm to use it here.",
            ScanOutcome.PREVIOUSLY_NO_USE,
        )
    if inventory.valid_until < station.now():
        check.warnings.append("stale_cache")
        check.ask(
            Confirmation.STALE_CACHE,
            "The validation data is out of date "
            f"(valid until {_day(station.local_date(inventory.valid_until))}). "
            "Confirm to record the applicator anyway; it will be checked again when the station syncs.",
        )
    return check


def _check_order(
    station: Station,
    conn: Connection,
    treatment: RowMapping,
    serial: str,
    inventory: InventoryItem,
    check: _Check,
) -> None:
    if inventory.order_hash is not None and inventory.order_hash in treatment["order_hashes"]:
        return
    order = find_order(conn, inventory.order_hash) if inventory.order_hash else None
    near = (
        order is not None
        and order.site == treatment["site"]
        and abs((order.day - treatment["date"]).days) <= station.settings.wrong_treatment_days
    )
    if near:
        patient = station.cipher.decrypt(order.patient_label_enc) or "another patient"
        check.ask(
            Confirmation.WRONG_TREATMENT,
            f"Applicator {serial} was meant for {patient} ({_day(order.day)}), not this patient. "
            "Confirm only if you are sure it belongs in this treatment.",
            ScanOutcome.WRONG_TREATMENT,
        )
        return
    if treatment["needs_reconciliation"] and inventory.order_hash is None:
        # An emergency treatment has no order; unassigned site stock is the right thing to use.
        check.warnings.append("no_order")
        return
    raise _Stop(
        ScanOutcome.NOT_ALLOWED,
        f"Applicator {serial} is not assigned to this patient's order. Do not use it.",
    )


_USES_OF_SERIAL = (
    "SELECT a.treatment_id, a.status, t.is_complete, t.date, t.patient_label_enc, t.deleted_at IS NOT NULL"
    " FROM applicators a JOIN treatments t ON t.id = a.treatment_id"
    " WHERE a.serial_number = ? AND a.deleted_at IS NULL"
)


def _other_uses(conn: Connection, serial: str) -> list[dict[str, Any]]:
    """Every treatment that recorded this serial, including deleted ones (they recorded it unused)."""
    treatments = codec(TREATMENTS)
    return [
        {
            "treatment_id": treatment_id,
            "status": status,
            "is_complete": bool(is_complete),
            "date": treatments.decode(("date",), (day,))["date"],
            "patient_label_enc": label,
            "deleted": bool(deleted),
        }
        for treatment_id, status, is_complete, day, label, deleted in fastsql.execute(
            conn, _USES_OF_SERIAL, (serial,)
        )
    ]


def _applicator_values(
    applicator_id: str,
    treatment_id: str,
    serial: str,
    reading: BarcodeReading,
    check: _Check,
    actor: Actor,
    now: datetime,
) -> dict[str, Any]:
    inventory = check.inventory
    confirmed_outcome = check.outcome if check.outcome is not ScanOutcome.VALID else None
    return {
        "id": applicator_id,
        "treatment_id": treatment_id,
        "serial_number": serial,
        "gtin": reading.gtin,
        "lot": reading.lot or inventory.lot,
        "expiry_date": check.expiry,
        "catalogue_number": inventory.catalogue_number,
        "applicator_type": inventory.applicator_type,
        "seed_quantity": inventory.seeds,
        "seed_length": inventory.seed_length,
        "status": ApplicatorStatus.SEALED.value,
        "deployed_seeds": 0,
        "scanned_at": now,
        "scanned_by": actor.user_id,
        "scan_outcome": (confirmed_outcome or ScanOutcome.VALID).value,
        "scan_warnings": list(check.warnings),
        "bundle_version": inventory.bundle_version,
        "is_removed": False,
    }


def _patient(station: Station, use: dict[str, Any]) -> str:
    return station.cipher.decrypt(use.get("patient_label_enc")) or "another patient"


def _day(day: date) -> str:
    return day.strftime("%d %b %Y")
