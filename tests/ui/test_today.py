"""/today: the site's treatments for yesterday, today and tomorrow, and starting each kind of treatment.

The station's clock stands at tests.utils.data's NOW (26 Nov 2026, 09:00 UTC, the hospital zone UTC);
the validation data has orders today (Cohen, Mizrahi, Biton, Friedman), tomorrow (Levi) and in five days
(Peretz, not shown).
"""

from typing import Any

from nicegui.testing import User
from sqlalchemy import select

from store.engine import read_transaction
from store.guards import TREATMENTS
from store.station import Station
from store.treatments import EmergencyPatient, start_insertion
from tests.ui.helpers_pages import by_testid, has_testid
from tests.ui.test_login import WAIT
from tests.utils.data import NURSE, SITE, TODAY, FakeClock
from tests.utils.flows import PATHS, S, finalised_insertion, insertion, move, scan


def treatments(station: Station) -> list[dict[str, Any]]:
    with read_transaction(station.engine) as conn:
        return [
            dict(r) for r in conn.execute(select(TREATMENTS).order_by(TREATMENTS.c.started_at)).mappings()
        ]


def choose(user: User, testid: str, value: Any) -> None:
    """Pick an option of a select (what a click on the option does)."""
    for element in by_testid(user, testid).elements:
        element.value = value  # type: ignore[attr-defined]


async def test_today_lists_the_three_days_orders_and_the_treatments_with_progress(
    nurse: User, station: Station
) -> None:
    treatment_id = insertion(station, "SO2611001")
    applicator = scan(station, treatment_id, "DART-8000-00000")  # 20 seeds
    move(station, applicator["id"], PATHS["loaded"][S.INSERTED])
    await nurse.open("/today")
    await nurse.should_see("Tomorrow, Friday 27 November 2026", retries=WAIT)
    await nurse.should_see("Yesterday, Wednesday 25 November 2026")
    await nurse.should_see("Nothing scheduled or recorded.")  # yesterday
    await nurse.should_see("20 / 80 seeds deployed (25%) · 1 applicator(s)")
    await nurse.should_see("In progress")
    for patient in ("Cohen, Miriam", "Mizrahi, Tal", "Biton, Eli", "Friedman, Ada", "Levi, Amir"):
        await nurse.should_see(patient)
    await nurse.should_not_see("Peretz, Ruth")  # five days away
    assert has_testid(nurse, f"item-{treatment_id}")
    assert not has_testid(nurse, "item-SO2611001")  # started: listed once, as the treatment
    assert has_testid(nurse, "item-SO2611004")


async def test_a_busy_day_shows_its_first_twenty_and_the_rest_on_request(
    nurse: User, station: Station
) -> None:
    for n in range(25):  # 25 treatments today, then the day's 4 orders not started: 29 in all
        start_insertion(
            station,
            NURSE,
            site=SITE,
            day=TODAY,
            surgeon="Dr. Gold",
            emergency=EmergencyPatient(subject_id=f"MRN-{n:02d}", patient_label=f"Busy, Patient {n:02d}"),
        )
    await nurse.open("/today")
    await nurse.should_see("Show 9 more (9 not shown)", retries=WAIT)
    assert len(items_of(nurse, "day-today")) == 20  # ui.today.PAGE_ITEMS
    await nurse.should_not_see("Cohen, Miriam")  # an order: listed after the treatments
    await nurse.should_see("Levi, Amir")  # tomorrow's single order is shown in full
    assert not has_testid(nurse, "more-tomorrow")
    by_testid(nurse, "more-today").click()
    await nurse.should_see("Cohen, Miriam", retries=WAIT)
    assert len(items_of(nurse, "day-today")) == 29
    assert not has_testid(nurse, "more-today")  # nothing left to show


def items_of(user: User, day: str) -> set[str]:
    """The test ids of the items listed under one day."""
    assert user.client is not None
    return {
        str(e.props["data-testid"])
        for e in user.client.elements.values()
        if str(e.props.get("data-testid", "")).startswith("item-")
        and any(a.props.get("data-testid") == day for a in e.ancestors())
    }


