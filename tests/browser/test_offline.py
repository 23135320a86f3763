"""The cloud goes away in the middle of a procedure: only the banner says so; when it comes back, the
queue empties and every receipt on the page turns to "Confirmed by the cloud"."""

from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import create_engine, select

from cloud.schema import applicators as cloud_applicators
from tests.browser.conftest import Shoot, World
from tests.browser.labels import labels
from tests.browser.pages import (
    LOADED_WORKFLOW,
    SKIN_WORKFLOW,
    by_id,
    expect_notice,
    move,
    row,
    scan,
    start_insertion,
)

pytestmark = pytest.mark.postgres  # and the system Chromium

OFFLINE_WAIT_MS = 40_000  # the station probes the cloud every 10 s (2 s timeout)
CATCH_UP_WAIT_MS = 75_000  # a sync round every 30 s, then the banner's 3 s refresh


@pytest.fixture
def cloud_back(world: World) -> Iterator[None]:
    """Whatever happens in the test, the next test finds the cloud running."""
    yield
    if not world.cloud.running:
        world.cloud.start()


def chip(element: Locator) -> Locator:
    """A chip's words (without its icon's ligature name)."""
    return element.locator(".q-chip__content")


def receipt(applicator: Locator) -> Locator:
    return chip(applicator.locator("[data-testid^=receipt-]"))


def test_offline_mid_procedure_changes_only_the_banner_and_the_cloud_confirms_on_return(
    world: World, page: Page, shoot: Shoot, cloud_back: None
) -> None:
    order = world.take_order()
    first, second, third = order.applicators[:3]
    first_label, second_label, third_label = labels([first, second, third])
    workflow = SKIN_WORKFLOW if order.indication == "skin" else LOADED_WORKFLOW
    connectivity = chip(by_id(page, "banner-connectivity"))

    start_insertion(page, world.station.url, order, "Dr. Shira Biton")
    expect(connectivity).to_have_text("Online")
    scan(page, first_label)
    expect_notice(page, "Applicator recorded", first.serial)
    online_message = by_id(page, "notice-message").inner_text()

    # The network goes: the cloud's process is stopped.
    world.cloud.stop()
    expect(connectivity).to_have_text("Offline: working on this station", timeout=OFFLINE_WAIT_MS)

    # The procedure goes on exactly as before: scans accepted, rows shown, moves saved, here.
    for applicator, label in ((second, second_label), (third, third_label)):
        scan(page, label)
        expect_notice(page, "Applicator recorded", applicator.serial)
        # Word for word what the nurse read online.
        expect(by_id(page, "notice-message")).to_have_text(
            online_message.replace(first.serial, applicator.serial)
        )
    for applicator in (first, second, third):
        expect(by_id(row(page, applicator.serial), "applicator-status")).to_have_text("Sealed")
    move(page, second.serial, workflow["Inserted"][0])
    expect(by_id(page, "patient-name")).to_have_text(f"Patient: {order.patient}")
    for applicator in (second, third):
        expect(receipt(row(page, applicator.serial))).to_have_text("Saved here")
    expect(page.locator(".q-notification")).to_have_count(0)  # no error popped up anywhere
    # The banner is the one thing that changed: offline, with what waits for the cloud.
    waiting = world.station.health()["waiting"]
    assert waiting >= 3  # two scans and a move, and whatever the first round had not sent yet
    expect(by_id(page, "banner-waiting")).to_contain_text(f"{waiting} waiting")
    shoot(page, "insertion-offline")

    # The network comes back: the same cloud on the same database.
    world.cloud.start()
    expect(connectivity).to_have_text("Online", timeout=CATCH_UP_WAIT_MS)
    expect(by_id(page, "banner-waiting")).to_have_text("Nothing waiting", timeout=CATCH_UP_WAIT_MS)
    expect(chip(by_id(page, "applicator-list").locator("[data-testid^=receipt-]"))).to_have_text(
        ["Confirmed by the cloud"] * 3, timeout=CATCH_UP_WAIT_MS
    )
    shoot(page, "insertion-confirmed")
    assert world.station.health()["waiting"] == 0

    # And the cloud holds what was recorded offline, the move included.
    engine = create_engine(world.cloud.config.owner_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(cloud_applicators.c.serial_number, cloud_applicators.c.data["status"].astext).where(
                    cloud_applicators.c.serial_number.in_([first.serial, second.serial, third.serial])
                )
            ).all()
    finally:
        engine.dispose()
    expected_second = workflow["Inserted"][0].upper()
    assert sorted(rows) == sorted(
        [(first.serial, "SEALED"), (second.serial, expected_second), (third.serial, "SEALED")]
    )
