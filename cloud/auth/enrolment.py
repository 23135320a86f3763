"""Device enrolment: an admin issues a one-time code, a station trades it for its own credential.

The enrolment code is typed by hospital IT on the new station, so it is short enough to type and
read aloud (16 characters of Crockford's base32, in groups of four) yet carries 80 random bits:
the enrol route needs no credential, and 2**80 guesses cannot be made in the code's 24 hours.
That entropy is also why a fast digest is enough to store it (cloud.tokens: a slow hash protects
guessable secrets); the database finds the row by its digest and never holds the code.

The station's credential is a bearer token (cloud.tokens), shown once in the enrol reply and
stored as its digest. Revoking a device ends its credential and every session signed in on it.
"""

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, select, update

from cloud import audit
from cloud.deps import Principal
from cloud.schema import devices, enrolment_codes, sessions, sites
from cloud.tokens import digest, new_token

ENROLMENT_TTL = timedelta(hours=24)
CODE_GROUPS = 4
GROUP_LENGTH = 4
# Crockford's base32: no I, L, O or U, so nothing reads as another character (or a word).
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# What a person may type for what they see: lower case, O for 0, I and L for 1; dashes and spaces.
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})
_SEPARATORS = re.compile(r"[\s\-]")


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    credential: str  # shown once
    name: str
    sites: list[str]


def new_enrolment_code() -> str:
    groups = ("".join(secrets.choice(ALPHABET) for _ in range(GROUP_LENGTH)) for _ in range(CODE_GROUPS))
    return "-".join(groups)


def normalise_code(typed: str) -> str:
    """The canonical form (no dashes, upper case); raises ValueError for what cannot be a code."""
    code = _SEPARATORS.sub("", typed).upper().translate(_READ_AS)
    if len(code) != CODE_GROUPS * GROUP_LENGTH or any(c not in ALPHABET for c in code):
        raise ValueError(
            f"an enrolment code is {CODE_GROUPS * GROUP_LENGTH} letters and digits, "
            "as the administrator gave it (XXXX-XXXX-XXXX-XXXX)"
        )
    return code


def unknown_sites(conn: Connection, wanted: list[str]) -> list[str]:
    known = set(conn.execute(select(sites.c.code).where(sites.c.code.in_(wanted))).scalars())
    return sorted(set(wanted) - known)


def hospitals_of(conn: Connection, wanted: list[str]) -> set[str]:
    return set(conn.execute(select(sites.c.hospital).where(sites.c.code.in_(wanted))).scalars())


def issue_code(
    conn: Connection, *, admin: Principal, device_name: str, device_sites: list[str], now: datetime
) -> tuple[str, datetime]:
    """A one-time enrolment code for a device of `device_sites`; returns (code, expires_at)."""
    code = new_enrolment_code()
    expires_at = now + ENROLMENT_TTL
    conn.execute(
        insert(enrolment_codes).values(
            code_hash=digest(normalise_code(code)),
            sites=device_sites,
            device_name=device_name,
            created_by=admin.user_id,
            expires_at=expires_at,
            created_at=now,
        )
    )
    audit.append(
        conn,
        "device.enrolment_code_issued",
        actor=admin.user_id,
        device_id=admin.device_id,
        details={"device_name": device_name, "sites": device_sites, "expires_at": expires_at.isoformat()},
    )
    return code, expires_at


def enrol(conn: Connection, *, code: str, now: datetime) -> Enrolled | None:
    """A new device and its credential, or None when the code is unknown, used or expired.

    The code's row is locked, so two stations racing with one code cannot both enrol."""
    row = conn.execute(
        select(enrolment_codes).where(enrolment_codes.c.code_hash == digest(code)).with_for_update()
    ).first()
    if row is None or row.used_at is not None or row.expires_at <= now:
        return None
    device_id = f"st-{uuid.uuid4().hex[:12]}"
    credential = new_token()
    conn.execute(
        insert(devices).values(
            id=device_id,
            name=row.device_name,
            sites=list(row.sites),
            credential_hash=digest(credential),
            enrolled_by=row.created_by,
            enrolled_at=now,
        )
    )
    conn.execute(
        update(enrolment_codes)
        .where(enrolment_codes.c.code_hash == row.code_hash)
        .values(used_at=now, device_id=device_id)
    )
    audit.append(
        conn,
        "device.enrolled",
        actor=row.created_by,  # the admin who issued the code vouches for the device
        device_id=device_id,
        details={"device_name": row.device_name, "sites": list(row.sites)},
    )
    return Enrolled(device_id=device_id, credential=credential, name=row.device_name, sites=list(row.sites))


def revoke(conn: Connection, *, device_id: str, admin: Principal, now: datetime) -> datetime | None:
    """When the device was revoked (now, or earlier: revoking twice changes nothing); None if unknown."""
    row = conn.execute(
        select(devices.c.id, devices.c.revoked_at).where(devices.c.id == device_id).with_for_update()
    ).first()
    if row is None:
        return None
    if row.revoked_at is not None:
        return row.revoked_at
    conn.execute(update(devices).where(devices.c.id == device_id).values(revoked_at=now))
    # deps.principal already refuses sessions of a revoked device; ending them as well keeps them
    # ended in the table itself, for whoever reads it (or reinstates a device) later.
    ended = conn.execute(
        update(sessions)
        .where(sessions.c.device_id == device_id, sessions.c.revoked_at.is_(None))
        .values(revoked_at=now)
    ).rowcount
    audit.append(
        conn,
        "device.revoked",
        actor=admin.user_id,
        device_id=device_id,
        details={"sessions_ended": ended, "by_device": admin.device_id},
    )
    return now