async def test_an_insertion_starts_from_the_days_order_and_opens_on_its_patient(
    nurse: User, station: Station
) -> None:
    await nurse.should_see("Cohen, Miriam", retries=WAIT)
    by_testid(nurse, "start-insertion").click()
    await nurse.should_see("Start an insertion", retries=WAIT)
    by_testid(nurse, "insertion-order").click()  # the list of the day's orders opens
    await nurse.should_see("Cohen, Miriam · SO2611001 · pancreas · 80 seeds", retries=WAIT)
    choose(nurse, "insertion-order", "SO2611001")
    by_testid(nurse, "insertion-surgeon").type("Dr. Gold")
    by_testid(nurse, "insertion-start").click()
    await nurse.should_see("Patient: Cohen, Miriam", retries=WAIT)  # the procedure page's patient bar
    started = treatments(station)
    assert len(started) == 1
    assert (
        started[0]["surgeon"] == "Dr. Gold" and started[0]["date"] == TODAY and started[0]["site"] == "TLV-1"
    )
    assert nurse.back_history[-1] == f"/treatment/{started[0]['id']}"


async def test_starting_an_insertion_refuses_a_missing_patient_or_surgeon_at_the_field(
    nurse: User, station: Station
) -> None:
    await nurse.should_see("Cohen, Miriam", retries=WAIT)
    by_testid(nurse, "start-insertion").click()
    await nurse.should_see("Start an insertion", retries=WAIT)
    by_testid(nurse, "insertion-start").click()
    await nurse.should_see("Choose the patient's order.", retries=WAIT)
    choose(nurse, "insertion-order", "SO2611004")
    by_testid(nurse, "insertion-start").click()
    await nurse.should_see("The surgeon is required.", retries=WAIT)
    assert treatments(station) == []


async def test_a_second_insertion_for_the_same_patient_and_day_is_refused(
    nurse: User, station: Station
) -> None:
    insertion(station, "SO2611004")
    by_testid(nurse, "start-insertion").click()
    await nurse.should_see("Start an insertion", retries=WAIT)
    by_testid(nurse, "insertion-order").click()
    await nurse.should_see("Mizrahi, Tal · SO2611004 · skin · 20 seeds · already started", retries=WAIT)
    choose(nurse, "insertion-order", "SO2611004")
    by_testid(nurse, "insertion-surgeon").type("Dr. Gold")
    by_testid(nurse, "insertion-start").click()
    await nurse.should_see("has already been started; open it instead.", retries=WAIT)
    assert len(treatments(station)) == 1


async def test_a_day_without_orders_says_so_and_points_to_the_emergency_insertion(nurse: User) -> None:
    by_testid(nurse, "start-insertion").click()
    await nurse.should_see("Start an insertion", retries=WAIT)
    yesterday = next(iter(by_testid(nurse, "dialog-day").elements))
    yesterday.value = TODAY.replace(day=25)  # type: ignore[attr-defined]
    await nurse.should_see("No order at this site on this day", retries=WAIT)


async def test_an_emergency_insertion_starts_without_an_order_and_is_flagged(
    nurse: User, station: Station
) -> None:
    by_testid(nurse, "start-emergency").click()
    await nurse.should_see("Emergency insertion (no order)", retries=WAIT)
    by_testid(nurse, "emergency-start").click()
    await nurse.should_see("The surgeon is required.", retries=WAIT)
    by_testid(nurse, "emergency-surgeon").type("Dr. Gold")
    by_testid(nurse, "emergency-start").click()
    await nurse.should_see("The patient identifier is required.", retries=WAIT)
    by_testid(nurse, "emergency-subject").type("HOSP-778812")
    by_testid(nurse, "emergency-patient").type("Katz, Dov")
    by_testid(nurse, "emergency-start").click()
    await nurse.should_see("Patient: Katz, Dov", retries=WAIT)
    await nurse.should_see("ID HOSP-778812")
    [started] = treatments(station)
    assert started["needs_reconciliation"] and started["order_hashes"] == []
    await nurse.open("/today")
    await nurse.should_see("Insertion (emergency, no order)", retries=WAIT)


