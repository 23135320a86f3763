"""Reads for the pages: progress, suggestions, the choose-from-list inventory, finalise checks, removal."""

import pytest

from store import lookups
from store.enums import ApplicatorStatus, SignatureMode
from store.errors import NotFound, NotPermitted
from store.removal import remove_applicator, remove_single_seed
from store.station import Station
from store.treatments import EmergencyPatient, finalise_treatment, start_insertion, start_removal
from tests.utils.data import NURSE, OUTSIDER, SITE, TODAY, FakeClock
from tests.utils.flows import PATHS, insertion, move, scan

S = ApplicatorStatus


def test_progress_is_derived_from_the_applicators(station: Station) -> None:
    treatment_id = insertion(station)  # 80 seeds planned at 2.5 µCi
    ten = scan(station, treatment_id, "DART-9000-00001")
    scan(station, treatment_id, "DART-8000-00001")
    move(station, ten["id"], PATHS["loaded"][S.INSERTED])
    progress = lookups.progress(station, treatment_id)
    assert (progress.planned_seeds, progress.deployed_seeds, progress.applicators) == (80, 10, 2)
    assert progress.percent == pytest.approx(12.5) and progress.total_activity == pytest.approx(25.0)
    assert progress.by_status == {"INSERTED": 1, "SEALED": 1}
    assert progress.by_capacity == {10: 1, 20: 1}


def test_reads_check_the_site_like_the_commands(station: Station) -> None:
    treatment_id = insertion(station)
    with pytest.raises(NotPermitted):
        lookups.insertion_view(station, OUTSIDER, treatment_id)
    with pytest.raises(NotFound):
        lookups.treatment(station, NURSE, "missing")


def test_suggestions_are_at_most_five_and_leave_out_what_is_scanned(station: Station) -> None:
    treatment_id = insertion(station)
    scan(station, treatment_id, "DART-9000-00000")
    found = lookups.suggestions(station, NURSE, treatment_id, "9000-0000")
    assert len(found) == 5 and "DART-9000-00000" not in found
    assert all("9000-0000" in serial for serial in found)
    assert lookups.suggestions(station, NURSE, treatment_id, "x") == []  # too short to mean anything


def test_choose_from_list_offers_the_orders_applicators_not_yet_scanned(station: Station) -> None:
    treatment_id = insertion(station)
    scan(station, treatment_id, "DART-9000-00000")
    serials = {c.serial for c in lookups.inventory_choices(station, NURSE, treatment_id)}
    assert "DART-9000-00001" in serials and "DART-9000-00000" not in serials
    assert not any(s.startswith("DART-7000") for s in serials)  # another patient's order
    assert "DART-0000-OTHERSITE" not in serials


def test_an_emergency_treatment_chooses_from_the_site_stock_on_no_order(station: Station) -> None:
    change = start_insertion(
        station,
        NURSE,
        site=SITE,
        day=TODAY,
        surgeon="Dr. Gold",
        emergency=EmergencyPatient(subject_id="MRN-1"),
    )
    serials = [c.serial for c in lookups.inventory_choices(station, NURSE, change.record["id"])]
    assert serials == ["DART-0000-SPARE"]


def test_finalise_problems_are_the_stores_own_refusals(station: Station) -> None:
    treatment_id = insertion(station)
    assert lookups.finalise_problems(station, NURSE, treatment_id) == [
        "No applicator has been recorded in this treatment."
    ]
    applicator = scan(station, treatment_id, "DART-9000-00001")
    assert lookups.finalise_problems(station, NURSE, treatment_id) == [
        "1 applicator(s) still need a final status before finalising: DART-9000-00001."
    ]
    move(station, applicator["id"], PATHS["loaded"][S.INSERTED])
    assert lookups.finalise_problems(station, NURSE, treatment_id) == []


def test_removal_view_groups_what_was_deployed_by_capacity(station: Station, clock: FakeClock) -> None:
    treatment_id = insertion(station)
    for serial in ("DART-9000-00001", "DART-9000-00002", "DART-8000-00001"):
        move(station, scan(station, treatment_id, serial)["id"], PATHS["loaded"][S.INSERTED])
    move(station, scan(station, treatment_id, "DART-9000-00003")["id"], PATHS["loaded"][S.DISPOSED])
    finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    removal_id = start_removal(station, NURSE, insertion_id=treatment_id, confirm_outside_window=True).record[
        "id"
    ]
    remove_applicator(station, NURSE, removal_id=removal_id, capacity=10)
    remove_single_seed(station, NURSE, removal_id=removal_id, reason="applicator_rupture")
    view = lookups.removal_view(station, NURSE, removal_id)
    groups = {
        g.capacity: (g.total, g.removed, g.remaining, g.deployed_seeds, g.removed_seeds) for g in view.groups
    }
    assert groups == {10: (2, 1, 1, 20, 10), 20: (1, 0, 1, 20, 0)}  # the disposed one deployed nothing
    assert [a["seed_quantity"] for a in view.removed] == [10]
    assert (view.counts.deployed, view.counts.removed, view.counts.gap) == (40, 11, 29)
    assert lookups.seed_reason_label("other", "lost in gauze") == "Other: lost in gauze"
