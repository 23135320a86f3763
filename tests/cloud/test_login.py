"""Online login with a one-time code, over real HTTP against real PostgreSQL.

Codes are read from the outbox that `FileSender` writes (the same contract as an SMS or e-mail
gateway). Time is moved by rewriting timestamps through the owner's connection, never by sleeping.
Codes are sent after the reply: tests wait for the sender to have written one, or for the server
to have finished the request (tests/cloud/requests_done.py), never by polling.
"""

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select, update

from cloud.auth import mask
from cloud.auth.codes import code_matches, message_text, new_code
from cloud.auth.senders import FileSender, sender_for
from cloud.db import SiteScope, scoped_transaction
from cloud.schema import audit_events, login_codes, sessions, users
from tests.cloud.conftest import CloudDatabase
from tests.cloud.requests_done import RequestsDone
from tests.cloud.utils import HOSPITAL_A_SITES, HOSPITAL_B_SITES, add_device, add_session, add_sites, add_user

pytestmark = pytest.mark.postgres

REFUSED = {"detail": "The code is wrong or has expired."}
REQUEST_CODE = "/api/v1/auth/request-code"
EMAIL = "dana.levi@hospital.example"
PHONE = "+972501234567"


# --- fixtures and helpers (tests/cloud/test_enrolment.py uses them too)
@dataclass(frozen=True)
class Served:
    url: str
    done: RequestsDone  # when the server has finished a request, its background tasks included


@dataclass(frozen=True)
class Station:
    device_id: str
    client: httpx.Client  # sends the station's device credential
    done: RequestsDone | None = None  # when the cloud was served by `serve_tracked`


@contextmanager
def serve_with_outbox(cloud_db: CloudDatabase, app_engine: Engine, outbox: Path) -> Iterator[str]:
    """The cloud on loopback with its codes going to `outbox` (FileSender); yields its URL."""
    with serve_tracked(cloud_db, app_engine, outbox) as served:
        yield served.url


@contextmanager
def serve_tracked(cloud_db: CloudDatabase, app_engine: Engine, outbox: Path) -> Iterator[Served]:
    """`serve_with_outbox`, telling when the server has finished each request."""
    from cloud.app import create_app
    from cloud.config import CloudSettings
    from tests.utils.servers import serve

    settings = CloudSettings(database_url=cloud_db.app_url, code_sender=f"file:{outbox}")
    app = RequestsDone(create_app(settings, engine=app_engine))
    with serve(app) as url:
        yield Served(url, app)


@contextmanager
def client(url: str, token: str | None = None) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as c:
        yield c


def sent(outbox: Path, destination: str) -> list[dict[str, Any]]:
    if not outbox.exists():
        return []
    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    return [line for line in lines if line["destination"] == destination]


def wait_for_code(outbox: Path, destination: str, already: int, timeout_s: float = 5) -> str:
    """The code of message number `already + 1` to `destination`. Codes are sent after the reply:
    this waits on the app's own FileSender, which wakes it each time it has written a message."""
    delivered = _delivered(outbox)
    with delivered:
        arrived = delivered.wait_for(lambda: len(sent(outbox, destination)) > already, timeout_s)
    assert arrived, f"no code reached {destination} within {timeout_s} s"
    return _code(sent(outbox, destination)[already])


def new_login_code(station: Station, outbox: Path, identifier: str, destination: str | None = None) -> str:
    destination = destination or identifier
    already = len(sent(outbox, destination))
    # The code is sent (and audited) after the reply: leaving `one_more`, both are done.
    with station.done.one_more(REQUEST_CODE) if station.done else nullcontext():
        reply = station.client.post(REQUEST_CODE, json={"identifier": identifier})
    assert reply.status_code == 202, reply.text
    return wait_for_code(outbox, destination, already)


def _code(message: dict[str, Any]) -> str:
    found = re.search(r"\b\d{6}\b", message["text"])
    assert found, message
    return found.group()


_DELIVERED: dict[str, threading.Condition] = {}
_HOOKING = threading.Lock()


def _delivered(outbox: Path) -> threading.Condition:
    """Notified each time the app's FileSender for `outbox` (the stand-in gateway) has written."""
    setting = f"file:{outbox}"
    with _HOOKING:
        if setting not in _DELIVERED:
            sender = sender_for(setting)  # the app's own instance: one per setting
            written = _DELIVERED[setting] = threading.Condition()
            send = sender.send

            def send_and_notify(channel: Any, destination: str, text: str) -> None:
                try:
                    send(channel, destination, text)
                finally:
                    with written:
                        written.notify_all()

            sender.send = send_and_notify  # type: ignore[method-assign]
        return _DELIVERED[setting]


