"""/finalise/{id}: the store's checks in words, signing online and offline (PIN), then the locked view."""

from pathlib import Path

import pytest
from nicegui.testing import User

from store import lookups, remote
from store.enums import ApplicatorStatus, SignatureMode
from store.removal import fill_removal_form, remove_applicator
from store.station import Station, open_station
from store.treatments import EmergencyPatient, finalise_treatment, start_insertion, start_removal
from store.validation_cache import install_bundle
from tests.ui.conftest import (
    ALPHATAU_EMAIL,
    ALPHATAU_PIN,
    NURSE_EMAIL,
    NURSE_PIN,
    CloudLink,
    login_bundle,
    sign_in_with_pin,
)
from tests.ui.helpers_pages import (  # noqa: F401 (fixtures)
    app_station_fixture,
    by_testid,
    clinician_fixture,
    has_testid,
    station_started,
    text_of,
)
from tests.utils.data import NURSE, SITE, FakeClock
from tests.utils.flows import PATHS, finalised_insertion, insertion, move, scan

S = ApplicatorStatus
WAIT = 30


async def open_finalise(user: User, treatment_id: str) -> None:
    await user.open(f"/finalise/{treatment_id}")
    await user.should_see("Finalise", retries=WAIT)


async def sign(user: User, *, pin: str | None = NURSE_PIN, tick: bool = True) -> None:
    if pin is not None:
        by_testid(user, "sign-pin").type(pin)
    if tick:
        by_testid(user, "sign-confirm").click()
    by_testid(user, "sign").click()


def treatment(station: Station, treatment_id: str) -> dict:
    return lookups.treatment(station, NURSE, treatment_id)


def ready_insertion(station: Station) -> str:
    treatment_id = insertion(station)
    move(station, scan(station, treatment_id, "DART-9000-00001")["id"], PATHS["loaded"][S.INSERTED])
    return treatment_id


# --- the checks ---------------------------------------------------------------------------------------
async def test_an_insertion_with_an_open_applicator_shows_why_it_cannot_be_finalised(
    clinician: User, app_station: Station
) -> None:
    treatment_id = ready_insertion(app_station)
    scan(app_station, treatment_id, "DART-9000-00002")
    await open_finalise(clinician, treatment_id)
    expected = "1 applicator(s) still need a final status before finalising: DART-9000-00002."
    assert text_of(clinician, "finalise-problem") == expected
    await sign(clinician)
    await clinician.should_see(marker="notice-title", content="Not finalised", retries=WAIT)
    assert text_of(clinician, "sign-problem") == expected
    assert not treatment(app_station, treatment_id)["is_complete"]


async def test_an_insertion_without_applicators_cannot_be_finalised(
    clinician: User, app_station: Station
) -> None:
    await open_finalise(clinician, insertion(app_station))
    assert text_of(clinician, "finalise-problem") == "No applicator has been recorded in this treatment."


async def test_a_removal_needs_its_form(clinician: User, app_station: Station, ui_clock: FakeClock) -> None:
    insertion_id = finalised_insertion(app_station, ["DART-9000-00001"])
    ui_clock.advance(hours=2)
    install_bundle(app_station, login_bundle(ui_clock.now))
    removal_id = start_removal(
        app_station, NURSE, insertion_id=insertion_id, confirm_outside_window=True
    ).record["id"]
    await open_finalise(clinician, removal_id)
    assert text_of(clinician, "finalise-problem") == (
        "Complete the removal form (removal date, and whether everything came out that day)."
    )
    remove_applicator(app_station, NURSE, removal_id=removal_id, capacity=10)
    fill_removal_form(
        app_station, NURSE, removal_id=removal_id, removal_date=app_station.local_today(), all_same_day=True
    )
    await open_finalise(clinician, removal_id)
    assert text_of(clinician, "finalise-ready") == "Every check passed: the removal can be signed."
    await sign(clinician)
    await clinician.should_see("Signed offline, awaiting cloud confirmation", retries=WAIT)
    assert treatment(app_station, removal_id)["is_complete"]


