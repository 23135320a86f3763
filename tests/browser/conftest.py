"""Browser tests: the real Chromium against the real station, linked to the real cloud.

One world per test session (starting it is the slow part): a fresh PostgreSQL database, fake Priority
in a thread, `python run.py cloud` in its own process, and `python run.py station --cloud URL --enrol
CODE` in another, enrolled with a code the administrator issued. The nurse signs in once the way she
would, with the verification code the cloud "sends" (its outbox file) and a PIN of her choice; each
test then gets a fresh browser tab of that signed-in browser.

Screenshots of every page go to `test-artifacts/screenshots/` (git-ignored; `DART_SCREENSHOTS`
overrides it); the best of them are kept in `docs/screenshots/`.
"""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from cloud.db import make_engine
from cloud.migrate import upgrade
from cloud.priority.fake import create_fake_priority
from cloud.priority.fixtures import PriorityData, build_fixtures
from store.station import Station, open_station
from tests.browser.pages import sign_in_online
from tests.browser.world import (
    ROOT,
    Cloud,
    CloudConfig,
    Nurse,
    Order,
    StationProcess,
    enrolment_code,
    load_priority,
    plain_orders,
    single_site_nurse,
    wait_for_validation_data,
)
from tests.cloud.conftest import service_url
from tests.pg import fresh_database
from tests.utils.servers import free_port, serve

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("DART_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
NURSE_PIN = "2580"
VIEWPORT = {"width": 1440, "height": 900}  # a common OR laptop screen
WAIT_MS = 20_000  # one answer of the station (a worker thread on a busy two-core machine)


@dataclass
class World:
    priority: PriorityData
    cloud: Cloud
    station: StationProcess
    store: Station  # the station's database, opened from the test process (set-up and checks)
    nurse: Nurse
    orders: list[Order] = field(default_factory=list)

    def take_order(self) -> Order:
        """An order no other test has used (each test its own patient)."""
        assert self.orders, "fake Priority has no plain order left for another browser test"
        return self.orders.pop(0)


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("browser-world")
    today = datetime.now(UTC).date()  # the station's zone is UTC unless configured
    data = build_fixtures(today)
    with fresh_database() as owner_url, serve(create_fake_priority(data)) as priority_url:
        upgrade(owner_url)
        app_url = service_url(owner_url)
        config = CloudConfig(
            owner_url=owner_url,
            app_url=app_url,
            port=free_port(),
            key_file=folder / "cloud" / "data.key",
            outbox=folder / "codes.jsonl",
        )
        engine = make_engine(app_url, pool_size=2)
        try:
            load_priority(engine, priority_url, config.key_file, today)
            code = enrolment_code(engine)
        finally:
            engine.dispose()
        cloud = Cloud(config, folder / "cloud.log")
        station = StationProcess(folder / "station", free_port(), folder / "station.log")
        try:
            cloud.start()
            station.start(cloud_url=cloud.url, code=code)
            store = open_station(station.data_dir)
            try:
                wait_for_validation_data(store, station)
                nurse = single_site_nurse(data)
                days = {today, today + timedelta(days=1)}
                yield World(data, cloud, station, store, nurse, plain_orders(data, nurse.site, days))
            finally:
                store.close()
        finally:
            station.stop()
            cloud.stop()


@pytest.fixture(autouse=True)
def no_server_errors(world: World) -> Iterator[None]:
    """A page can look right while the station logged a crash behind it: fail the test that caused one."""
    log = world.station.log
    start = log.stat().st_size
    yield
    with log.open(errors="replace") as handle:
        handle.seek(start)
        new = handle.read()
    assert "Traceback" not in new, f"the station logged an error during the test:\n{new[-4000:]}"


# --- the browser -----------------------------------------------------------------------------------
# Package scope, not session: Playwright's sync API keeps its event loop marked as running in the main
# thread while it lives, which would break every asyncio test collected after this package.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: browser tests must run on CI", pytrace=False)
        pytest.skip(message)
    chromium = playwright.chromium.launch(
        executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
    )
    yield chromium
    chromium.close()


Shoot = Callable[[Page, str], Path]


@pytest.fixture(scope="package")
def shoot() -> Shoot:
    """Save what the screen shows as `<name>.png` (the viewport: what a clinician sees at once)."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def save(page: Page, name: str) -> Path:
        page.evaluate("window.scrollTo(0, 0)")  # each page from its top, as it opens
        path = SHOTS / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled", caret="initial")
        return path

    return save


@pytest.fixture(scope="package")
def signed_in(world: World, browser: Browser, shoot: Shoot) -> dict[str, Any]:
    """The nurse signs in online, as she would: her e-mail, the code the cloud sent, a PIN for offline.

    Returns the browser's storage (its session cookie), so each test opens a tab already signed in."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        sign_in_online(
            page, world.station.url, world.nurse.email, world.cloud.config.outbox, NURSE_PIN, shoot
        )
        expect(page.get_by_test_id("header-user")).to_have_text(world.nurse.name)
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture
def page(browser: Browser, signed_in: dict[str, Any]) -> Iterator[Page]:
    """A new tab of the nurse's signed-in browser (a PDF download is kept for the test to read)."""
    context: BrowserContext = browser.new_context(
        viewport=VIEWPORT,
        storage_state=signed_in,
        accept_downloads=True,  # type: ignore[arg-type]
    )
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    yield tab
    context.close()
