"""/login: offline by PIN, emergency access, the idle screen lock; every refusal said at its field.

The online login (a verification code from the real cloud) is in test_login_online.py.
"""

from nicegui.testing import User
from sqlalchemy import select

from store.engine import read_transaction
from store.models import AuditLog
from store.station import Station
from tests.ui.conftest import NO_PIN_EMAIL, NURSE_EMAIL, NURSE_PIN, sign_in_with_pin
from tests.ui.helpers_pages import by_testid, has_testid
from tests.utils.data import FakeClock
from ui import session

WAIT = 50  # should_see retries (0.1 s each): a worker thread checks the PIN (argon2)


def signed_in(user: User) -> str | None:
    """Who the station thinks is signed in on this simulated browser."""
    with user:
        actor = session.current_actor()
    return actor.name if actor else None


def audit_actions(station: Station) -> list[tuple[str, str | None, str | None]]:
    table = AuditLog.__table__
    with read_transaction(station.engine) as conn:
        rows = conn.execute(select(table.c.action, table.c.user_id, table.c.reason).order_by(table.c.id))
        return [tuple(r) for r in rows]


async def test_a_nurse_signs_in_offline_with_her_pin_and_lands_on_today(user: User, station: Station) -> None:
    await user.open("/today")
    await user.should_see("Sign in")  # nobody signed in: the page sends the browser to /login
    await sign_in_with_pin(user, NURSE_EMAIL, NURSE_PIN)
    await user.should_see("Dana Shapiro", retries=WAIT)
    await user.should_see("Yesterday,")
    assert ("pin_login", "u-nurse", None) in audit_actions(station)


async def test_after_signing_in_the_browser_returns_to_the_page_it_asked_for(user: User) -> None:
    await user.open("/review")
    await user.should_see("Sign in")
    await user.open("/login?next=/review")
    by_testid(user, "login-identifier").type(NURSE_EMAIL)
    by_testid(user, "login-use-pin").click()
    by_testid(user, "login-pin").type(NURSE_PIN)
    by_testid(user, "login-pin-submit").click()
    await user.should_see("Nothing waits for a person.", retries=WAIT)


async def test_a_wrong_pin_is_refused_at_the_field_with_the_tries_left(user: User, station: Station) -> None:
    await sign_in_with_pin(user, NURSE_EMAIL, "9731")
    await user.should_see("The PIN is wrong. 4 tries left.", retries=WAIT)
    await user.should_not_see("Yesterday,")
    assert ("pin_login_refused", None, None) in audit_actions(station)


async def test_five_wrong_pins_block_the_pin_even_for_the_right_one(user: User) -> None:
    await user.open("/login")
    by_testid(user, "login-identifier").type(NURSE_EMAIL)
    by_testid(user, "login-use-pin").click()
    for left in (4, 3, 2, 1):
        by_testid(user, "login-pin").type("9731")
        by_testid(user, "login-pin-submit").click()
        await user.should_see(f"{left} tries left.", retries=WAIT)
    by_testid(user, "login-pin").type("9731")
    by_testid(user, "login-pin-submit").click()
    await user.should_see("The PIN is now blocked.", retries=WAIT)
    by_testid(user, "login-pin").type(NURSE_PIN)
    by_testid(user, "login-pin-submit").click()
    await user.should_see("entered wrongly 5 times and is blocked", retries=WAIT)
    assert signed_in(user) is None


async def test_an_unknown_person_is_told_they_cannot_sign_in_here(user: User) -> None:
    await sign_in_with_pin(user, "stranger@elsewhere.example", "2580")
    await user.should_see("Nobody with this e-mail address or phone number may sign in", retries=WAIT)


async def test_a_person_without_a_pin_is_sent_to_the_online_login(user: User) -> None:
    await sign_in_with_pin(user, NO_PIN_EMAIL, "2580")
    await user.should_see("You have no offline PIN on this station", retries=WAIT)


async def test_a_pin_past_its_grace_period_is_refused_with_its_end(user: User, ui_clock: FakeClock) -> None:
    ui_clock.advance(days=8)  # the bundle's PINs are valid for 7 days
    await sign_in_with_pin(user)
    await user.should_see("Your offline PIN expired on 03 Dec 2026", retries=WAIT)


async def test_missing_identifier_and_pin_are_asked_for_at_their_fields(user: User) -> None:
    await user.open("/login")
    by_testid(user, "login-use-pin").click()
    by_testid(user, "login-pin-submit").click()
    await user.should_see("Enter your e-mail address or phone number.")
    by_testid(user, "login-identifier").type(NURSE_EMAIL)
    by_testid(user, "login-pin-submit").click()
    await user.should_see("Enter your PIN.")


