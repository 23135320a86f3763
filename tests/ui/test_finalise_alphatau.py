"""/finalise/{id} for an Alpha Tau user: choose the signer from the site's staff, the cloud sends them a
code, the signer types it and the treatment is locked with the signer and the requester recorded.

Against the real cloud (PostgreSQL, HTTP on loopback); the codes are read from the outbox file the
cloud's sender writes (FileSender, the gateway's contract).
"""

import json
import re
from pathlib import Path

import pytest
from nicegui import background_tasks
from nicegui.testing import User
from sqlalchemy import insert

from cloud.schema import users
from store import lookups
from store.enums import SignatureMode
from tests.cloud.test_login import wait_for_code
from tests.ui.conftest import ALPHATAU_EMAIL, NURSE_EMAIL, CloudLink
from tests.ui.helpers_pages import by_testid, has_testid, station_started, text_of
from tests.ui.test_finalise import online_treatment, open_finalise  # noqa: F401  (a fixture by name)
from tests.utils.data import ALPHATAU, NURSE

pytestmark = pytest.mark.postgres
WAIT = 30
STAFF_TASK = "the site's staff for signing"


@pytest.fixture
def alphatau_in_cloud(cloud_link: CloudLink) -> CloudLink:
    """Noa Alpha (role alphatau, all sites) as a user of the cloud, beside the nurse."""
    with cloud_link.owner.begin() as conn:
        conn.execute(
            insert(users).values(
                id=ALPHATAU.user_id,
                email=ALPHATAU_EMAIL,
                name=ALPHATAU.name,
                position=ALPHATAU.position,
                role=ALPHATAU.role.value,
                sites=[],
            )
        )
    return cloud_link


async def sign_in_online_as_alphatau(user: User, link: CloudLink) -> None:
    await user.open("/login")
    by_testid(user, "login-identifier").type(ALPHATAU_EMAIL)
    by_testid(user, "login-send-code").click()
    await user.should_see("a code is on its way", retries=WAIT)
    by_testid(user, "login-code").type(wait_for_code(link.outbox, ALPHATAU_EMAIL, already=0))
    by_testid(user, "login-verify").click()
    await user.should_see("Noa Alpha", retries=WAIT)
    await user.should_see("Online", retries=100)


async def open_signing(user: User, treatment_id: str) -> None:
    """The finalise page, once its staff list has been read (the task that reads it is the event)."""
    await open_finalise(user, treatment_id)
    for task in list(background_tasks.running_tasks):
        if task.get_name() == STAFF_TASK:
            await task


def signing_codes(outbox: Path) -> list[str]:
    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    found = [re.match(r"(\d{6}) is your DaRT signing code", line["text"]) for line in lines]
    return [match.group(1) for match, line in zip(found, lines, strict=True) if match]


async def send_code_to_the_nurse(user: User, link: CloudLink) -> str:
    signer = by_testid(user, "signer").elements.pop()
    assert signer.options == {NURSE.user_id: "Dana Shapiro (Nurse)", "u-nopin": "Avi Nopin"}  # type: ignore[attr-defined]
    signer.value = NURSE.user_id  # type: ignore[attr-defined]
    by_testid(user, "send-code").click()
    await user.should_see("A signing code was sent to d***@hospital.example.", retries=WAIT)
    [line] = [json.loads(x) for x in link.outbox.read_text().splitlines() if "signing code" in x]
    assert line["destination"] == NURSE_EMAIL
    return signing_codes(link.outbox)[-1]


async def test_an_alpha_tau_user_sends_the_nurse_a_code_and_her_code_signs(
    alphatau_in_cloud: CloudLink,
    online_treatment: str,  # noqa: F811
    linked_user: User,
) -> None:
    await sign_in_online_as_alphatau(linked_user, alphatau_in_cloud)
    await open_signing(linked_user, online_treatment)
    assert text_of(linked_user, "signing-mode").startswith("Choose the signer from the staff of TLV-1.")
    assert not has_testid(linked_user, "sign")  # no self-signing for Alpha Tau
    code = await send_code_to_the_nurse(linked_user, alphatau_in_cloud)
    by_testid(linked_user, "signing-code").type(code)
    by_testid(linked_user, "sign-with-code").click()
    await linked_user.should_see("Finalised and locked: nothing can be added or changed.", retries=WAIT)
    assert text_of(linked_user, "signed-by").startswith("Signed by Dana Shapiro (Nurse) on ")
    await linked_user.should_see(
        "Confirmed by the signer with a code from the cloud; requested by Noa Alpha.", retries=WAIT
    )
    saved = lookups.treatment(await station_started(), ALPHATAU, online_treatment)
    assert saved["is_complete"] and saved["signature_mode"] == SignatureMode.CODE.value
    assert saved["signed_by_user_id"] == NURSE.user_id and saved["signer_name"] == "Dana Shapiro"
    assert saved["completed_by"] == ALPHATAU.user_id and saved["signature_status"] == "confirmed"


async def test_a_wrong_code_says_how_many_tries_are_left(
    alphatau_in_cloud: CloudLink,
    online_treatment: str,  # noqa: F811
    linked_user: User,
) -> None:
    await sign_in_online_as_alphatau(linked_user, alphatau_in_cloud)
    await open_signing(linked_user, online_treatment)
    code = await send_code_to_the_nurse(linked_user, alphatau_in_cloud)
    by_testid(linked_user, "signing-code").type(f"{(int(code) + 1) % 1_000_000:06d}")
    by_testid(linked_user, "sign-with-code").click()
    await linked_user.should_see("The code is wrong: 2 tries left.", retries=WAIT)
    assert text_of(linked_user, "sign-problem") == "The code is wrong: 2 tries left."
    by_testid(linked_user, "signing-code").type("12")
    by_testid(linked_user, "sign-with-code").click()
    await linked_user.should_see("The signing code is the 6 digits of the message", retries=WAIT)
    assert not lookups.treatment(await station_started(), ALPHATAU, online_treatment)["is_complete"]