def verify(station: Station, identifier: str, code: str, **extra: str) -> httpx.Response:
    return station.client.post("/api/v1/auth/verify", json={"identifier": identifier, "code": code, **extra})


def sign_in(station: Station, outbox: Path, identifier: str) -> dict[str, Any]:
    reply = verify(station, identifier, new_login_code(station, outbox, identifier))
    assert reply.status_code == 200, reply.text
    return reply.json()


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def user_row(owner: Engine, user_id: str) -> Any:
    with owner.connect() as conn:
        return conn.execute(select(users).where(users.c.id == user_id)).one()


def code_rows(owner: Engine, user_id: str) -> list[Any]:
    with owner.connect() as conn:
        return conn.execute(
            select(login_codes).where(login_codes.c.user_id == user_id).order_by(login_codes.c.created_at)
        ).all()


def audit_rows(engine: Engine) -> list[Any]:
    # audit_events is under forced row-level security, its owner included: read with an all-sites scope.
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        return conn.execute(select(audit_events).order_by(audit_events.c.id)).all()


def move_back(owner: Engine, user_id: str, delta: timedelta) -> None:
    """Make every code of the account `delta` older: the clock moved on."""
    with owner.begin() as conn:
        conn.execute(
            update(login_codes)
            .where(login_codes.c.user_id == user_id)
            .values(created_at=login_codes.c.created_at - delta, expires_at=login_codes.c.expires_at - delta)
        )


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox.jsonl"


@pytest.fixture
def served(cloud_db: CloudDatabase, app_engine: Engine, outbox: Path) -> Iterator[Served]:
    with serve_tracked(cloud_db, app_engine, outbox) as cloud:
        yield cloud


@pytest.fixture
def url(served: Served) -> str:
    return served.url


@pytest.fixture
def station(served: Served, owner_engine: Engine) -> Iterator[Station]:
    add_sites(owner_engine)
    device_id, token = add_device(owner_engine, HOSPITAL_A_SITES)
    with client(served.url, token) as c:
        yield Station(device_id, c, served.done)


@pytest.fixture
def nurse(owner_engine: Engine, station: Station) -> str:
    return add_user(
        owner_engine, role="hospital", user_sites=("A-TLV",), email=EMAIL, phone="+972-50-123-4567"
    )


# --- the code itself
def test_code_is_six_digits_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cloud.auth.codes.secrets.randbelow", lambda n: 42 if n == 10**6 else 0)
    assert new_code() == "000042"  # leading zeros kept: every one of the 10**6 values can come out
    monkeypatch.undo()
    assert all(re.fullmatch(r"\d{6}", new_code()) for _ in range(200))


