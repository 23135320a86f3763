"""Signing by code (domain.md): an Alpha Tau user chooses a signer from the site's staff, the signer's
6-digit code (1 hour, 3 tries, single use) signs. Real HTTP against real PostgreSQL; codes read from
the outbox that `FileSender` writes (the gateway's contract). The code is sent before the reply, so
it is in the outbox when the request returns. Time moves by rewriting timestamps, never by sleeping.

One database for the module: each test makes its own device, users and treatment ids.
"""

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, update

from cloud.auth.codes import code_matches
from cloud.db import SiteScope, make_engine, scoped_transaction
from cloud.migrate import upgrade
from cloud.schema import audit_events, signing_codes, treatments, users
from tests.cloud.conftest import CloudDatabase, service_url
from tests.cloud.test_login import client, serve_with_outbox
from tests.cloud.utils import HOSPITAL_A_SITES, HOSPITAL_B_SITES, add_device, add_session, add_sites, add_user
from tests.pg import fresh_database

pytestmark = pytest.mark.postgres

SEND = "/api/v1/signing-codes"
VERIFY = "/api/v1/signing-codes/verify"
SITE, OTHER_SITE = HOSPITAL_A_SITES
NO_LIVE_CODE = {
    "detail": "There is no valid signing code for this treatment: it was never sent, has expired or was "
    "voided. Send a new code.",
    "tries_left": 0,
}


# --- fixtures: one database and one cloud for the module
@pytest.fixture(scope="module")
def cloud_db() -> Iterator[CloudDatabase]:
    with fresh_database() as url:
        upgrade(url)
        yield CloudDatabase(owner_url=url, app_url=service_url(url))


