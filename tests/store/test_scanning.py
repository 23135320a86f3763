"""Every scan outcome of domain.md's table, checked offline against the validation cache."""

import pytest
from sqlalchemy import func, select

from store.enums import ApplicatorStatus
from store.guards import APPLICATORS
from store.journal import AUDIT, QUEUE
from store.scanning import Confirmation, ScanOutcome, scan_applicator
from store.station import Station
from store.treatments import delete_treatment
from store.validation_cache import install_bundle
from tests.utils.data import ADMIN, NURSE, OUTSIDER, barcode_rows, make_bundle, scanner_input
from tests.utils.flows import finalised_insertion, insertion, scan

S = ApplicatorStatus


def _rows(station: Station) -> tuple[int, int, int]:
    with station.engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (APPLICATORS, QUEUE, AUDIT)
        )


def _scan(station: Station, treatment_id: str, raw: str, **kw):
    before = _rows(station)
    result = scan_applicator(station, NURSE, treatment_id=treatment_id, raw=raw, **kw)
    if not result.saved:
        assert _rows(station) == before, "a refused scan must write nothing"
    return result


def test_valid_scan_fills_in_the_applicator(station: Station) -> None:
    treatment_id = insertion(station)
    result = _scan(station, treatment_id, scanner_input("B001"))
    assert result.outcome is ScanOutcome.VALID and result.saved
    record = result.applicator
    assert record["serial_number"] == "DART-2698-07602"
    assert record["seed_quantity"] == 10 and record["catalogue_number"] == "DART-PAN-10"
    assert record["seed_length"] == 10.0 and record["applicator_type"] == "Pancreas applicator"
    assert record["status"] == S.SEALED and record["lot"] == "L619D"
    assert record["bundle_version"] == "b-1"
    assert "10 seeds" in result.message


@pytest.mark.parametrize(
    "row", [r for r in barcode_rows() if r["serial"] and not r["expected_error"]], ids=lambda r: r["id"]
)
def test_every_clean_scanner_string_is_saved(station: Station, row: dict[str, str]) -> None:
    treatment_id = insertion(station)
    result = _scan(station, treatment_id, row["raw"])
    assert result.saved and result.applicator["serial_number"] == row["serial"]


@pytest.mark.parametrize(
    "row",
    [r for r in barcode_rows() if r["expected_error"] not in ("", "expiry_warning")],
    ids=lambda r: r["id"],
)
def test_every_unusable_scanner_string_is_refused_with_words(station: Station, row: dict[str, str]) -> None:
    treatment_id = insertion(station)
    result = _scan(station, treatment_id, row["raw"])
    assert not result.saved
    expected = ScanOutcome.EXPIRED if row["expected_error"] == "expired" else ScanOutcome.ERROR
    assert result.outcome is expected
    assert result.message and "Traceback" not in result.message


def test_already_scanned_is_stopped(station: Station) -> None:
    treatment_id = insertion(station)
    scan(station, treatment_id, "DART-9000-00001")
    result = _scan(station, treatment_id, "  dart-9000-00001 ")
    assert result.outcome is ScanOutcome.ALREADY_SCANNED and not result.saved
    assert "already in this treatment" in result.message


def test_wrong_treatment_names_the_patient_and_may_be_confirmed(station: Station) -> None:
    treatment_id = insertion(station)
    result = _scan(station, treatment_id, "DART-7000-00001")
    assert result.outcome is ScanOutcome.WRONG_TREATMENT and not result.saved
    assert result.needs_confirmation is Confirmation.WRONG_TREATMENT
    assert "Levi, Amir" in result.message
    confirmed = _scan(
        station, treatment_id, "DART-7000-00001", confirmed=frozenset({Confirmation.WRONG_TREATMENT})
    )
    assert confirmed.saved and confirmed.outcome is ScanOutcome.WRONG_TREATMENT
    assert confirmed.applicator["scan_outcome"] == "wrong_treatment"


def test_order_further_than_a_day_away_is_not_allowed(station: Station) -> None:
    treatment_id = insertion(station)
    result = _scan(station, treatment_id, "DART-6000-00001")
    assert result.outcome is ScanOutcome.NOT_ALLOWED and not result.saved


def test_previously_unused_in_an_earlier_treatment_may_be_confirmed(station: Station) -> None:
    earlier = insertion(station, "SO2611006")
    scan(station, earlier, "DART-3000-00000")
    delete_treatment(station, ADMIN, treatment_id=earlier, reason="patient cancelled")
    treatment_id = insertion(station, "SO2611006")
    result = _scan(station, treatment_id, "DART-3000-00000")
    assert result.outcome is ScanOutcome.PREVIOUSLY_NO_USE and not result.saved
    assert result.needs_confirmation is Confirmation.PREVIOUSLY_NO_USE
    assert "Friedman, Ada" in result.message
    confirmed = _scan(
        station, treatment_id, "DART-3000-00000", confirmed=frozenset({Confirmation.PREVIOUSLY_NO_USE})
    )
    assert confirmed.saved and confirmed.applicator["scan_outcome"] == "previously_no_use"