async def test_a_removal_in_the_expected_window_starts_from_the_found_insertion(
    nurse: User, station: Station, ui_clock: FakeClock
) -> None:
    insertion_id = finalised_insertion(station, ["DART-9000-00000", "DART-9000-00001"])
    ui_clock.advance(days=14)
    await nurse.open("/today")
    by_testid(nurse, "start-removal").click()
    await nurse.should_see("inserted 26 Nov 2026 (14 days ago) · 20 seeds deployed", retries=WAIT)
    by_testid(nurse, "removal-search").type("miriam")
    by_testid(nurse, f"choose-{insertion_id}").click()
    await nurse.should_see("Patient: Cohen, Miriam", retries=WAIT)
    removal = [t for t in treatments(station) if t["type"] == "removal"]
    assert len(removal) == 1 and removal[0]["insertion_treatment_id"] == insertion_id
    assert nurse.back_history[-1] == f"/removal/{removal[0]['id']}"


async def test_a_removal_outside_the_window_asks_for_confirmation_first(
    nurse: User, station: Station, ui_clock: FakeClock
) -> None:
    insertion_id = finalised_insertion(station, ["DART-9000-00000"])
    ui_clock.advance(days=5)
    await nurse.open("/today")
    by_testid(nurse, "start-removal").click()
    await nurse.should_see("(5 days ago)", retries=WAIT)
    by_testid(nurse, f"choose-{insertion_id}").click()
    await nurse.should_see(
        "This removal is 5 days after the insertion; 13 to 21 days are expected.", retries=WAIT
    )
    assert [t for t in treatments(station) if t["type"] == "removal"] == []
    by_testid(nurse, "removal-confirm").click()
    await nurse.should_see("Patient: Cohen, Miriam", retries=WAIT)
    assert len([t for t in treatments(station) if t["type"] == "removal"]) == 1


async def test_a_second_removal_of_one_insertion_is_refused(
    nurse: User, station: Station, ui_clock: FakeClock
) -> None:
    from store.treatments import start_removal
    from tests.utils.data import NURSE

    insertion_id = finalised_insertion(station, ["DART-9000-00000"])
    ui_clock.advance(days=14)
    start_removal(station, NURSE, insertion_id=insertion_id)
    await nurse.open("/today")
    by_testid(nurse, "start-removal").click()
    await nurse.should_see("Removal already started", retries=WAIT)
    by_testid(nurse, f"choose-{insertion_id}").click()
    await nurse.should_see("A removal for this insertion already exists.", retries=WAIT)


async def test_an_insertion_that_is_not_finalised_cannot_be_found_for_removal(
    nurse: User, station: Station
) -> None:
    insertion(station, "SO2611001")
    by_testid(nurse, "start-removal").click()
    await nurse.should_see("No finalised insertion found at this site.", retries=WAIT)


async def test_a_continuation_within_24_hours_opens_a_new_treatment_for_the_same_patient(
    nurse: User, station: Station, ui_clock: FakeClock
) -> None:
    parent_id = finalised_insertion(station, ["DART-9000-00000"])
    ui_clock.advance(hours=23)
    await nurse.open("/today")
    by_testid(nurse, "start-continuation").click()
    await nurse.should_see("Continue for Cohen, Miriam", retries=WAIT)
    by_testid(nurse, f"choose-{parent_id}").click()
    await nurse.should_see("Patient: Cohen, Miriam", retries=WAIT)
    child = [t for t in treatments(station) if t["parent_treatment_id"] == parent_id]
    assert len(child) == 1 and child[0]["subject_hash"] == treatments(station)[0]["subject_hash"]
    assert nurse.back_history[-1] == f"/treatment/{child[0]['id']}"


async def test_no_continuation_is_offered_after_24_hours(
    nurse: User, station: Station, ui_clock: FakeClock
) -> None:
    finalised_insertion(station, ["DART-9000-00000"])
    ui_clock.advance(hours=25)
    await nurse.open("/today")
    by_testid(nurse, "start-continuation").click()
    await nurse.should_see("No insertion at this site was finalised in the last 24 hours.", retries=WAIT)


async def test_the_page_asks_to_sign_in_first(user: User) -> None:
    await user.open("/")
    await user.should_see("Sign in")
    await user.should_not_see("Start insertion")
