"""Device enrolment and revocation, over real HTTP against real PostgreSQL."""

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, update

from cloud.schema import devices, enrolment_codes, sessions
from cloud.tokens import digest
from tests.cloud.conftest import CloudDatabase
from tests.cloud.test_login import Station, audit_rows, client, serve_with_outbox, sign_in
from tests.cloud.utils import HOSPITAL_A_SITES, add_device, add_session, add_sites, add_user

pytestmark = pytest.mark.postgres

REFUSED = {
    "detail": "The enrolment code is wrong, already used or expired; ask an administrator for a new one."
}
CODE_FORM = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}")  # Crockford base32


@pytest.fixture
def url(cloud_db: CloudDatabase, app_engine: Engine, tmp_path: Path, owner_engine: Engine) -> Iterator[str]:
    add_sites(owner_engine)
    with serve_with_outbox(cloud_db, app_engine, tmp_path / "outbox.jsonl") as base:
        yield base


@pytest.fixture
def admin(url: str, owner_engine: Engine) -> Iterator[httpx.Client]:
    """An administrator signed in on the IT desk's device."""
    admin_id = add_user(owner_engine, role="admin", user_sites=(), email="it@alphatau.example")
    device_id, _ = add_device(owner_engine, HOSPITAL_A_SITES, name="IT desk")
    with client(url, add_session(owner_engine, admin_id, device_id)) as c:
        yield c


def issue(admin: httpx.Client, sites: list[str] | None = None, name: str = "OR-3 laptop") -> dict[str, Any]:
    reply = admin.post(
        "/api/v1/devices/enrolment-codes", json={"device_name": name, "sites": sites or ["A-TLV"]}
    )
    assert reply.status_code == 201, reply.text
    return reply.json()


def enrol(url: str, code: str) -> httpx.Response:
    with client(url) as anonymous:  # a new station has no credential yet
        return anonymous.post("/api/v1/devices/enrol", json={"code": code})


def test_an_enrolled_device_holds_its_own_credential(
    url: str, admin: httpx.Client, owner_engine: Engine
) -> None:
    issued = issue(admin, ["A-TLV", "A-HFA"])
    assert CODE_FORM.fullmatch(issued["code"])
    expires_at = datetime.fromisoformat(issued["expires_at"])
    assert abs(expires_at - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(seconds=30)
    with owner_engine.connect() as conn:
        (stored,) = conn.execute(select(enrolment_codes)).all()
    assert issued["code"] not in json.dumps(stored._asdict(), default=str)  # only its digest is kept

    reply = enrol(url, issued["code"].lower().replace("-", " "))  # as typed: case and spacing do not matter
    assert reply.status_code == 201, reply.text
    enrolled = reply.json()
    assert (enrolled["name"], enrolled["sites"]) == ("OR-3 laptop", ["A-TLV", "A-HFA"])
    with owner_engine.connect() as conn:
        device = conn.execute(select(devices).where(devices.c.id == enrolled["device_id"])).one()
    assert device.credential_hash == digest(enrolled["credential"])
    assert enrolled["credential"] not in json.dumps(device._asdict(), default=str)
    assert (device.name, device.sites, device.revoked_at) == ("OR-3 laptop", ["A-TLV", "A-HFA"], None)
    assert device.enrolled_by == stored.created_by

    with client(url, enrolled["credential"]) as station:  # the credential works as the station's own
        assert (
            station.post("/api/v1/auth/request-code", json={"identifier": "x@h.example"}).status_code == 202
        )
    with client(url, "a-guessed-credential") as stranger:
        assert (
            stranger.post("/api/v1/auth/request-code", json={"identifier": "x@h.example"}).status_code == 401
        )


def test_an_enrolled_station_signs_a_user_in(
    url: str, admin: httpx.Client, owner_engine: Engine, tmp_path: Path
) -> None:
    enrolled = enrol(url, issue(admin)["code"]).json()
    nurse = add_user(owner_engine, role="hospital", user_sites=("A-TLV",), email="noa@hospital.example")
    with client(url, enrolled["credential"]) as c:
        reply = sign_in(Station(enrolled["device_id"], c), tmp_path / "outbox.jsonl", "noa@hospital.example")
    assert reply["user"]["id"] == nurse
    with owner_engine.connect() as conn:
        bound = conn.execute(select(sessions.c.device_id).where(sessions.c.user_id == nurse)).scalar_one()
    assert bound == enrolled["device_id"]


def test_an_enrolment_code_works_once(url: str, admin: httpx.Client) -> None:
    code = issue(admin)["code"]
    assert enrol(url, code).status_code == 201
    second = enrol(url, code)
    assert (second.status_code, second.json()) == (401, REFUSED)


def test_an_expired_enrolment_code_is_refused(url: str, admin: httpx.Client, owner_engine: Engine) -> None:
    code = issue(admin)["code"]
    with owner_engine.begin() as conn:  # 24 hours pass
        conn.execute(update(enrolment_codes).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    reply = enrol(url, code)
    assert (reply.status_code, reply.json()) == (401, REFUSED)
    unknown = enrol(url, "0000-0000-0000-0000")
    assert (unknown.status_code, unknown.json()) == (401, REFUSED)
    with owner_engine.connect() as conn:
        assert conn.execute(select(devices.c.id).where(devices.c.name == "OR-3 laptop")).all() == []


def test_only_an_admin_issues_enrolment_codes(url: str, owner_engine: Engine) -> None:
    device_id, device_token = add_device(owner_engine, HOSPITAL_A_SITES)
    body = {"device_name": "spare", "sites": ["A-TLV"]}
    callers = {
        None: 401,
        device_token: 403,
        add_session(
            owner_engine, add_user(owner_engine, role="hospital", user_sites=("A-TLV",)), device_id
        ): 403,
        add_session(owner_engine, add_user(owner_engine, role="alphatau", user_sites=()), device_id): 403,
    }
    for token, expected in callers.items():
        with client(url, token) as c:
            assert c.post("/api/v1/devices/enrolment-codes", json=body).status_code == expected
    with owner_engine.connect() as conn:
        assert conn.execute(select(enrolment_codes)).all() == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"device_name": "x", "sites": ["A-TLV", "Z-NOWHERE"]}, "sites: no such site: Z-NOWHERE"),
        ({"device_name": "x", "sites": []}, "sites: List should have at least 1 item"),
        ({"device_name": "x", "sites": ["A-TLV", "A-TLV"]}, "sites: Value error, each site once"),
        ({"device_name": " ", "sites": ["A-TLV"]}, "device_name: String should have at least 1 character"),
    ],
)
def test_enrolment_code_requests_are_validated(
    admin: httpx.Client, body: dict[str, Any], problem: str
) -> None:
    reply = admin.post("/api/v1/devices/enrolment-codes", json=body)
    assert reply.status_code == 422
    assert problem in reply.json()["detail"]