def test_previously_no_use_in_priority_may_be_confirmed(station: Station) -> None:
    treatment_id = insertion(station)
    result = _scan(station, treatment_id, "DART-0000-NOUSE")
    assert (
        result.outcome is ScanOutcome.PREVIOUSLY_NO_USE
        and result.needs_confirmation is Confirmation.PREVIOUSLY_NO_USE
    )
    assert not result.saved
    confirmed = _scan(
        station, treatment_id, "DART-0000-NOUSE", confirmed=frozenset({Confirmation.PREVIOUSLY_NO_USE})
    )
    assert confirmed.saved and confirmed.applicator["scan_outcome"] == "previously_no_use"


def test_used_elsewhere_is_stopped(station: Station) -> None:
    finalised_insertion(station, ["DART-3000-00002"], order="SO2611006")
    treatment_id = insertion(station)
    result = _scan(
        station, treatment_id, "DART-3000-00002", confirmed=frozenset(Confirmation)
    )  # no confirmation overrides a used applicator
    assert result.outcome is ScanOutcome.USED_ELSEWHERE and not result.saved
    assert "inserted" in result.message and "Friedman, Ada" in result.message


def test_open_in_another_treatment_is_stopped(station: Station) -> None:
    other = insertion(station, "SO2611006")
    scan(station, other, "DART-3000-00003")
    treatment_id = insertion(station)
    result = _scan(station, treatment_id, "DART-3000-00003", confirmed=frozenset(Confirmation))
    assert result.outcome is ScanOutcome.USED_ELSEWHERE and "two treatments" in result.message


def test_used_according_to_priority_is_stopped(station: Station) -> None:
    result = _scan(station, insertion(station), "DART-0000-USED", confirmed=frozenset(Confirmation))
    assert result.outcome is ScanOutcome.USED_ELSEWHERE and "Priority" in result.message


def test_expired_by_inventory_date_is_stopped(station: Station) -> None:
    result = _scan(station, insertion(station), "DART-0000-OLD", confirmed=frozenset(Confirmation))
    assert result.outcome is ScanOutcome.EXPIRED and "01 Oct 2026" in result.message


def test_expiring_within_30_days_warns_and_saves(station: Station) -> None:
    result = _scan(station, insertion(station), "DART-0000-SOON")
    assert result.saved and result.outcome is ScanOutcome.VALID
    assert "expiry_warning" in result.warnings and "05 Dec 2026" in result.message
    assert result.applicator["scan_warnings"] == ["expiry_warning"]


def test_gs1_expiry_within_30_days_warns(station: Station) -> None:
    result = _scan(station, insertion(station), scanner_input("B009"))
    assert result.saved and "expiry_warning" in result.warnings


@pytest.mark.parametrize("serial", ["DART-0000-UNKNOWN", "DART-0000-OTHERSITE"])
def test_not_allowed_at_this_site_is_stopped(station: Station, serial: str) -> None:
    result = _scan(station, insertion(station), serial, confirmed=frozenset(Confirmation))
    assert result.outcome is ScanOutcome.NOT_ALLOWED and not result.saved


def test_unknown_seed_count_is_an_error_never_a_default(station: Station) -> None:
    result = _scan(station, insertion(station), "DART-0000-NOSEEDS", confirmed=frozenset(Confirmation))
    assert result.outcome is ScanOutcome.ERROR and "seed count" in result.message


def test_stale_cache_needs_confirmation_and_is_flagged(station: Station, clock) -> None:
    treatment_id = insertion(station)
    clock.advance(days=8)  # the bundle was valid for 7 days; the treatment is still within its window
    result = _scan(station, treatment_id, "DART-9000-00002")
    assert result.needs_confirmation is Confirmation.STALE_CACHE and not result.saved
    confirmed = _scan(
        station, treatment_id, "DART-9000-00002", confirmed=frozenset({Confirmation.STALE_CACHE})
    )
    assert confirmed.saved and "stale_cache" in confirmed.applicator["scan_warnings"]


def test_site_outsider_cannot_scan(station: Station) -> None:
    from store.errors import NotPermitted

    treatment_id = insertion(station)
    with pytest.raises(NotPermitted):
        scan_applicator(station, OUTSIDER, treatment_id=treatment_id, raw="DART-9000-00003")


def test_scan_records_which_bundle_validated_it(station: Station) -> None:
    treatment_id = insertion(station)
    install_bundle(station, make_bundle(version="b-7"))
    assert scan(station, treatment_id, "DART-9000-00004")["bundle_version"] == "b-7"


def test_emergency_treatment_takes_unassigned_site_stock(station: Station) -> None:
    from store.treatments import EmergencyPatient, start_insertion
    from tests.utils.data import SITE, TODAY

    change = start_insertion(
        station,
        NURSE,
        site=SITE,
        day=TODAY,
        surgeon="Dr. Gold",
        emergency=EmergencyPatient(subject_id="MRN-555", patient_label="Unknown, Jane"),
    )
    result = _scan(station, change.record["id"], "DART-0000-SPARE")
    assert result.saved and "no_order" in result.warnings
    elsewhere = _scan(station, change.record["id"], "DART-9000-00005")
    assert (
        elsewhere.needs_confirmation is Confirmation.WRONG_TREATMENT and "Cohen, Miriam" in elsewhere.message
    )
