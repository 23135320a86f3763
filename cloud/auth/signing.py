"""Signing by code: an Alpha Tau user chooses a signer from a site's staff; the signer's code signs.

domain.md "Finalisation and reports": the signer receives a 6-digit code valid for 1 hour, 3 tries.
Rules, each with the control it gives (hazard "signing without verification"):
- only an alphatau or admin user's session asks for a code (roles: a hospital user signs for
  themselves, and alphatau never signs for itself): checked by the route;
- the signer is an active hospital user of the treatment's site (the users table, synchronised from
  Priority PHONEBOOK), and the site is one of the station's: nobody else can be named as signer;
- 6 digits from `secrets`, stored only as an argon2id hash (the login codes' helpers,
  cloud/auth/codes.py), compared in constant time;
- valid 1 hour, 3 tries, single use; the third wrong code voids it;
- a new request for the same treatment voids the earlier code: only the last message works;
- at most 5 codes per treatment per hour: 15 guesses an hour, so the requester, who is the person the
  code guards against, cannot guess their way to a signature (brute-forced codes, hazards.md);
- the code works only for the user who asked, on the station they asked from;
- one reply for no code, a voided, expired or used code, or another requester's code.

Every step is audited with the destination masked. Functions take the caller's connection, so each
runs in one transaction with its audit events.
"""

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Row, Update, any_, func, insert, select, text, update

from cloud import audit
from cloud.auth import Channel, Identifier, mask
from cloud.auth.codes import code_matches, hash_code, new_code, spend_hash_time
from cloud.deps import Principal
from cloud.schema import signing_codes, treatments, users

SIGNING_CODE_TTL = timedelta(hours=1)
TRIES_PER_SIGNING_CODE = 3
REQUESTS_PER_TREATMENT = 5
REQUEST_WINDOW = timedelta(hours=1)

# One answer for every code that cannot sign (none sent, voided, expired, used, another requester's).
NO_LIVE_CODE = (
    "There is no valid signing code for this treatment: it was never sent, has expired or was voided. "
    "Send a new code."
)


