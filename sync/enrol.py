"""Enrolling a station: trade the administrator's one-time code for this station's own credential.

Hospital IT runs `python run.py station --cloud URL --enrol CODE` once. The cloud
(`POST /api/v1/devices/enrol`, cloud/routes/devices.py) makes the device and answers its id and
credential; the station then takes that id as its own and keeps the credential, sealed with its
data key (`store.remote.link_cloud_in`), in ONE transaction.

Why the station takes the cloud's id: the cloud accepts an operation only from the device it
names (`device_mismatch` otherwise), and its ledger of applied operations is keyed by device. So:

- changes never sent anywhere are re-attributed to the new id (no cloud has seen them), and so are
  changes the cloud refused for good (quarantined, or needing a person): their last answer was a
  refusal, so the cloud never applied them;
- changes sent and still waiting for a (final) answer are NOT re-attributed: the old device may
  have applied them already, and sending them again under another id could apply them twice
  (invariant 3). Such a station is refused before the code is used: sync them first with the
  current link (or, if that link is dead, ask the administrator to reinstate the old device).
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection, and_, func, or_, select, update

from store import remote
from store.engine import read_transaction
from store.enums import QueueStatus
from store.journal import QUEUE, Journal, transaction
from store.station import Station

ENROL_PATH = "/api/v1/devices/enrol"
# Entries that go out again by themselves: once sent, the cloud may have applied them.
SENDABLE = (QueueStatus.PENDING.value, QueueStatus.IN_FLIGHT.value)
# Entries whose last answer was a refusal: never applied, not sent again unless a person acts.
REFUSED = (QueueStatus.QUARANTINED.value, QueueStatus.NEEDS_PERSON.value)


class EnrolmentError(Exception):
    """Enrolment did not happen; the message says why and what to do, for hospital IT."""


class EnrolmentRefused(EnrolmentError):
    """The cloud refused the code (wrong, used, expired, or malformed)."""


@dataclass(frozen=True)
class Enrolment:
    device_id: str  # the cloud's id, now this station's
    previous_device_id: str
    name: str  # the device name the administrator gave
    sites: list[str]
    reattributed: int  # changes never sent that now carry the new id


def enrol_station(
    station: Station,
    cloud_url: str,
    enrolment_code: str,
    *,
    timeout_s: float = 15.0,
    transport: httpx.BaseTransport | None = None,
) -> Enrolment:
    """Enrol `station` with the cloud at `cloud_url`; raises EnrolmentError (nothing changed) on failure."""
    url = _checked_url(cloud_url)
    code = enrolment_code.strip()
    if not code:
        raise EnrolmentRefused("Type the enrolment code the administrator gave (XXXX-XXXX-XXXX-XXXX).")
    with read_transaction(station.engine) as conn:
        _require_nothing_unconfirmed(conn, station.device_id)  # checked before the code is used up
    reply = _enrol(url, code, timeout_s=timeout_s, transport=transport)
    previous = station.device_id
    with transaction(station, None) as journal:
        _require_nothing_unconfirmed(journal.conn, previous)  # a round may have sent some meanwhile
        reattributed = _adopt(journal, reply["device_id"])
        remote.link_cloud_in(
            journal, cloud_url=url, credential=reply["credential"], device_id=reply["device_id"]
        )
        journal.audit_only(
            "station_enrolled",
            new={
                "cloud_url": url,
                "device_id": reply["device_id"],
                "previous_device_id": previous,
                "sites": reply["sites"],
                "reattributed": reattributed,
            },
        )
    station.device_id = reply["device_id"]
    return Enrolment(
        device_id=reply["device_id"],
        previous_device_id=previous,
        name=reply["name"],
        sites=list(reply["sites"]),
        reattributed=reattributed,
    )


# --- the cloud's side ---------------------------------------------------------------------------
def _enrol(url: str, code: str, *, timeout_s: float, transport: httpx.BaseTransport | None) -> dict[str, Any]:
    try:
        with httpx.Client(base_url=url, timeout=timeout_s, transport=transport) as client:
            response = client.post(ENROL_PATH, json={"code": code})
    except httpx.TransportError as exc:
        raise EnrolmentError(
            f"The cloud at {url} cannot be reached ({type(exc).__name__}); check the address and the "
            "network, then enrol again with the same code."
        ) from exc
    if response.status_code in (401, 422):
        raise EnrolmentRefused(_detail(response))
    if response.status_code != 201:
        raise EnrolmentError(
            f"The cloud at {url} answered {response.status_code} to the enrolment: {_detail(response)}"
        )
    try:
        reply = response.json()
        fields = (reply["device_id"], reply["credential"], reply["name"], reply["sites"])
    except (ValueError, KeyError, TypeError) as exc:
        unreadable = response.text[:200]
        raise EnrolmentError(f"The cloud's enrolment answer is not readable: {unreadable!r}") from exc
    if not all(isinstance(f, str) and f for f in fields[:3]) or not isinstance(fields[3], list):
        raise EnrolmentError(f"The cloud's enrolment answer is incomplete: {reply!r}"[:300])
    return reply


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.text[:300] or response.reason_phrase


def _checked_url(cloud_url: str) -> str:
    url = cloud_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EnrolmentError(
            f"{cloud_url!r} is not a cloud address: give it as https://host[:port] (http only on loopback)."
        )
    return url


# --- the station's side ---------------------------------------------------------------------------
def _require_nothing_unconfirmed(conn: Connection, device_id: str) -> None:
    """Refuse when changes left this station and are not confirmed yet (see above)."""
    sent = conn.execute(
        select(func.count()).where(QUEUE.c.status.in_(SENDABLE), QUEUE.c.sent_at.is_not(None))
    ).scalar_one()
    if sent:
        raise EnrolmentError(
            f"{sent} change(s) were sent to the cloud as device {device_id} and are not "
            "confirmed yet. Sync them with the current link first (the cloud may already hold them, and "
            "sending them again as another device could apply them twice); if that link no longer works, "
            "ask the administrator to reinstate the device."
        )


def _adopt(journal: Journal, device_id: str) -> int:
    """Take the cloud's device id; open changes no cloud applied go out under it (see above)."""
    conn = journal.conn
    never_applied = or_(
        and_(QUEUE.c.status.in_(SENDABLE), QUEUE.c.sent_at.is_(None)), QUEUE.c.status.in_(REFUSED)
    )
    moved = conn.execute(update(QUEUE).where(never_applied).values(device_id=device_id)).rowcount
    conn.exec_driver_sql("UPDATE device_state SET device_id = ? WHERE id = 1", (device_id,))
    return moved
