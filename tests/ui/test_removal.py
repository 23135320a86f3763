"""/removal/{id}: groups by capacity, one applicator at a time, single seeds, the form and its sum check."""

import pytest
from nicegui.testing import User

from store import lookups
from store.enums import ApplicatorStatus, SignatureMode
from store.removal import remove_applicator
from store.station import Station
from store.treatments import finalise_treatment, start_removal
from store.validation_cache import install_bundle
from tests.ui.conftest import login_bundle
from tests.ui.helpers_pages import (  # noqa: F401 (fixtures)
    app_station_fixture,
    by_testid,
    clinician_fixture,
    has_testid,
    text_of,
)
from tests.utils.data import NURSE, FakeClock
from tests.utils.flows import PATHS, insertion, move, scan

S = ApplicatorStatus
WAIT = 30

# The insertion: two 10-seed applicators inserted, one 20-seed inserted, one 10-seed faulty with 3 seeds
# deployed, one disposed (never in the patient): 10 + 10 + 20 + 3 = 43 seeds deployed.
INSERTED_10 = ["DART-9000-00001", "DART-9000-00002"]
INSERTED_20 = "DART-8000-00001"
FAULTY_10 = "DART-9000-00003"
DISPOSED_10 = "DART-9000-00004"


@pytest.fixture
def removal_id(app_station: Station, ui_clock: FakeClock) -> str:
    """A removal 14 days after a finalised insertion (set up before the nurse signs in)."""
    treatment_id = insertion(app_station)
    for serial in [*INSERTED_10, INSERTED_20]:
        move(app_station, scan(app_station, treatment_id, serial)["id"], PATHS["loaded"][S.INSERTED])
    move(app_station, scan(app_station, treatment_id, FAULTY_10)["id"], PATHS["loaded"][S.FAULTY], deployed=3)
    move(app_station, scan(app_station, treatment_id, DISPOSED_10)["id"], PATHS["loaded"][S.DISPOSED])
    finalise_treatment(app_station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    ui_clock.advance(days=14)
    # Two weeks on, the station has synced: fresh validation data and the nurse's PIN renewed.
    install_bundle(app_station, login_bundle(ui_clock.now))
    return start_removal(app_station, NURSE, insertion_id=treatment_id).record["id"]


async def open_removal(user: User, removal_id: str) -> None:
    await user.open(f"/removal/{removal_id}")
    await user.should_see("Applicators by capacity", retries=WAIT)


async def see_notice(user: User, title: str) -> None:
    await user.should_see(marker="notice-title", content=title, retries=WAIT)
    assert text_of(user, "notice-title") == title


def view(station: Station, removal_id: str) -> lookups.RemovalView:
    return lookups.removal_view(station, NURSE, removal_id)


async def test_the_insertion_is_shown_grouped_by_capacity_with_live_counts(
    removal_id: str, clinician: User
) -> None:
    await open_removal(clinician, removal_id)
    assert text_of(clinician, "patient-name") == "Patient: Cohen, Miriam"
    assert text_of(clinician, "removal-insertion") == "Insertion of 26 Nov 2026 (14 days ago)"
    assert text_of(clinician, "counts-removed") == "Seeds removed: 0 of 43 deployed"
    assert (
        text_of(clinician, "group-removed", within="group-10") == "Removed 0 of 3"
    )  # the disposed one is not
    assert text_of(clinician, "group-removed", within="group-20") == "Removed 0 of 1"
    assert (
        text_of(clinician, "counts-gap")
        == "Difference to explain in the removal form: 43 seed(s) not removed"
    )


async def test_remove_one_takes_out_the_next_applicator_of_the_group(
    removal_id: str, clinician: User, app_station: Station
) -> None:
    await open_removal(clinician, removal_id)
    by_testid(clinician, "removal-comment").type("Tip intact")
    by_testid(clinician, "remove-20").click()
    await see_notice(clinician, f"Applicator {INSERTED_20} removed")
    assert text_of(clinician, "counts-removed") == "Seeds removed: 20 of 43 deployed"
    assert text_of(clinician, "group-removed", within="group-20") == "Removed 1 of 1"
    assert not by_testid(clinician, "remove-20").elements.pop().enabled  # nothing left in that group
    assert has_testid(clinician, f"removed-{INSERTED_20}")
    removed = view(app_station, removal_id).removed
    assert [(a["serial_number"], a["removal_comment"]) for a in removed] == [(INSERTED_20, "Tip intact")]
    assert by_testid(clinician, "removal-comment").elements.pop().value == ""  # for the next one


async def test_a_faulty_applicator_counts_the_seeds_it_deployed(removal_id: str, clinician: User) -> None:
    await open_removal(clinician, removal_id)
    for expected in ("Removed 1 of 3", "Removed 2 of 3", "Removed 3 of 3"):
        by_testid(clinician, "remove-10").click()
        await clinician.should_see(marker="notice-title", content="removed", retries=WAIT)
        await clinician.should_see(expected, retries=WAIT)
    assert text_of(clinician, "counts-removed") == "Seeds removed: 23 of 43 deployed"  # 10 + 10 + 3


async def test_removing_from_an_emptied_group_is_refused_in_words(
    removal_id: str, clinician: User, app_station: Station
) -> None:
    await open_removal(clinician, removal_id)
    remove_applicator(app_station, NURSE, removal_id=removal_id, capacity=20)  # another tab took it
    by_testid(clinician, "remove-20").click()
    await see_notice(clinician, "No applicator of 20 seeds was removed")
    assert text_of(clinician, "notice-message") == "Every applicator of this group has already been removed."


async def test_a_removal_photo_is_kept_with_the_removed_applicator(
    removal_id: str, clinician: User, app_station: Station
) -> None:
    import base64
    import re
    from pathlib import Path

    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    clinician.javascript_rules[re.compile(r"(?s).*toDataURL.*")] = lambda _: (
        "data:image/png;base64," + (base64.b64encode(png).decode())
    )
    await open_removal(clinician, removal_id)
    by_testid(clinician, "removal-photo").click()
    await clinician.should_see("Photo of the next applicator removed", retries=WAIT)
    by_testid(clinician, "photo-capture").click()
    await clinician.should_see("Photo ready for the next removal", retries=WAIT)
    by_testid(clinician, "remove-20").click()
    await see_notice(clinician, f"Applicator {INSERTED_20} removed")
    path = view(app_station, removal_id).removed[0]["removal_photo_path"]
    assert (Path(app_station.data_dir) / path).read_bytes() == png


async def test_single_seeds_are_removed_one_at_a_time_with_their_reason(
    removal_id: str, clinician: User, app_station: Station
) -> None:
    await open_removal(clinician, removal_id)
    by_testid(clinician, "remove-seed").click()  # applicator rupture, the default reason
    await see_notice(clinician, "Single seed removed")
    by_testid(clinician, "seed-reason").elements.pop().value = "other"
    by_testid(clinician, "remove-seed").click()
    await see_notice(clinician, "The seed was not recorded")
    assert text_of(clinician, "notice-message") == "The description is required."
    by_testid(clinician, "seed-text").type("Found in the dressing")
    by_testid(clinician, "remove-seed").click()
    await see_notice(clinician, "Single seed removed")
    await clinician.should_see("Other: Found in the dressing", retries=WAIT)
    await clinician.should_see("Applicator rupture")
    assert text_of(clinician, "counts-detail") == "0 with applicators, 2 single seed(s)"
    reasons = sorted(s["reason"] for s in view(app_station, removal_id).single_seeds)
    assert reasons == ["applicator_rupture", "other"]  # the frozen clock gives both one time


async def test_the_form_checks_the_four_categories_add_up_to_the_difference(
    removal_id: str, clinician: User, app_station: Station
) -> None:
    remove_applicator(app_station, NURSE, removal_id=removal_id, capacity=20)
    await open_removal(clinician, removal_id)
    by_testid(clinician, "form-same-day").elements.pop().value = "yes"
    assert text_of(clinician, "form-sum") == "Explained 0 of 23: the categories must add up to 23."
    by_testid(clinician, "form-save").click()
    await see_notice(clinician, "The removal form was not saved")
    assert text_of(clinician, "form-problem") == (
        "20 seeds removed of 43 deployed: the difference is 23, but the categories add up to 0."
    )
    by_testid(clinician, "form-lost").elements.pop().value = 3
    by_testid(clinician, "form-in_tissue").elements.pop().value = 15
    by_testid(clinician, "form-other").elements.pop().value = 5
    assert text_of(clinician, "form-sum") == "Explained 23 of 23: the sum matches."
    by_testid(clinician, "form-save").click()
    await clinician.should_see("The description is required.", retries=WAIT)  # 'other' needs words
    by_testid(clinician, "form-other-text").type("Sent to pathology")
    by_testid(clinician, "form-save").click()
    await see_notice(clinician, "Removal form saved")
    saved = view(app_station, removal_id).removal
    assert (saved["gap_lost"], saved["gap_in_tissue"], saved["gap_other"]) == (3, 15, 5)
    assert saved["removal_all_same_day"] is True and saved["gap_other_text"] == "Sent to pathology"


async def test_not_everything_the_same_day_needs_the_other_date_and_reason(
    removal_id: str, clinician: User, app_station: Station
) -> None:
    await open_removal(clinician, removal_id)
    by_testid(clinician, "form-same-day").elements.pop().value = "no"
    by_testid(clinician, "form-lost").elements.pop().value = 43
    by_testid(clinician, "form-save").click()
    await see_notice(clinician, "The removal form was not saved")
    assert text_of(clinician, "form-problem") == (
        "Give the other removal date and the reason not everything came out the same day."
    )
    by_testid(clinician, "form-other-date").elements.pop().value = "2026-12-11"
    by_testid(clinician, "form-other-reason").type("Patient returned the next day")
    by_testid(clinician, "form-save").click()
    await see_notice(clinician, "Removal form saved")
    saved = view(app_station, removal_id).removal
    assert str(saved["removal_other_date"]) == "2026-12-11"


async def test_a_form_date_that_is_not_a_date_is_refused_at_its_field(
    removal_id: str, clinician: User
) -> None:
    await open_removal(clinician, removal_id)
    by_testid(clinician, "form-date").elements.pop().value = "yesterday"
    by_testid(clinician, "form-save").click()
    await clinician.should_see("The removal date is not a date (YYYY-MM-DD).", retries=WAIT)


async def test_an_insertion_is_not_opened_as_a_removal(
    removal_id: str, clinician: User, app_station: Station
) -> None:
    insertion_id = view(app_station, removal_id).insertion["id"]
    await clinician.open(f"/removal/{insertion_id}")
    await clinician.should_see("This is an insertion; open it from the insertion page.", retries=WAIT)


async def test_a_finalised_removal_is_read_only(
    removal_id: str, clinician: User, app_station: Station
) -> None:
    from store.removal import fill_removal_form

    for _ in range(3):
        remove_applicator(app_station, NURSE, removal_id=removal_id, capacity=10)
    remove_applicator(app_station, NURSE, removal_id=removal_id, capacity=20)
    fill_removal_form(
        app_station, NURSE, removal_id=removal_id, removal_date=app_station.local_today(), all_same_day=True
    )
    finalise_treatment(app_station, NURSE, treatment_id=removal_id, mode=SignatureMode.SELF)
    await open_removal(clinician, removal_id)
    await clinician.should_see("Finalised and locked: nothing can be added or changed.", retries=WAIT)
    for control in ("remove-10", "remove-seed", "form-save", "removal-comment"):
        assert not has_testid(clinician, control)
    assert text_of(clinician, "counts-removed") == "Seeds removed: 43 of 43 deployed"
