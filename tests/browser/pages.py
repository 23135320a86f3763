"""What a clinician does on the station's pages, in the real browser: keys, clicks, downloads.

Elements are found by their `data-testid` (the pages set it; NiceGUI puts it on the native input of a
text field). Waiting is Playwright's: `expect(...)` retries until the page shows the text or the
timeout ends, never a sleep.
"""

import io
from collections.abc import Callable
from datetime import date
from pathlib import Path

from playwright.sync_api import Locator, Page, expect
from pypdf import PdfReader

from tests.browser.world import Order, login_code

# Moves to each terminal status by workflow (domain.md): the buttons a nurse presses, in order.
LOADED_WORKFLOW = {"Inserted": ["Opened", "Loaded", "Inserted"], "Faulty": ["Opened", "Faulty"]}
SKIN_WORKFLOW = {"Inserted": ["Inserted"], "Faulty": ["Faulty"]}


def by_id(page: Page | Locator, testid: str) -> Locator:
    return page.get_by_test_id(testid)


def sign_in_online(
    page: Page,
    base_url: str,
    email: str,
    outbox: Path,
    pin: str,
    shoot: Callable[[Page, str], Path] | None = None,
) -> None:
    """What a nurse does at the login page: her e-mail, "Send me a code", the code from the message
    (the cloud's outbox), a PIN for the times without network, Sign in; she lands on Today."""
    page.goto(f"{base_url}/today")
    expect(page).to_have_url(f"{base_url}/login?next=/today")  # not signed in yet
    by_id(page, "login-identifier").fill(email)
    if shoot:
        shoot(page, "login")
    by_id(page, "login-send-code").click()
    expect(by_id(page, "login-sent")).to_contain_text("code", ignore_case=True)
    by_id(page, "login-code").fill(login_code(outbox, email))
    by_id(page, "login-new-pin").fill(pin)
    if shoot:
        shoot(page, "login-code")
    by_id(page, "login-verify").click()
    expect(page).to_have_url(f"{base_url}/today")


def start_insertion(page: Page, base_url: str, order: Order, surgeon: str) -> str:
    """From Today: the order's Start button, the surgeon, Start insertion; returns the treatment id."""
    page.goto(f"{base_url}/today")
    by_id(page, f"start-{order.name}").click()
    dialog_order = by_id(page, "insertion-order")
    expect(dialog_order).to_contain_text(order.patient)  # the order is preselected in the dialog
    by_id(page, "insertion-surgeon").fill(surgeon)
    by_id(page, "insertion-start").click()
    page.wait_for_url(f"{base_url}/treatment/**")
    expect(by_id(page, "patient-name")).to_have_text(f"Patient: {order.patient}")
    return page.url.rsplit("/", 1)[1]


def scan(page: Page, label: str) -> None:
    """Type the label into the focused scan field the way a keyboard-wedge scanner does, then Enter."""
    field = by_id(page, "scan-input")
    expect(field).to_be_focused()  # the field holds the focus: the scanner's keys go there
    expect(field).to_have_value("")
    page.keyboard.type(label)
    page.keyboard.press("Enter")


def expect_notice(page: Page, title: str, message_part: str | None = None) -> None:
    expect(by_id(page, "notice-title")).to_have_text(title)
    if message_part is not None:
        expect(by_id(page, "notice-message")).to_contain_text(message_part)


def row(page: Page, serial: str) -> Locator:
    return by_id(page, f"applicator-{serial}")


def move(
    page: Page, serial: str, status: str, *, deployed: int | None = None, comment: str | None = None
) -> None:
    """Press the row's button for `status`; a final status asks for what it needs and "permanent"."""
    applicator = row(page, serial)
    by_id(applicator, f"move-{status.lower().replace(' ', '_')}").click()
    if status in ("Inserted", "Faulty", "Disposed", "Discharged", "Deployment failure"):
        dialog = by_id(page, "status-dialog")
        if deployed is not None:
            by_id(dialog, "status-deployed").fill(str(deployed))
        if comment is not None:
            by_id(dialog, "status-comment").fill(comment)
        by_id(dialog, "status-save").click()
        expect(by_id(dialog, "status-permanent")).to_contain_text("permanent", ignore_case=True)
        expect(by_id(dialog, "status-save")).to_contain_text("permanent", ignore_case=True)
        by_id(dialog, "status-save").click()
        expect(dialog).to_be_hidden()
    expect(by_id(applicator, "applicator-status")).to_have_text(status)


def sign(page: Page) -> None:
    """On the finalise page: the confirmation box, then Sign and finalise."""
    by_id(page, "sign-confirm").click()
    by_id(page, "sign").click()
    expect(by_id(page, "locked")).to_have_text("Finalised and locked: nothing can be added or changed.")


def download_pdf_text(page: Page) -> str:
    """Press "Download ... report (PDF)" and read the text of the file the browser saved."""
    with page.expect_download() as download:
        by_id(page, "download-pdf").click()
    path = download.value.path()
    content = path.read_bytes()
    assert content.startswith(b"%PDF-"), "the download is not a PDF"
    return "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(content)).pages)


def day_words(day: date) -> str:
    return f"{day:%d %b %Y}"
