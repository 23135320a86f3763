"""A removal in the real browser whose seeds do not all come out: the four-category clarification."""

import pytest
from playwright.sync_api import Page, expect

from store.applicators import change_status
from store.enums import ApplicatorStatus, SignatureMode
from store.scanning import scan_applicator
from store.treatments import finalise_treatment, start_insertion
from tests.browser.conftest import Shoot, World
from tests.browser.pages import LOADED_WORKFLOW, SKIN_WORKFLOW, by_id, download_pdf_text, expect_notice, sign
from tests.browser.world import Order, station_actor

pytestmark = pytest.mark.postgres  # and the system Chromium


def finalised_insertion(world: World, order: Order, count: int) -> str:
    """The insertion a removal starts from: `count` applicators inserted, signed, made with the store's
    own commands in the station's database (the station process syncs them like any other change)."""
    station, nurse = world.store, station_actor(world.store, world.nurse.email)
    workflow = SKIN_WORKFLOW if order.indication == "skin" else LOADED_WORKFLOW
    treatment_id = start_insertion(
        station, nurse, site=order.site, day=order.day, surgeon="Dr. Gold", order_names=[order.name]
    ).record["id"]
    for applicator in order.applicators[:count]:
        scanned = scan_applicator(station, nurse, treatment_id=treatment_id, raw=applicator.serial)
        assert scanned.saved and scanned.applicator is not None, scanned.message
        for label in workflow["Inserted"]:
            status = next(s for s in ApplicatorStatus if s.label == label)
            change_status(
                station,
                nurse,
                applicator_id=scanned.applicator["id"],
                status=status,
                confirm_permanent=status.is_terminal,
            )
    finalise_treatment(station, nurse, treatment_id=treatment_id, mode=SignatureMode.SELF)
    return treatment_id


def test_a_removal_with_seeds_missing_is_explained_in_four_categories_that_must_add_up(
    world: World, page: Page, shoot: Shoot
) -> None:
    order = world.take_order()
    insertion_id = finalised_insertion(world, order, count=2)
    capacity = order.applicators[0].seeds
    assert order.applicators[1].seeds == capacity
    deployed = 2 * capacity

    # Today: Start removal, find the patient's finalised insertion, confirm the early removal.
    page.goto(f"{world.station.url}/today")
    by_id(page, "start-removal").click()
    by_id(page, "removal-search").fill(order.patient.split(",")[0])
    by_id(page, f"choose-{insertion_id}").click()
    expect(by_id(page, "removal-message")).to_contain_text("days")  # outside the 13-21 day window
    shoot(page, "removal-start-window")
    by_id(page, "removal-confirm").click()
    page.wait_for_url(f"{world.station.url}/removal/**")
    expect(by_id(page, "patient-name")).to_have_text(f"Patient: {order.patient}")
    expect(by_id(page, "counts-removed")).to_have_text(f"Seeds removed: 0 of {deployed} deployed")
    group = by_id(page, f"group-{capacity}")
    expect(by_id(group, "group-removed")).to_have_text("Removed 0 of 2")

    # One applicator comes out; one applicator's seeds do not, except one seed found on its own.
    by_id(page, "removal-comment").fill("Tip intact")
    by_id(page, f"remove-{capacity}").click()
    expect(by_id(page, "notice-title")).to_have_text(f"Applicator {order.applicators[0].serial} removed")
    expect(by_id(group, "group-removed")).to_have_text("Removed 1 of 2")
    by_id(page, "seed-reason").get_by_role("radio", name="Other (describe)").click()
    by_id(page, "seed-text").fill("Found on the drape")
    by_id(page, "remove-seed").click()
    expect_notice(page, "Single seed removed")
    removed = capacity + 1
    gap = deployed - removed
    expect(by_id(page, "counts-removed")).to_have_text(f"Seeds removed: {removed} of {deployed} deployed")
    expect(by_id(page, "counts-detail")).to_have_text(f"{capacity} with applicators, 1 single seed(s)")
    expect(by_id(page, "counts-gap")).to_have_text(
        f"Difference to explain in the removal form: {gap} seed(s) not removed"
    )
    expect(by_id(page, "single-seed-list")).to_contain_text("Other: Found on the drape")

    # The form: categories that do not add up are refused, in words, and nothing is saved.
    by_id(page, "form-same-day").get_by_role(
        "radio", name="Everything was removed that day", exact=True
    ).click()
    by_id(page, "form-lost").fill("1")
    expect(by_id(page, "form-sum")).to_have_text(
        f"Explained 1 of {gap}: the categories must add up to {gap}."
    )
    by_id(page, "form-save").click()
    expect_notice(page, "The removal form was not saved")
    expect(by_id(page, "form-problem")).not_to_be_empty()
    shoot(page, "removal-sum-refused")

    amounts = {"lost": 1, "retrieved": 1, "in_tissue": gap - 3, "other": 1}
    for key, amount in amounts.items():
        by_id(page, f"form-{key}").fill(str(amount))
    by_id(page, "form-other-text").fill("Seed stuck to the drape")
    expect(by_id(page, "form-sum")).to_have_text(f"Explained {gap} of {gap}: the sum matches.")
    by_id(page, "form-save").click()
    expect_notice(page, "Removal form saved", "can now be finalised")
    expect(by_id(page, "form-problem")).to_be_empty()
    shoot(page, "removal")

    # Finalise and the removal report.
    by_id(page, "go-finalise").click()
    page.wait_for_url(f"{world.station.url}/finalise/**")
    expect(by_id(page, "finalise-ready")).to_have_text("Every check passed: the removal can be signed.")
    sign(page)
    text = download_pdf_text(page)
    for expected in (
        "Alpha DaRT removal report",
        "Finalised and signed.",
        f"Patient {order.patient}",
        "Everything removed the same day Yes",
        f"{order.applicators[0].serial} {capacity} {capacity}",
        "Tip intact",
        "Other: Found on the drape",
        f"Deployed at insertion {deployed}",
        f"Removed with applicators {capacity}",
        "Removed one at a time 1",
        f"Removed in total {removed}",
        f"Difference {gap}",
        "Lost 1",
        "Retrieved to site 1",
        f"Remained in tissue {gap - 3}",
        "Other 1 (Seed stuck to the drape)",
        f"Signed by {world.nurse.name}",
    ):
        assert expected in text, f"{expected!r} is not in the PDF:\n{text}"
