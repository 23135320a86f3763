"""Online login against the real cloud (PostgreSQL, HTTP on loopback): the code, the PIN chosen with it,
and the refusals of each step at their field. The code is read from the cloud's outbox (FileSender)."""

import contextlib
from pathlib import Path

import pytest
from nicegui.testing import User

from store import remote
from store.errors import StoreError
from store.sign_in import MAX_PIN_FAILURES, check_pin
from store.station import open_station
from tests.cloud.test_login import wait_for_code
from tests.ui.conftest import NURSE_EMAIL, CloudLink, sign_in_with_pin
from tests.ui.helpers_pages import by_testid
from tests.ui.test_login import WAIT, signed_in
from tests.utils.data import FakeClock
from tests.utils.servers import free_port

NEW_PIN = "4826"


def retype(user: User, testid: str, text: str) -> None:
    """Replace what a field holds (the simulated user only types at the end)."""
    for element in by_testid(user, testid).elements:
        element.value = ""  # type: ignore[attr-defined]
    by_testid(user, testid).type(text)


async def ask_for_code(user: User, link: CloudLink) -> str:
    await user.open("/login")
    by_testid(user, "login-identifier").type(NURSE_EMAIL)
    by_testid(user, "login-send-code").click()
    await user.should_see("a code is on its way", retries=WAIT)
    return wait_for_code(link.outbox, NURSE_EMAIL, already=0)


@pytest.mark.postgres
async def test_a_code_and_a_new_pin_sign_in_online_and_the_pin_then_works_offline(
    cloud_link: CloudLink, linked_user: User
) -> None:
    code = await ask_for_code(linked_user, cloud_link)
    by_testid(linked_user, "login-code").type(code)
    by_testid(linked_user, "login-new-pin").type(NEW_PIN)
    by_testid(linked_user, "login-verify").click()
    await linked_user.should_see("Yesterday,", retries=WAIT)
    assert signed_in(linked_user) == "Dana Shapiro"
    by_testid(linked_user, "sign-out").click()
    await linked_user.should_see("Sign in", retries=WAIT)
    await sign_in_with_pin(linked_user, NURSE_EMAIL, NEW_PIN)  # checked on the station, not the cloud
    await linked_user.should_see("Yesterday,", retries=WAIT)
    assert signed_in(linked_user) == "Dana Shapiro"


@pytest.mark.postgres
async def test_a_wrong_code_is_refused_at_the_code_field(cloud_link: CloudLink, linked_user: User) -> None:
    code = await ask_for_code(linked_user, cloud_link)
    by_testid(linked_user, "login-code").type(f"{(int(code) + 1) % 1_000_000:06d}")
    by_testid(linked_user, "login-new-pin").type(NEW_PIN)
    by_testid(linked_user, "login-verify").click()
    await linked_user.should_see("The code is wrong or has expired.", retries=WAIT)
    assert signed_in(linked_user) is None


@pytest.mark.postgres
async def test_a_short_code_and_a_guessable_pin_are_refused_before_the_cloud_is_asked(
    cloud_link: CloudLink, linked_user: User
) -> None:
    code = await ask_for_code(linked_user, cloud_link)
    by_testid(linked_user, "login-code").type("12345")
    by_testid(linked_user, "login-verify").click()
    await linked_user.should_see("The code is the 6 digits of the message.")
    retype(linked_user, "login-code", code)
    by_testid(linked_user, "login-new-pin").type("1234")
    by_testid(linked_user, "login-verify").click()
    await linked_user.should_see("not one digit repeated or a run like 1234", retries=WAIT)
    assert signed_in(linked_user) is None


@pytest.mark.postgres
async def test_a_blocked_pin_must_be_replaced_at_the_online_login(
    cloud_link: CloudLink, linked_user: User
) -> None:
    from ui import session

    station = session.current_station()
    for _ in range(MAX_PIN_FAILURES):
        with contextlib.suppress(StoreError):
            check_pin(station, identifier=NURSE_EMAIL, pin="9731")
    code = await ask_for_code(linked_user, cloud_link)
    by_testid(linked_user, "login-code").type(code)
    by_testid(linked_user, "login-verify").click()
    await linked_user.should_see("Choose a PIN (4 to 8 digits)", retries=WAIT)
    by_testid(linked_user, "login-new-pin").type(NEW_PIN)
    by_testid(linked_user, "login-verify").click()
    await linked_user.should_see("Yesterday,", retries=WAIT)
    assert check_pin(station, identifier=NURSE_EMAIL, pin=NEW_PIN).name == "Dana Shapiro"  # unblocked


@pytest.fixture
def unreachable_cloud(station_dir: Path, ui_clock: FakeClock) -> None:
    """The station linked to a cloud address where nothing listens (the OR without network)."""
    station = open_station(station_dir, clock=ui_clock)
    url = f"http://127.0.0.1:{free_port()}"
    remote.link_cloud(station, cloud_url=url, credential="device-token", device_id=station.device_id)
    station.close()


async def test_an_unreachable_cloud_offers_the_pin_at_once(unreachable_cloud: None, user: User) -> None:
    await user.open("/login")
    by_testid(user, "login-identifier").type(NURSE_EMAIL)
    by_testid(user, "login-send-code").click()
    await user.should_see("The cloud cannot be reached from this room", retries=WAIT)
    by_testid(user, "login-pin").type("2580")
    by_testid(user, "login-pin-submit").click()
    await user.should_see("Yesterday,", retries=WAIT)
