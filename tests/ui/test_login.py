"""/login: online by code, offline by PIN, emergency access; the screen lock; every refusal at its field."""

from nicegui.testing import User

from tests.ui.conftest import NURSE_EMAIL, NURSE_PIN, sign_in_with_pin


async def test_a_nurse_signs_in_offline_with_her_pin_and_lands_on_today(user: User) -> None:
    await user.open("/today")
    await user.should_see("Sign in")  # not signed in: sent to the login page
    await sign_in_with_pin(user, NURSE_EMAIL, NURSE_PIN)
    await user.should_see("Dana Shapiro", retries=50)
    await user.should_see("Yesterday,")