@pytest.fixture(scope="module")
def owner(cloud_db: CloudDatabase) -> Iterator[Engine]:
    engine = make_engine(cloud_db.owner_url, pool_size=2)
    add_sites(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("signing") / "outbox.jsonl"


@pytest.fixture(scope="module")
def url(cloud_db: CloudDatabase, owner: Engine, outbox: Path) -> Iterator[str]:
    engine = make_engine(cloud_db.app_url, pool_size=2)
    with serve_with_outbox(cloud_db, engine, outbox) as served:
        yield served
    engine.dispose()


@dataclass
class Room:
    """One station at hospital A's sites, an Alpha Tau user signed in on it, and a nurse of SITE."""

    device_id: str
    device: httpx.Client  # the station's own credential
    alphatau: httpx.Client  # the Alpha Tau user's session on the station
    alphatau_id: str
    nurse_id: str
    nurse_email: str
    treatment_id: str


@pytest.fixture
def room(url: str, owner: Engine) -> Iterator[Room]:
    device_id, device_token = add_device(owner, HOSPITAL_A_SITES)
    alphatau_id = add_user(owner, role="alphatau", user_sites=(), name="Noa Alpha")
    nurse_email = f"nurse-{uuid.uuid4().hex[:8]}@hospital.example"
    nurse_id = add_user(owner, role="hospital", user_sites=(SITE,), email=nurse_email, name="Dana Shapiro")
    with client(url, device_token) as device, client(url, add_session(owner, alphatau_id, device_id)) as at:
        yield Room(device_id, device, at, alphatau_id, nurse_id, nurse_email, str(uuid.uuid4()))


def send(room: Room, *, as_: httpx.Client | None = None, **body: str) -> httpx.Response:
    payload = {"site": SITE, "treatment_id": room.treatment_id, "signer_id": room.nurse_id, **body}
    return (as_ or room.alphatau).post(SEND, json=payload)


def send_code(room: Room, outbox: Path) -> str:
    reply = send(room)
    assert reply.status_code == 201, reply.text
    return last_code(outbox, room.nurse_email)


def verify(room: Room, code: str, *, as_: httpx.Client | None = None) -> httpx.Response:
    return (as_ or room.alphatau).post(VERIFY, json={"treatment_id": room.treatment_id, "code": code})


def messages(outbox: Path, destination: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in outbox.read_text().splitlines()] if outbox.exists() else []
    return [line for line in lines if line["destination"] == destination]


def last_code(outbox: Path, destination: str) -> str:
    text = messages(outbox, destination)[-1]["text"]
    found = re.match(r"(\d{6}) is your DaRT signing code", text)
    assert found, text
    return found.group(1)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def code_rows(owner: Engine, treatment_id: str) -> list[Any]:
    with scoped_transaction(owner, SiteScope.everything()) as conn:
        return conn.execute(
            select(signing_codes)
            .where(signing_codes.c.treatment_id == treatment_id)
            .order_by(signing_codes.c.created_at)
        ).all()


def age(owner: Engine, treatment_id: str, delta: timedelta) -> None:
    """Make the treatment's codes `delta` older: the clock moved on."""
    with scoped_transaction(owner, SiteScope.everything()) as conn:
        conn.execute(
            update(signing_codes)
            .where(signing_codes.c.treatment_id == treatment_id)
            .values(
                created_at=signing_codes.c.created_at - delta, expires_at=signing_codes.c.expires_at - delta
            )
        )


def session_of(
    url: str, owner: Engine, room: Room, *, role: str, sites: tuple[str, ...] = ()
) -> httpx.Client:
    """Another user signed in on the room's station (the caller closes the client)."""
    token = add_session(owner, add_user(owner, role=role, user_sites=sites), room.device_id)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


# --- the code
def test_the_code_is_six_digits_from_the_message_stored_only_hashed_and_lives_one_hour(
    room: Room, outbox: Path, owner: Engine
) -> None:
    reply = send(room)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["detail"] == "A signing code was sent to n***@hospital.example."
    assert body["destination"] == "n***@hospital.example" and body["channel"] == "email"
    [message] = messages(outbox, room.nurse_email)
    assert message["channel"] == "email"
    assert message["text"].endswith(
        "is your DaRT signing code: Noa Alpha asks you to sign a treatment at A-TLV. "
        "Type it on the station in front of you only. It expires in 60 minutes."
    )
    code = last_code(outbox, room.nurse_email)
    assert re.fullmatch(r"\d{6}", code)
    [row] = code_rows(owner, room.treatment_id)
    assert code not in row.code_hash and row.code_hash.startswith("argon2id-")
    assert code_matches(code, row.code_hash) and not code_matches(wrong(code), row.code_hash)
    assert row.expires_at - row.created_at == timedelta(hours=1)
    assert (row.site, row.signer_id, row.requested_by, row.device_id) == (
        SITE,
        room.nurse_id,
        room.alphatau_id,
        room.device_id,
    )


def test_the_code_signs_once_with_the_signer_from_the_staff_list_and_the_requester(
    room: Room, outbox: Path
) -> None:
    code = send_code(room, outbox)
    reply = verify(room, code)
    assert reply.status_code == 200, reply.text
    signature = reply.json()
    assert {
        k: signature[k] for k in ("treatment_id", "site", "signer_id", "signer_name", "signer_position")
    } == {
        "treatment_id": room.treatment_id,
        "site": SITE,
        "signer_id": room.nurse_id,
        "signer_name": "Dana Shapiro",
        "signer_position": "Nurse",
    }
    assert signature["requested_by"] == room.alphatau_id and signature["requested_by_name"] == "Noa Alpha"
    assert signature["signed_at"]
    again = verify(room, code)
    assert (again.status_code, again.json()) == (401, NO_LIVE_CODE)


def test_the_third_wrong_code_voids_it(room: Room, outbox: Path, owner: Engine) -> None:
    code = send_code(room, outbox)
    first, second, third = (verify(room, wrong(code)) for _ in range(3))
    assert (first.status_code, first.json()) == (
        401,
        {"detail": "The code is wrong: 2 tries left.", "tries_left": 2},
    )
    assert second.json() == {"detail": "The code is wrong: 1 try left.", "tries_left": 1}
    assert third.json() == {
        "detail": "The code is wrong, and that was the last try: send a new code.",
        "tries_left": 0,
    }
    right_too_late = verify(room, code)
    assert (right_too_late.status_code, right_too_late.json()) == (401, NO_LIVE_CODE)
    [row] = code_rows(owner, room.treatment_id)
    assert row.attempts == 3 and row.used_at is None


def test_after_an_hour_the_code_is_refused_like_an_unknown_one(
    room: Room, outbox: Path, owner: Engine
) -> None:
    code = send_code(room, outbox)
    age(owner, room.treatment_id, timedelta(minutes=59))
    still = verify(room, wrong(code))
    assert still.json()["tries_left"] == 2  # alive at 59 minutes
    age(owner, room.treatment_id, timedelta(minutes=1, seconds=1))
    expired = verify(room, code)
    unknown = room.alphatau.post(VERIFY, json={"treatment_id": str(uuid.uuid4()), "code": code})
    assert (expired.status_code, expired.json()) == (401, NO_LIVE_CODE)
    assert (unknown.status_code, unknown.json()) == (401, NO_LIVE_CODE)


def test_a_new_request_voids_the_earlier_code(room: Room, outbox: Path) -> None:
    earlier = send_code(room, outbox)
    later = send_code(room, outbox)
    assert earlier != later or pytest.fail("two codes in a row were equal (1 in a million): run again")
    refused = verify(room, earlier)
    assert refused.status_code == 401 and refused.json()["detail"].startswith("The code is wrong")
    assert verify(room, later).status_code == 200


def test_the_code_works_only_for_the_user_who_asked_for_it(
    room: Room, outbox: Path, owner: Engine, url: str
) -> None:
    code = send_code(room, outbox)
    colleague = session_of(url, owner, room, role="alphatau")
    try:
        reply = verify(room, code, as_=colleague)
    finally:
        colleague.close()
    assert (reply.status_code, reply.json()) == (401, NO_LIVE_CODE)
    assert code_rows(owner, room.treatment_id)[0].attempts == 0  # not the signer's try to lose
    assert verify(room, code).status_code == 200


def test_five_codes_an_hour_per_treatment(room: Room, outbox: Path, owner: Engine) -> None:
    for _ in range(5):
        assert send(room).status_code == 201
    refused = send(room)
    assert (refused.status_code, refused.json()["detail"]) == (
        429,
        "5 signing codes were sent for this treatment in the last hour; wait before sending another.",
    )
    age(owner, room.treatment_id, timedelta(hours=1, seconds=1))
    assert send(room).status_code == 201


# --- who may ask, and who may sign
def test_only_alphatau_and_admin_send_or_verify_signing_codes(room: Room, owner: Engine, url: str) -> None:
    hospital = session_of(url, owner, room, role="hospital", sites=(SITE,))
    admin = session_of(url, owner, room, role="admin")
    try:
        for caller, words in (
            (hospital, "A hospital user signs for themselves; only an Alpha Tau user or an administrator"),
            (room.device, "Signing codes are sent for a signed-in Alpha Tau user, not for a station's"),
        ):
            for reply in (send(room, as_=caller), verify(room, "123456", as_=caller)):
                assert reply.status_code == 403 and reply.json()["detail"].startswith(words), reply.text
        assert send(room, as_=admin).status_code == 201
    finally:
        hospital.close()
        admin.close()


def test_the_signer_must_be_active_hospital_staff_of_that_site(room: Room, owner: Engine) -> None:
    elsewhere = add_user(owner, role="hospital", user_sites=(OTHER_SITE,))
    inactive = add_user(owner, role="hospital", user_sites=(SITE,))
    with owner.begin() as conn:
        conn.execute(update(users).where(users.c.id == inactive).values(is_active=False))
    not_staff = "The signer must be an active member of the hospital staff of site A-TLV."
    for signer in (elsewhere, inactive, room.alphatau_id, "u-nobody"):
        reply = send(room, signer_id=signer)
        assert (reply.status_code, reply.json()["detail"]) == (422, not_staff)
    no_contact = add_user(owner, role="hospital", user_sites=(SITE,), name="Avi Nocontact")
    with owner.begin() as conn:
        conn.execute(update(users).where(users.c.id == no_contact).values(email=None, phone="n/a"))
    reply = send(room, signer_id=no_contact)
    assert (
        reply.json()["detail"]
        == "Avi Nocontact has no e-mail address or phone number to send a signing code to."
    )
    outside = send(room, site=HOSPITAL_B_SITES[0])
    assert (outside.status_code, outside.json()["detail"]) == (
        403,
        "This station does not work at site B-JLM.",
    )
    assert code_rows(owner, room.treatment_id) == []


def test_a_phone_only_signer_gets_the_code_by_sms(room: Room, outbox: Path, owner: Engine) -> None:
    nurse = add_user(owner, role="hospital", user_sites=(SITE,))
    with owner.begin() as conn:
        conn.execute(update(users).where(users.c.id == nurse).values(email=None, phone="050-123 4567"))
    reply = send(room, signer_id=nurse)
    assert reply.status_code == 201 and reply.json()["channel"] == "sms"
    assert messages(outbox, "0501234567")[-1]["channel"] == "sms"


def test_a_treatment_the_cloud_has_finalised_or_at_another_site_is_refused(room: Room, owner: Engine) -> None:
    finalised, elsewhere = str(uuid.uuid4()), str(uuid.uuid4())
    with scoped_transaction(owner, SiteScope.everything()) as conn:
        for site, treatment_id, complete in ((SITE, finalised, True), (OTHER_SITE, elsewhere, False)):
            conn.execute(
                treatments.insert().values(
                    site=site,
                    id=treatment_id,
                    version=1,
                    data={"is_complete": complete},
                    device_id=room.device_id,
                    last_op_id=str(uuid.uuid4()),
                )
            )
    done = send(room, treatment_id=finalised)
    assert (done.status_code, done.json()["detail"]) == (409, "This treatment is finalised already.")
    moved = send(room, treatment_id=elsewhere)
    assert (moved.status_code, moved.json()["detail"]) == (422, "This treatment is not at site A-TLV.")


# --- the audit trail
def test_every_step_is_audited_with_the_destination_masked(room: Room, outbox: Path, owner: Engine) -> None:
    code = send_code(room, outbox)
    verify(room, wrong(code))
    verify(room, code)
    with scoped_transaction(owner, SiteScope.everything()) as conn:
        events = conn.execute(
            select(audit_events)
            .where(audit_events.c.details["treatment_id"].astext == room.treatment_id)
            .order_by(audit_events.c.id)
        ).all()
    assert [e.action for e in events] == [
        "signing.code_requested",
        "signing.code_sent",
        "signing.verify_failed",
        "signing.verified",
    ]
    assert all(
        e.site == SITE and e.actor == room.alphatau_id and e.device_id == room.device_id for e in events
    )
    assert events[0].details["destination"] == "n***@hospital.example"
    assert events[2].details == {"treatment_id": room.treatment_id, "reason": "wrong_code", "tries_left": 2}
    assert events[3].details["signer_id"] == room.nurse_id
    stored = json.dumps([e.details for e in events])
    assert room.nurse_email not in stored and code not in stored