async def test_a_code_is_refused_on_a_station_not_linked_to_a_cloud_and_the_pin_offered(user: User) -> None:
    await user.open("/login")
    by_testid(user, "login-identifier").type(NURSE_EMAIL)
    by_testid(user, "login-send-code").click()
    await user.should_see("This station is not linked to a cloud yet", retries=WAIT)
    assert has_testid(user, "login-pin")  # the way in that works offline is offered at once


async def test_emergency_access_opens_the_station_and_is_audited_with_the_reason(
    user: User, station: Station
) -> None:
    await user.open("/login")
    by_testid(user, "emergency-toggle").click()
    by_testid(user, "emergency-submit").click()
    await user.should_see("Your name is required.", retries=WAIT)
    by_testid(user, "emergency-name").type("Dr. Rina Oz")
    by_testid(user, "emergency-reason").type("no")
    by_testid(user, "emergency-submit").click()
    await user.should_see("Say in a few words why emergency access is needed.", retries=WAIT)
    by_testid(user, "emergency-reason").type(" network, nurse locked out")
    by_testid(user, "emergency-submit").click()
    await user.should_see("Emergency access", retries=WAIT)
    await user.should_see("Dr. Rina Oz")
    await user.should_see("Yesterday,")
    emergency = [a for a in audit_actions(station) if a[0] == "emergency_access"]
    assert len(emergency) == 1 and emergency[0][2] == "no network, nurse locked out"
    assert emergency[0][1] is not None and emergency[0][1].startswith("emergency-")


async def test_idle_for_15_minutes_the_screen_locks_and_only_the_pin_unlocks_it(
    nurse: User, ui_clock: FakeClock
) -> None:
    await nurse.should_not_see("The screen is locked")
    ui_clock.advance(minutes=14, seconds=59)
    await nurse.should_not_see("The screen is locked", retries=25)  # the 1 s timer ran: not yet
    ui_clock.advance(seconds=1)
    await nurse.should_see("The screen is locked", retries=30)
    await nurse.should_see("Dana Shapiro is signed in. Nothing on this page was lost.")
    assert signed_in(nurse) == "Dana Shapiro"  # locked, not signed out
    by_testid(nurse, "unlock-pin").type("9731")
    by_testid(nurse, "unlock").click()
    await nurse.should_see("The PIN is wrong.", retries=WAIT)
    await nurse.should_see("The screen is locked")
    by_testid(nurse, "unlock-pin").type(NURSE_PIN)
    by_testid(nurse, "unlock").click()
    await nurse.should_not_see("The screen is locked", retries=WAIT)
    await nurse.should_see("Yesterday,")


async def test_activity_keeps_the_screen_open(nurse: User, ui_clock: FakeClock) -> None:
    ui_clock.advance(minutes=10)
    await nurse.open("/today")  # something done on the station
    ui_clock.advance(minutes=10)
    await nurse.should_not_see("The screen is locked", retries=25)
    ui_clock.advance(minutes=5)
    await nurse.should_see("The screen is locked", retries=30)


async def test_signing_out_asks_for_a_new_sign_in(nurse: User, station: Station) -> None:
    by_testid(nurse, "sign-out").click()
    await nurse.should_see("Sign in", retries=WAIT)
    assert signed_in(nurse) is None
    await nurse.open("/today")
    await nurse.should_see("Sign in")
    assert ("signed_out", "u-nurse", "signed out") in audit_actions(station)


async def test_lock_now_covers_the_screen_at_once(nurse: User) -> None:
    by_testid(nurse, "lock-now").click()
    await nurse.should_see("The screen is locked")
    await nurse.open("/today")  # a reload does not get round the lock
    await nurse.should_see("The screen is locked")
    assert signed_in(nurse) == "Dana Shapiro"


async def test_a_procedure_page_locks_but_never_signs_out(
    nurse: User, station: Station, ui_clock: FakeClock
) -> None:
    from tests.utils.flows import insertion

    treatment_id = insertion(station, "SO2611001")
    await nurse.open(f"/treatment/{treatment_id}")
    await nurse.should_see("Patient: Cohen, Miriam", retries=WAIT)
    assert has_testid(nurse, "lock-now") and not has_testid(nurse, "sign-out")  # stepping away is locking
    ui_clock.advance(hours=2)  # a long pause in the middle of the procedure
    await nurse.should_see("The screen is locked", retries=30)
    assert signed_in(nurse) == "Dana Shapiro"
    by_testid(nurse, "unlock-pin").type(NURSE_PIN)
    by_testid(nurse, "unlock").click()
    await nurse.should_not_see("The screen is locked", retries=WAIT)
    await nurse.should_see("Patient: Cohen, Miriam")  # the same page, the same patient
    assert nurse.back_history[-1] == f"/treatment/{treatment_id}"
