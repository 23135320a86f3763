"""A whole insertion in the real browser, at the keyboard the way a scanner types, to the signed PDF."""

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import VIEWPORT, Shoot, World
from tests.browser.labels import label, labels, row
from tests.browser.pages import (
    LOADED_WORKFLOW,
    SKIN_WORKFLOW,
    by_id,
    download_pdf_text,
    expect_notice,
    move,
    scan,
    sign,
    start_insertion,
)
from tests.browser.pages import row as applicator_row

pytestmark = pytest.mark.postgres  # and the system Chromium

SURGEON = "Dr. Shira Biton"
ONE_HEADER_LINE_PX = 64  # 44 px controls and the row's padding; a wrapped header is twice that


def test_a_whole_insertion_scanned_at_the_keyboard_finalised_and_its_pdf(
    world: World, page: Page, shoot: Shoot
) -> None:
    order = world.take_order()
    first, second, third = order.applicators[:3]
    workflow = SKIN_WORKFLOW if order.indication == "skin" else LOADED_WORKFLOW

    page.goto(f"{world.station.url}/today")
    expect(by_id(page, f"start-{order.name}")).to_be_visible()
    shoot(page, "today")
    treatment_id = start_insertion(page, world.station.url, order, SURGEON)
    # The patient and the site stay in view above everything (wrong-patient hazard).
    expect(by_id(page, "patient-id")).to_have_text(f"ID {order.name}")
    expect(by_id(page, "patient-site")).to_have_text(f"Site {order.site}")
    expect(by_id(page, "progress-seeds")).to_have_text(
        f"Seeds deployed: 0 of {order.planned_seeds} planned (0%)"
    )
    # On the narrowest OR laptop (1280 px) the header is one line, the patient bar right under it.
    page.set_viewport_size({"width": 1280, "height": 800})
    expect(by_id(page, "banner-connectivity")).to_contain_text("Online")
    bar = by_id(page, "patient-bar").bounding_box()
    assert bar is not None and bar["y"] <= ONE_HEADER_LINE_PX, f"the header wrapped: patient bar at {bar}"
    for control in ("nav-today", "sync-now", "lock-now", "header-user"):
        box = by_id(page, control).bounding_box()
        assert box is not None and box["y"] + box["height"] <= bar["y"], f"{control} is below the header"
    page.set_viewport_size(VIEWPORT)

    # Three applicators of the patient's order, each label framed as a real scanner frames it.
    for raw, applicator in zip(labels([first, second, third]), (first, second, third), strict=True):
        scan(page, raw)
        expect_notice(page, "Applicator recorded", applicator.serial)
        expect(by_id(applicator_row(page, applicator.serial), "applicator-status")).to_have_text("Sealed")
        expect(applicator_row(page, applicator.serial)).to_contain_text(f"{applicator.seeds} seeds")
        expect(applicator_row(page, applicator.serial)).to_contain_text(f"Lot {applicator.lot}")
    # The newest scan is at the top of the list.
    expect(by_id(page, "applicator-list").locator("[data-testid^=applicator-DART]").first).to_have_attribute(
        "data-testid", f"applicator-{third.serial}"
    )
    shoot(page, "insertion-scanned")

    # What the scanner sends that must not be recorded is said at once, in words.
    scan(page, label(row("B001"), first))  # the first applicator again, another label framing
    expect_notice(page, "Already scanned: nothing saved")
    scan(page, row("B001")["raw"])  # a real label of barcodes.tsv: an applicator of no order here
    expect_notice(page, "Stop: not allowed for this treatment", row("B001")["serial"])
    scan(page, row("B012")["raw"])  # HIBC
    expect_notice(page, "Cannot record this scan", "HIBC labels are not supported")
    shoot(page, "insertion-stopped-scan")
    expect(by_id(page, "applicator-list").locator("[data-testid^=applicator-DART]")).to_have_count(3)

    # Statuses to the end: two inserted, one faulty with the seeds it deployed and why.
    for status in workflow["Inserted"]:
        move(page, first.serial, status)
    for status in workflow["Inserted"]:
        move(page, second.serial, status)
    *before, faulty = workflow["Faulty"]
    for status in before:
        move(page, third.serial, status)
    move(page, third.serial, faulty, deployed=3, comment="Needle bent on insertion")
    expect(by_id(applicator_row(page, third.serial), "applicator-comment")).to_have_text(
        "Comment: Needle bent on insertion"
    )
    deployed = first.seeds + second.seeds + 3
    percent = round(100 * deployed / order.planned_seeds)
    expect(by_id(page, "progress-seeds")).to_have_text(
        f"Seeds deployed: {deployed} of {order.planned_seeds} planned ({percent}%)"
    )
    expect(by_id(page, "progress-status")).to_have_text("Applicators: 3 — Inserted 2, Faulty 1")
    expect(by_id(page, "progress-activity")).to_have_text(
        f"Total activity: {deployed * order.activity_per_seed:g} µCi"
    )
    shoot(page, "insertion-terminal")

    # Finalise: the checks pass, the nurse signs online, the treatment is locked.
    by_id(page, "go-finalise").click()
    page.wait_for_url(f"{world.station.url}/finalise/{treatment_id}")
    expect(by_id(page, "finalise-ready")).to_have_text("Every check passed: the insertion can be signed.")
    expect(by_id(page, "signing-mode")).to_contain_text("Online")
    shoot(page, "finalise")
    sign(page)
    expect(by_id(page, "signed-by")).to_contain_text(f"Signed by {world.nurse.name} (Nurse)")
    shoot(page, "finalised")

    text = download_pdf_text(page)
    for expected in (
        "Alpha DaRT insertion report",
        "Finalised and signed.",
        f"Patient {order.patient}",
        f"Patient identifier {order.name}",
        f"Site {order.site}",
        f"Procedure {order.indication}",
        f"Surgeon {SURGEON}",
        f"{first.serial} {first.catalogue}",
        f"{third.serial} {third.catalogue}",
        "Inserted Full use",
        "Faulty Faulty 3 Needle bent on insertion",
        "Applicators used 2",
        "Faulty 1",
        f"Seeds deployed {deployed} of {order.planned_seeds} planned ({percent}%)",
        f"Signed by {world.nurse.name}",
    ):
        assert expected in text, f"{expected!r} is not in the PDF:\n{text}"

    # Back on the record: locked, no scan field, no status buttons.
    by_id(page, "view-record").click()
    page.wait_for_url(f"{world.station.url}/treatment/{treatment_id}")
    expect(by_id(page, "locked")).to_be_visible()
    expect(by_id(page, "scan-input")).to_have_count(0)
    expect(by_id(applicator_row(page, first.serial), "move-faulty")).to_have_count(0)
