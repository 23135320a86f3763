"""The sync banner in every page's header, and the per-record receipt: they say what is true.

Without a cloud: not linked, what waits (by priority), the clock never checked, the validation data's
freshness in the hospital's local time, what needs a person (linking to /review). With the real cloud:
online, "Sync now" empties the queue and the receipts turn to confirmed; with the cloud unreachable:
offline, and the work stays saved here.
"""

from datetime import datetime

import pytest
from nicegui.testing import User

from store import remote
from store.station import Settings, Station
from tests.ui.conftest import NURSE_EMAIL, NURSE_PIN, CloudLink, sign_in_with_pin
from tests.ui.helpers_pages import by_testid, has_testid, text_of
from tests.ui.test_login_online import unreachable_cloud  # noqa: F401  (fixture by name)
from tests.utils.data import FakeClock
from tests.utils.flows import insertion, scan

BANNER = 40  # should_see retries (0.1 s): the banner refreshes every 3 s


@pytest.fixture
def station_sync(request: pytest.FixtureRequest) -> bool:
    """The background sync runs for the tests that name it (offline, online)."""
    return "offline_user" in request.fixturenames


@pytest.fixture
def station_settings() -> Settings:
    """A hospital in Israel: times are stored in UTC and shown in Jerusalem's time (UTC+2 in November)."""
    return Settings(timezone="Asia/Jerusalem")


async def test_an_unlinked_station_says_so_and_counts_what_waits_by_priority(
    nurse: User, station: Station
) -> None:
    await nurse.should_see("Not linked to a cloud", retries=BANNER)
    await nurse.should_see("Nothing waiting")
    await nurse.should_see("Last sync: never")
    await nurse.should_see("Clock: not checked yet")
    # The bundle is valid until 3 Dec 09:00 UTC: 11:00 in the hospital's zone.
    await nurse.should_see("Validation data valid until 03 Dec 11:00")
    treatment_id = insertion(station, "SO2611001")
    scan(station, treatment_id, "DART-9000-00000")
    scan(station, treatment_id, "DART-9000-00001")
    await nurse.should_see("3 waiting (1 treatments started, 2 new applicators)", retries=BANNER)


async def test_stale_validation_data_is_named_in_the_banner(nurse: User, ui_clock: FakeClock) -> None:
    ui_clock.advance(days=8)  # past the bundle's valid_until
    await nurse.open("/today")
    await nurse.should_see("Validation data out of date (users, schedule, inventory)", retries=BANNER)


async def test_a_refused_change_is_counted_and_leads_to_the_review_page(
    nurse: User, station: Station
) -> None:
    treatment_id = insertion(station, "SO2611001")
    [entry] = remote.open_entries(station)
    remote.quarantine_unsendable(station, entry, "the site is unknown to the cloud", at=station.now())
    await nurse.should_see("1 need a person", retries=BANNER)
    by_testid(nurse, "banner-needs-person").click()
    await nurse.should_see("Refused by the cloud: insert of treatments", retries=BANNER)
    await nurse.should_see("the site is unknown to the cloud")
    await nurse.should_see("Patient: Cohen, Miriam")  # whose record it is, before anything else
    assert treatment_id in {entry["record_id"]}


async def test_an_unlinked_station_offers_no_sync_now(nurse: User) -> None:
    await nurse.should_see("Not linked to a cloud", retries=BANNER)
    assert not has_testid(nurse, "sync-now")  # hidden: there is nothing to sync with


@pytest.mark.postgres
async def test_online_sync_now_empties_the_queue_and_the_receipt_turns_confirmed(
    cloud_link: CloudLink, linked_user: User, real_clock: FakeClock
) -> None:
    await sign_in_with_pin(linked_user, NURSE_EMAIL, NURSE_PIN)
    await linked_user.should_see("Online", retries=BANNER)
    await linked_user.should_see("Clock OK", retries=BANNER)
    from ui import session

    station = session.current_station()
    change = _emergency_insertion(station)
    await linked_user.open("/today")
    await linked_user.should_see("1 waiting (1 treatments started)", retries=BANNER)
    await linked_user.should_see("Saved here", retries=BANNER)
    by_testid(linked_user, "sync-now").click()
    await linked_user.should_see("Synced: 1 change(s) sent", retries=BANNER * 2)
    await linked_user.should_see("Nothing waiting", retries=BANNER)
    await linked_user.should_see("Confirmed by the cloud", retries=BANNER)
    assert text_of(linked_user, f"receipt-{change}") == "Confirmed by the cloud"
    local = real_clock.now.astimezone(station.settings.zone)
    assert text_of(linked_user, "banner-last-sync") == f"Last sync: {local:%H:%M}"


@pytest.fixture
def offline_user(unreachable_cloud: None, station_sync: bool, user: User) -> User:  # noqa: F811
    """The nurse's browser on a station whose cloud cannot be reached, its background sync running."""
    assert station_sync
    return user


async def test_an_unreachable_cloud_turns_the_banner_offline_and_work_goes_on(offline_user: User) -> None:
    await sign_in_with_pin(offline_user, NURSE_EMAIL, NURSE_PIN)
    await offline_user.should_see("Offline: working on this station", retries=BANNER * 2)
    from ui import session

    insertion(session.current_station(), "SO2611001")
    await offline_user.open("/today")
    await offline_user.should_see("1 waiting (1 treatments started)", retries=BANNER)
    await offline_user.should_see("Saved here", retries=BANNER)


def _emergency_insertion(station: Station) -> str:
    from store.treatments import EmergencyPatient, start_insertion
    from tests.utils.data import NURSE, SITE

    change = start_insertion(
        station,
        NURSE,
        site=SITE,
        day=station.local_today(),
        surgeon="Dr. Gold",
        emergency=EmergencyPatient(subject_id=f"HOSP-{datetime.now():%H%M%S%f}", patient_label="Katz, Dov"),
    )
    return change.record["id"]
