"""/review: what waits for a person, each item with its patient, and the decisions that clear it.

The safety conflict is made the way it happens: two laptops, both offline, scan one applicator into two
patients; the other laptop syncs first, then this station's "Sync now" meets it (invariant 9).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from nicegui.testing import User

from store import remote
from store.scanning import Confirmation, scan_applicator
from store.station import Station, open_station
from store.treatments import start_insertion
from store.validation_cache import install_bundle
from sync.engine import SyncEngine
from tests.ui.conftest import NURSE_EMAIL, NURSE_PIN, CloudLink, login_bundle, sign_in_with_pin
from tests.ui.helpers_pages import by_testid
from tests.ui.test_login import WAIT
from tests.utils.data import NURSE, SITE, FakeClock
from tests.utils.flows import insertion

SERIAL = "DART-9000-00000"  # on Cohen's order (SO2611001)


async def test_nothing_waiting_says_so(nurse: User) -> None:
    await nurse.open("/review")
    await nurse.should_see("Nothing waits for a person.", retries=WAIT)


async def test_a_change_the_cloud_refused_is_shown_with_its_patient_and_reason(
    nurse: User, station: Station
) -> None:
    insertion(station, "SO2611006")
    [entry] = remote.open_entries(station)
    remote.quarantine_unsendable(station, entry, "the payload is larger than 32 KiB", at=station.now())
    await nurse.open("/review")
    await nurse.should_see("Refused by the cloud: insert of treatments", retries=WAIT)
    await nurse.should_see("Patient: Friedman, Ada")
    await nurse.should_see("ID SO2611006")
    await nurse.should_see("the payload is larger than 32 KiB")
    await nurse.should_see("holds back only the changes that depend on it")


@pytest.fixture
def second_laptop(cloud_link: CloudLink, tmp_path: Path, real_clock: FakeClock) -> Iterator[Station]:
    """Another OR laptop at the same sites, with the same validation data, linked to the same cloud."""
    other = open_station(tmp_path / "laptop-b", clock=real_clock)
    install_bundle(other, login_bundle(real_clock.now))
    cloud_link.link(other)
    yield other
    other.close()


def _treatment(station: Station, order: str) -> str:
    change = start_insertion(
        station, NURSE, site=SITE, day=station.local_today(), surgeon="Dr. Gold", order_names=[order]
    )
    return change.record["id"]


@pytest.mark.postgres
async def test_one_applicator_in_two_patients_is_held_and_a_person_decides_where_it_stays(
    cloud_link: CloudLink, second_laptop: Station, linked_user: User
) -> None:
    from ui import session

    here = session.current_station()
    cohen = _treatment(here, "SO2611001")
    assert scan_applicator(here, NURSE, treatment_id=cohen, raw=SERIAL).saved
    friedman = _treatment(second_laptop, "SO2611006")
    scanned = scan_applicator(
        second_laptop,
        NURSE,
        treatment_id=friedman,
        raw=SERIAL,
        confirmed=frozenset({Confirmation.WRONG_TREATMENT}),
    )
    assert scanned.saved, scanned.message
    assert SyncEngine(second_laptop).run_round().outcome == "ok"

    await sign_in_with_pin(linked_user, NURSE_EMAIL, NURSE_PIN)
    await linked_user.should_see("Yesterday,", retries=WAIT)
    by_testid(linked_user, "sync-now").click()
    await linked_user.should_see("need a person", retries=WAIT * 2)
    by_testid(linked_user, "banner-needs-person").click()
    await linked_user.should_see("Safety: One applicator is recorded in two treatments", retries=WAIT)
    await linked_user.should_see("Patient: Cohen, Miriam")
    await linked_user.should_see("Patient: Friedman, Ada")
    await linked_user.should_see(f"Applicator {SERIAL} is recorded in 2 treatment(s) at once")
    by_testid(linked_user, f"keep-in-{cohen}").click()
    await linked_user.should_see("Give the reason for this decision", retries=WAIT)
    reason = next(
        e
        for e in linked_user.client.elements.values()
        if str(e.props.get("data-testid", "")).startswith("reason-")
    )
    reason.value = "Scanned at Cohen's table; Friedman's laptop scanned the wrong box"  # type: ignore[attr-defined]
    by_testid(linked_user, f"keep-in-{cohen}").click()
    await linked_user.should_see("Nothing waits for a person.", retries=WAIT)