def test_code_reaches_email_and_phone_as_six_digits(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    assert re.fullmatch(r"\d{6}", new_login_code(station, outbox, EMAIL))
    assert re.fullmatch(r"\d{6}", new_login_code(station, outbox, "+972 50-123-4567", destination=PHONE))
    by_email, by_phone = sent(outbox, EMAIL)[0], sent(outbox, PHONE)[0]
    assert (by_email["channel"], by_phone["channel"]) == ("email", "sms")
    assert [row.channel for row in code_rows(owner_engine, nurse)] == ["email", "sms"]


def test_code_is_stored_hashed(station: Station, outbox: Path, nurse: str, owner_engine: Engine) -> None:
    code = new_login_code(station, outbox, EMAIL)
    (row,) = code_rows(owner_engine, nurse)
    assert code not in json.dumps(row._asdict(), default=str)
    assert code_matches(code, row.code_hash) and not code_matches(wrong(code), row.code_hash)
    assert row.device_id == station.device_id


def test_code_expires_after_ten_minutes(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    code = new_login_code(station, outbox, EMAIL)
    (row,) = code_rows(owner_engine, nurse)
    assert row.expires_at - row.created_at == timedelta(minutes=10)
    move_back(owner_engine, nurse, timedelta(minutes=10, seconds=1))
    reply = verify(station, EMAIL, code)
    assert (reply.status_code, reply.json()) == (401, REFUSED)


def test_code_is_single_use(station: Station, outbox: Path, nurse: str) -> None:
    code = new_login_code(station, outbox, EMAIL)
    assert verify(station, EMAIL, code).status_code == 200
    reply = verify(station, EMAIL, code)
    assert (reply.status_code, reply.json()) == (401, REFUSED)


def test_five_tries_then_the_code_is_dead_even_if_right(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    code = new_login_code(station, outbox, EMAIL)
    for _ in range(5):
        assert verify(station, EMAIL, wrong(code)).status_code == 401
    reply = verify(station, EMAIL, code)
    assert (reply.status_code, reply.json()) == (401, REFUSED)
    (row,) = code_rows(owner_engine, nurse)
    assert row.used_at is None and row.attempts == 6


def test_account_locks_after_ten_failures_and_unlocks_after_fifteen_minutes(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    first = new_login_code(station, outbox, EMAIL)
    for _ in range(5):
        verify(station, EMAIL, wrong(first))
    second = new_login_code(station, outbox, EMAIL)
    for _ in range(4):
        verify(station, EMAIL, wrong(second))
    third = new_login_code(station, outbox, EMAIL)
    assert user_row(owner_engine, nurse).locked_until is None  # 9 failures: not yet
    verify(station, EMAIL, wrong(third))  # the 10th

    locked = user_row(owner_engine, nurse)
    assert locked.failed_attempts == 10
    assert abs(locked.locked_until - (datetime.now(UTC) + timedelta(minutes=15))) < timedelta(seconds=30)
    # Locked: the right code of a live code is refused, and no new code is issued (same 202 reply).
    assert verify(station, EMAIL, third).json() == REFUSED
    assert station.client.post("/api/v1/auth/request-code", json={"identifier": EMAIL}).status_code == 202
    assert len(code_rows(owner_engine, nurse)) == 3
    assert "login.locked" in [row.action for row in audit_rows(owner_engine)]

    with owner_engine.begin() as conn:  # the 15 minutes pass
        conn.execute(update(users).where(users.c.id == nurse).values(locked_until=datetime.now(UTC)))
    assert verify(station, EMAIL, third).status_code == 200
    unlocked = user_row(owner_engine, nurse)
    assert (unlocked.failed_attempts, unlocked.locked_until) == (0, None)


def test_the_same_reply_for_unknown_and_locked_accounts(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    def request(identifier: str) -> tuple[int, Any]:
        reply = station.client.post("/api/v1/auth/request-code", json={"identifier": identifier})
        return reply.status_code, reply.json()

    known = request(EMAIL)
    assert known[0] == 202
    assert request("nobody@hospital.example") == known
    assert request("+15550000000") == known
    code = wait_for_code(outbox, EMAIL, 0)

    assert (verify(station, EMAIL, wrong(code)).status_code, verify(station, EMAIL, wrong(code)).json()) == (
        401,
        REFUSED,
    )
    unknown = verify(station, "nobody@hospital.example", code)
    assert (unknown.status_code, unknown.json()) == (401, REFUSED)
    assert verify(station, "+15550000000", code).json() == REFUSED

    with owner_engine.begin() as conn:
        conn.execute(
            update(users)
            .where(users.c.id == nurse)
            .values(locked_until=datetime.now(UTC) + timedelta(minutes=15))
        )
    assert request(EMAIL) == known
    assert verify(station, EMAIL, code).json() == REFUSED


def test_a_new_request_invalidates_the_earlier_code(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    old = new_login_code(station, outbox, EMAIL)
    new = new_login_code(station, outbox, EMAIL)
    first, _ = code_rows(owner_engine, nurse)
    assert first.expires_at <= datetime.now(UTC) and first.used_at is None
    if old != new:  # one chance in a million that both draws agree
        assert verify(station, EMAIL, old).json() == REFUSED
    assert verify(station, EMAIL, new).status_code == 200


def test_failed_attempts_and_last_login_are_kept(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    code = new_login_code(station, outbox, EMAIL)
    verify(station, EMAIL, wrong(code))
    verify(station, EMAIL, wrong(code))
    before = user_row(owner_engine, nurse)
    assert (before.failed_attempts, before.last_login) == (2, None)

    assert verify(station, EMAIL, code).status_code == 200
    after = user_row(owner_engine, nurse)
    assert after.failed_attempts == 0
    assert abs(after.last_login - datetime.now(UTC)) < timedelta(seconds=30)


def test_audit_trail_has_every_login_event_with_identifiers_masked(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    code = new_login_code(station, outbox, EMAIL)
    verify(station, EMAIL, wrong(code))
    session = verify(station, EMAIL, code).json()["session_token"]
    sms = new_login_code(station, outbox, PHONE)
    verify(station, PHONE, sms)
    with station.done.one_more(REQUEST_CODE):
        station.client.post(REQUEST_CODE, json={"identifier": "ghost@hospital.example"})
    with client(str(station.client.base_url), session) as user:
        assert user.post("/api/v1/auth/logout").status_code == 204

    rows = audit_rows(owner_engine)  # "code sent" is written after each reply: new_login_code waited
    assert sum(row.action == "login.code_sent" for row in rows) == 2
    assert {row.action for row in rows} == {
        "login.code_requested",
        "login.code_sent",
        "login.verify_failed",
        "login.verify_ok",
        "login.logout",
    }
    assert {row.site for row in rows} == {"*"}
    everything = json.dumps([row._asdict() for row in rows], default=str)
    for secret in (EMAIL, "dana.levi", PHONE, PHONE[1:], "501234567", "ghost@", code, sms):
        assert secret not in everything
    identifiers = {row.details.get("identifier") for row in rows} - {None}
    assert identifiers == {"d***@hospital.example", "+972*******67", "g***@hospital.example"}
    assert mask(PHONE) == "+972*******67"


# --- the senders
def test_console_sender_prints_the_code_with_the_destination_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sender_for("console").send("email", EMAIL, message_text("042917"))
    sender_for("console").send("sms", PHONE, message_text("042917"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Verification code for d***@hospital.example: 042917 ")
    assert out[1].startswith("Verification code for +972*******67: 042917 ")
    assert EMAIL not in "".join(out) and PHONE not in "".join(out)


def test_the_sender_setting_is_read_strictly(tmp_path: Path) -> None:
    sender = sender_for(f"file:{tmp_path / 'out.jsonl'}")
    assert isinstance(sender, FileSender) and sender is sender_for(f"file:{tmp_path / 'out.jsonl'}")
    for setting in ("smtp", "file:", "Console"):
        with pytest.raises(ValueError, match="CODE_SENDER must be"):
            sender_for(setting)


def test_a_gateway_failure_is_audited_and_not_shown(
    cloud_db: CloudDatabase, app_engine: Engine, owner_engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    add_sites(owner_engine)
    _, token = add_device(owner_engine, HOSPITAL_A_SITES)
    add_user(owner_engine, role="hospital", user_sites=("A-TLV",), email=EMAIL)
    with serve_tracked(cloud_db, app_engine, tmp_path / "not-a-folder" / "outbox.jsonl") as cloud:
        with client(cloud.url, token) as station, cloud.done.one_more(REQUEST_CODE):
            reply = station.post(REQUEST_CODE, json={"identifier": EMAIL})
        assert reply.status_code == 202
        assert "login.code_send_failed" in [row.action for row in audit_rows(owner_engine)]


# --- the session
def test_session_is_bound_to_the_device_and_dies_with_it(
    station: Station, outbox: Path, owner_engine: Engine, url: str
) -> None:
    admin = add_user(owner_engine, role="admin", user_sites=(), email="root@alphatau.example")
    reply = sign_in(station, outbox, "root@alphatau.example")
    assert reply["user"] == {
        "id": admin,
        "name": "Test User",
        "role": "admin",
        "sites": [],
        "position": "Nurse",
    }
    assert datetime.fromisoformat(reply["expires_at"]) - datetime.now(UTC) > timedelta(hours=11)
    with owner_engine.connect() as conn:
        (bound,) = conn.execute(select(sessions.c.device_id).where(sessions.c.user_id == admin)).scalars()
    assert bound == station.device_id

    with client(url, reply["session_token"]) as signed_in:
        enrolment = {"device_name": "spare", "sites": ["A-TLV"]}
        assert signed_in.post("/api/v1/devices/enrolment-codes", json=enrolment).status_code == 201
        other_device, _ = add_device(owner_engine, HOSPITAL_B_SITES)
        with client(url, add_session(owner_engine, admin, other_device)) as elsewhere:
            revoked = elsewhere.post(f"/api/v1/devices/{station.device_id}/revoke")
            assert revoked.status_code == 200, revoked.text
        assert signed_in.post("/api/v1/devices/enrolment-codes", json=enrolment).status_code == 401
    assert station.client.post("/api/v1/auth/request-code", json={"identifier": EMAIL}).status_code == 401


def test_logout_ends_the_session_only(station: Station, outbox: Path, nurse: str, url: str) -> None:
    token = sign_in(station, outbox, EMAIL)["session_token"]
    with client(url, token) as signed_in:
        assert signed_in.post("/api/v1/auth/logout").status_code == 204
        assert signed_in.post("/api/v1/auth/logout").status_code == 401
    assert station.client.post("/api/v1/auth/logout").status_code == 403  # a device has no session
    assert station.client.post("/api/v1/auth/request-code", json={"identifier": EMAIL}).status_code == 202


def test_a_code_signs_in_only_on_the_station_that_asked(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine, url: str
) -> None:
    code = new_login_code(station, outbox, EMAIL)
    _, other_token = add_device(owner_engine, HOSPITAL_A_SITES, name="another laptop")
    with client(url, other_token) as other:
        assert other.post("/api/v1/auth/verify", json={"identifier": EMAIL, "code": code}).json() == REFUSED
    assert verify(station, EMAIL, code).status_code == 200


def test_login_needs_the_station_credential(station: Station, outbox: Path, nurse: str, url: str) -> None:
    body = {"identifier": EMAIL}
    with client(url) as anonymous, client(url, "not-a-credential") as stranger:
        assert anonymous.post("/api/v1/auth/request-code", json=body).status_code == 401
        assert stranger.post("/api/v1/auth/request-code", json=body).status_code == 401
    with client(url, sign_in(station, outbox, EMAIL)["session_token"]) as signed_in:
        assert signed_in.post("/api/v1/auth/request-code", json=body).status_code == 403


def test_a_hospital_user_signs_in_only_at_a_station_of_their_sites(
    station: Station, outbox: Path, owner_engine: Engine
) -> None:
    stranger = add_user(owner_engine, role="hospital", user_sites=("B-JLM",), email="b@other.example")
    overseer = add_user(owner_engine, role="alphatau", user_sites=(), email="a@alphatau.example")
    assert (
        station.client.post("/api/v1/auth/request-code", json={"identifier": "b@other.example"}).status_code
        == 202
    )
    assert code_rows(owner_engine, stranger) == []
    assert sign_in(station, outbox, "a@alphatau.example")["user"]["id"] == overseer


def test_code_requests_per_account_are_limited(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    for _ in range(5):
        assert station.client.post("/api/v1/auth/request-code", json={"identifier": EMAIL}).status_code == 202
    assert station.client.post("/api/v1/auth/request-code", json={"identifier": EMAIL}).status_code == 202
    assert len(code_rows(owner_engine, nurse)) == 5  # the 6th in 15 minutes issued nothing
    move_back(owner_engine, nurse, timedelta(minutes=15))
    new_login_code(station, outbox, EMAIL, destination=EMAIL)
    assert len(code_rows(owner_engine, nurse)) == 6


# --- the offline PIN
def test_pin_is_stored_as_argon2id_for_the_grace_period(
    station: Station, outbox: Path, nurse: str, owner_engine: Engine
) -> None:
    code = new_login_code(station, outbox, EMAIL)
    assert verify(station, EMAIL, code, pin="1234").status_code == 422  # a run: refused, code not spent
    assert verify(station, EMAIL, code, pin="12").status_code == 422
    assert verify(station, EMAIL, code, pin="480613").status_code == 200
    row = user_row(owner_engine, nurse)
    assert row.pin_hash.startswith("$argon2id$") and "480613" not in row.pin_hash
    assert PasswordHasher().verify(row.pin_hash, "480613")
    assert abs(row.pin_valid_until - (datetime.now(UTC) + timedelta(days=7))) < timedelta(seconds=30)


# --- input
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"identifier": "dana@"}, "identifier: Value error, this is not an e-mail address"),
        ({"identifier": "12ab"}, "identifier: Value error, enter an e-mail address or a phone number"),
        ({"identifier": EMAIL, "code": "12345"}, "code: Value error, the code is the 6 digits"),
        ({"identifier": EMAIL, "code": "123456", "pn": "4806"}, "pn: Extra inputs are not permitted"),
        (
            {"identifier": EMAIL, "code": "123456", "pin": "1111"},
            "pin: Value error, choose a PIN that is not",
        ),
    ],
)
def test_invalid_input_is_refused_with_a_clear_message(
    station: Station, body: dict[str, str], problem: str
) -> None:
    path = "/api/v1/auth/verify" if "code" in body else "/api/v1/auth/request-code"
    reply = station.client.post(path, json=body)
    assert reply.status_code == 422
    assert problem in reply.json()["detail"]