class SigningRefused(Exception):
    """A request the route answers with `status` and these words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SigningIssued:
    """A code to send; the route hands it to the sender after the transaction committed."""

    code_id: str
    site: str
    treatment_id: str
    signer_id: str
    channel: Channel
    destination: str
    text: str
    expires_at: datetime


@dataclass(frozen=True)
class Signature:
    """A code-verified signature: what the station records on the treatment."""

    treatment_id: str
    site: str
    signer_id: str
    signer_name: str
    signer_position: str | None
    signed_at: datetime
    requested_by: str
    requested_by_name: str
    code_id: str


@dataclass(frozen=True)
class WrongCode:
    """No signature: the words for the person, and how many tries the live code has left."""

    message: str
    tries_left: int


def request_signing_code(
    conn: Connection, *, who: Principal, site: str, treatment_id: str, signer_id: str, now: datetime
) -> SigningIssued:
    """A new code for `signer_id` to sign `treatment_id`; raises SigningRefused. The earlier code of
    the treatment is voided. Requests for one treatment are serialised, so two at once cannot both
    leave a live code or both count as the 5th."""
    assert who.user_id is not None  # the route lets only a user's session through
    if site not in who.device_sites:
        raise SigningRefused(403, f"This station does not work at site {site}.")
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(treatment_id)})
    _require_open_treatment_at(conn, site, treatment_id)
    signer = _staff_member(conn, site, signer_id)
    if signer is None:
        raise SigningRefused(
            422, f"The signer must be an active member of the hospital staff of site {site}."
        )
    channel, destination = _contact(signer)
    if destination is None:
        raise SigningRefused(
            422, f"{signer.name} has no e-mail address or phone number to send a signing code to."
        )
    recent = conn.execute(
        select(func.count())
        .select_from(signing_codes)
        .where(
            signing_codes.c.treatment_id == treatment_id, signing_codes.c.created_at > now - REQUEST_WINDOW
        )
    ).scalar_one()
    if recent >= REQUESTS_PER_TREATMENT:
        raise SigningRefused(
            429,
            f"{REQUESTS_PER_TREATMENT} signing codes were sent for this treatment in the last hour; "
            "wait before sending another.",
        )

    # Only the newest code signs: every earlier live one of the treatment ends now.
    conn.execute(
        update(signing_codes)
        .where(
            signing_codes.c.treatment_id == treatment_id,
            signing_codes.c.used_at.is_(None),
            signing_codes.c.expires_at > now,
        )
        .values(expires_at=now)
    )
    code = new_code()
    code_id = str(uuid.uuid4())
    expires_at = now + SIGNING_CODE_TTL
    conn.execute(
        insert(signing_codes).values(
            site=site,
            id=code_id,
            treatment_id=treatment_id,
            signer_id=signer.id,
            requested_by=who.user_id,
            device_id=who.device_id,
            code_hash=hash_code(code),
            channel=channel,
            expires_at=expires_at,
            created_at=now,  # the app's clock, like expires_at: one clock for every comparison
        )
    )
    requester = _name_of(conn, who.user_id)
    _audit(
        conn,
        "signing.code_requested",
        site,
        who,
        treatment_id,
        signer_id=signer.id,
        channel=channel,
        destination=mask(destination),
        code_id=code_id,
    )
    return SigningIssued(
        code_id=code_id,
        site=site,
        treatment_id=treatment_id,
        signer_id=signer.id,
        channel=channel,
        destination=destination,
        text=message_text(code, site=site, requester=requester),
        expires_at=expires_at,
    )


def verify_signing_code(
    conn: Connection, *, who: Principal, treatment_id: str, code: str, now: datetime
) -> Signature | WrongCode:
    """The signature, or why not. A wrong code's try is written here and must be committed by the
    caller even though it refuses the request."""
    live = conn.execute(
        select(signing_codes)
        .where(
            signing_codes.c.treatment_id == treatment_id,
            signing_codes.c.used_at.is_(None),
            signing_codes.c.expires_at > now,
        )
        .order_by(signing_codes.c.created_at.desc())
        .limit(1)
        .with_for_update()
    ).first()
    if live is None or live.requested_by != who.user_id or live.device_id != who.device_id:
        # Another requester's code is not theirs to try: it answers like no code at all.
        spend_hash_time()
        site = live.site if live is not None else audit.NO_SITE
        reason = "no_live_code" if live is None else "other_requester"
        _audit(conn, "signing.verify_failed", site, who, treatment_id, reason=reason)
        return WrongCode(NO_LIVE_CODE, 0)
    if live.attempts >= TRIES_PER_SIGNING_CODE:  # voided at the third try already; a guard, not a path
        spend_hash_time()
        return WrongCode(NO_LIVE_CODE, 0)

    attempts = live.attempts + 1
    if not code_matches(code, live.code_hash):
        tries_left = TRIES_PER_SIGNING_CODE - attempts
        values: dict[str, object] = {"attempts": attempts}
        if tries_left == 0:
            values["expires_at"] = now  # the third wrong code voids it
        conn.execute(_update_code(live).values(**values))
        _audit(
            conn,
            "signing.verify_failed",
            live.site,
            who,
            treatment_id,
            reason="wrong_code",
            tries_left=tries_left,
        )
        if tries_left == 0:
            return WrongCode("The code is wrong, and that was the last try: send a new code.", 0)
        return WrongCode(
            f"The code is wrong: {tries_left} {'try' if tries_left == 1 else 'tries'} left.", tries_left
        )

    conn.execute(_update_code(live).values(attempts=attempts, used_at=now))
    signer = conn.execute(select(users.c.name, users.c.position).where(users.c.id == live.signer_id)).one()
    _audit(conn, "signing.verified", live.site, who, treatment_id, signer_id=live.signer_id, code_id=live.id)
    return Signature(
        treatment_id=treatment_id,
        site=live.site,
        signer_id=live.signer_id,
        signer_name=signer.name,
        signer_position=signer.position,
        signed_at=now,
        requested_by=live.requested_by,
        requested_by_name=_name_of(conn, live.requested_by),
        code_id=live.id,
    )


def message_text(code: str, *, site: str, requester: str) -> str:
    # The code first, as in the login message: phones offer it for autofill.
    minutes = int(SIGNING_CODE_TTL.total_seconds() // 60)
    return (
        f"{code} is your DaRT signing code: {requester} asks you to sign a treatment at {site}. "
        f"Type it on the station in front of you only. It expires in {minutes} minutes."
    )


# --- helpers
def _require_open_treatment_at(conn: Connection, site: str, treatment_id: str) -> None:
    """The cloud may not have the treatment yet (it reaches the cloud with the next sync); if it has,
    the treatment must be at this site and not finalised already."""
    found = conn.execute(
        select(treatments.c.site, treatments.c.data["is_complete"].as_boolean().label("is_complete")).where(
            treatments.c.id == treatment_id
        )
    ).first()
    if found is None:
        return
    if found.site != site:
        raise SigningRefused(422, f"This treatment is not at site {site}.")
    if found.is_complete:
        raise SigningRefused(409, "This treatment is finalised already.")


def _staff_member(conn: Connection, site: str, signer_id: str) -> Row | None:
    """The active hospital user `signer_id` of `site` (alphatau and admin never sign)."""
    return conn.execute(
        select(users.c.id, users.c.name, users.c.email, users.c.phone).where(
            users.c.id == signer_id,
            users.c.is_active,
            users.c.role == "hospital",
            any_(users.c.sites) == site,
        )
    ).first()


def _contact(signer: Row) -> tuple[Channel, str | None]:
    # E-mail first: an address names one person, a phone number is sometimes a ward's shared phone.
    if signer.email:
        return "email", signer.email
    try:  # Priority keeps phone numbers as people typed them
        phone = Identifier.parse(signer.phone or "")
    except ValueError:
        return "sms", None
    return "sms", phone.value if phone.kind == "sms" else None


def _name_of(conn: Connection, user_id: str) -> str:
    return conn.execute(select(users.c.name).where(users.c.id == user_id)).scalar_one()


def _update_code(live: Row) -> Update:
    return update(signing_codes).where(signing_codes.c.site == live.site, signing_codes.c.id == live.id)


def _lock_key(treatment_id: str) -> int:
    """A transaction-level advisory lock key for the treatment (63 bits of a SHA-256)."""
    return int.from_bytes(hashlib.sha256(f"signing:{treatment_id}".encode()).digest()[:8], "big") >> 1


def _audit(
    conn: Connection, action: str, site: str, who: Principal, treatment_id: str, **details: object
) -> None:
    audit.append(
        conn,
        action,
        site=site,
        actor=who.user_id,
        device_id=who.device_id,
        details={"treatment_id": treatment_id, **details},
    )