# --- signing offline ----------------------------------------------------------------------------------
async def test_offline_the_nurse_signs_with_her_pin_and_the_treatment_awaits_the_cloud(
    clinician: User, app_station: Station
) -> None:
    treatment_id = ready_insertion(app_station)
    await open_finalise(clinician, treatment_id)
    assert text_of(clinician, "finalise-ready") == "Every check passed: the insertion can be signed."
    assert text_of(clinician, "signing-mode").startswith("Offline: the cloud cannot be reached")
    await sign(clinician, tick=False)
    await clinician.should_see("Tick the confirmation to sign.", retries=WAIT)
    await sign(clinician, pin="0000", tick=True)
    await clinician.should_see(marker="notice-title", content="Not finalised", retries=WAIT)
    assert text_of(clinician, "sign-problem").startswith("The PIN is wrong.")
    assert not treatment(app_station, treatment_id)["is_complete"]
    await sign(clinician, tick=False)  # still ticked from before
    await clinician.should_see("Signed offline, awaiting cloud confirmation", retries=WAIT)
    assert text_of(clinician, "signed-by") == "Signed by Dana Shapiro (Nurse) on 26 Nov 2026 09:00"
    saved = treatment(app_station, treatment_id)
    assert saved["is_complete"] and saved["signature_mode"] == SignatureMode.OFFLINE_PIN.value
    assert saved["signature_status"] == "awaiting_cloud"
    assert has_testid(clinician, "download-pdf") and has_testid(clinician, "download-json")
    # The insertion itself is now read-only.
    await clinician.open(f"/treatment/{treatment_id}")
    await clinician.should_see("Finalised and locked: nothing can be added or changed.", retries=WAIT)
    assert not has_testid(clinician, "scan-input")


async def test_the_signature_carries_the_name_and_position_entered(
    clinician: User, app_station: Station
) -> None:
    treatment_id = ready_insertion(app_station)
    await open_finalise(clinician, treatment_id)
    by_testid(clinician, "sign-position").elements.pop().value = "Head nurse, surgery"
    await sign(clinician)
    await clinician.should_see(
        "Signed by Dana Shapiro (Head nurse, surgery) on 26 Nov 2026 09:00", retries=WAIT
    )
    assert treatment(app_station, treatment_id)["signer_position"] == "Head nurse, surgery"


async def test_an_alpha_tau_user_offline_is_told_signing_by_code_needs_the_cloud(
    user: User, app_station: Station
) -> None:
    treatment_id = ready_insertion(app_station)
    await sign_in_with_pin(user, ALPHATAU_EMAIL, ALPHATAU_PIN)
    await user.should_see("Noa Alpha", retries=50)
    await open_finalise(user, treatment_id)
    assert text_of(user, "sign-code-unavailable") == (
        "Signing by code needs the cloud, and it cannot be reached from here. The hospital user can sign "
        "offline with their PIN."
    )
    assert not has_testid(user, "sign") and not has_testid(user, "send-code")


async def test_a_finalised_treatment_shows_its_signature_and_no_signing(
    clinician: User, app_station: Station
) -> None:
    treatment_id = ready_insertion(app_station)
    finalise_treatment(app_station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    await open_finalise(clinician, treatment_id)
    # Signed on a station with no cloud: saved here, and nothing claims the cloud has it.
    assert text_of(clinician, "signature-status") == "Signed and saved here"
    await clinician.should_see("Saved here", retries=WAIT)
    assert text_of(clinician, f"receipt-{treatment_id}") == "Saved here"
    await clinician.should_not_see("Confirmed by the cloud")
    assert not has_testid(clinician, "sign")


# --- signing online -----------------------------------------------------------------------------------
@pytest.fixture
def online_treatment(cloud_link: CloudLink, station_dir: Path, real_clock: FakeClock) -> str:
    """An emergency insertion ready to sign, recorded on the linked station before its app starts."""
    station = open_station(station_dir, clock=real_clock)
    try:
        install_bundle(station, login_bundle(real_clock.now))  # the spare applicator, valid today
        change = start_insertion(
            station,
            NURSE,
            site=SITE,
            day=station.local_today(),
            surgeon="Dr. Gold",
            emergency=EmergencyPatient(subject_id="MRN-77", patient_label="Online, Olga"),
        )
        treatment_id = change.record["id"]
        move(station, scan(station, treatment_id, "DART-0000-SPARE")["id"], [S.INSERTED])
    finally:
        station.close()
    return treatment_id


@pytest.mark.postgres
async def test_online_the_nurse_signs_with_her_name_and_position(
    online_treatment: str, linked_user: User
) -> None:
    await sign_in_with_pin(linked_user, NURSE_EMAIL, NURSE_PIN)
    await linked_user.should_see("Online", retries=100)
    await open_finalise(linked_user, online_treatment)
    assert text_of(linked_user, "signing-mode").startswith("Online: the cloud is reachable")
    assert not has_testid(linked_user, "sign-pin")
    await sign(linked_user, pin=None)
    # Signed and saved here; the cloud's confirmation is the receipt's to tell, once the sync took it.
    await linked_user.should_see("Signed and saved here", retries=WAIT)
    saved = treatment(await station_started(), online_treatment)
    assert saved["signature_mode"] == SignatureMode.SELF.value and saved["signature_status"] == "confirmed"
    by_testid(linked_user, "sync-now").click()
    await linked_user.should_see("Confirmed by the cloud", retries=WAIT * 3)
    assert text_of(linked_user, f"receipt-{online_treatment}") == "Confirmed by the cloud"
    assert text_of(linked_user, "signature-status") == "Signed and saved here"
    assert not remote.open_entries(await station_started())