def test_a_malformed_enrolment_code_is_a_clear_422(url: str) -> None:
    reply = enrol(url, "12345")
    assert reply.status_code == 422
    assert "code: Value error, an enrolment code is 16 letters and digits" in reply.json()["detail"]


def test_revoking_a_device_ends_its_credential_and_sessions(
    url: str, admin: httpx.Client, owner_engine: Engine
) -> None:
    enrolled = enrol(url, issue(admin)["code"]).json()
    nurse = add_user(owner_engine, role="hospital", user_sites=("A-TLV",))
    session = add_session(owner_engine, nurse, enrolled["device_id"])
    with client(url, enrolled["credential"]) as station, client(url, session) as signed_in:
        assert (
            station.post("/api/v1/auth/request-code", json={"identifier": "x@h.example"}).status_code == 202
        )
        assert (
            signed_in.post("/api/v1/devices/enrolment-codes", json={}).status_code == 403
        )  # alive, not admin
        with client(
            url, add_session(owner_engine, nurse, add_device(owner_engine, ("A-TLV",))[0])
        ) as nurse_c:
            assert nurse_c.post(f"/api/v1/devices/{enrolled['device_id']}/revoke").status_code == 403

        revoked = admin.post(f"/api/v1/devices/{enrolled['device_id']}/revoke")
        assert revoked.status_code == 200, revoked.text
        assert (
            station.post("/api/v1/auth/request-code", json={"identifier": "x@h.example"}).status_code == 401
        )
        assert signed_in.post("/api/v1/auth/logout").status_code == 401

    again = admin.post(f"/api/v1/devices/{enrolled['device_id']}/revoke")  # idempotent: the first time stays
    assert again.json() == revoked.json()
    assert admin.post("/api/v1/devices/st-nosuchdevice/revoke").status_code == 404
    with owner_engine.connect() as conn:
        ended = conn.execute(select(sessions.c.revoked_at).where(sessions.c.user_id == nurse)).scalars().all()
    assert len(ended) == 2 and ended.count(None) == 1  # the session on the revoked device ended


def test_enrolment_events_are_audited(url: str, admin: httpx.Client, owner_engine: Engine) -> None:
    enrolled = enrol(url, issue(admin)["code"]).json()
    admin.post(f"/api/v1/devices/{enrolled['device_id']}/revoke")
    events = [(row.action, row.site, row.device_id) for row in audit_rows(owner_engine)]
    assert [action for action, _, _ in events] == [
        "device.enrolment_code_issued",
        "device.enrolled",
        "device.revoked",
    ]
    assert {site for _, site, _ in events} == {"*"}
    assert events[1][2] == events[2][2] == enrolled["device_id"]
    assert enrolled["credential"] not in json.dumps(
        [row._asdict() for row in audit_rows(owner_engine)], default=str
    )


def test_a_device_serves_one_hospital_only(admin: httpx.Client) -> None:
    reply = admin.post(
        "/api/v1/devices/enrolment-codes", json={"device_name": "x", "sites": ["A-TLV", "B-JLM"]}
    )
    assert reply.status_code == 422 and "one hospital" in reply.json()["detail"]
