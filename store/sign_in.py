"""Who may open the station: offline PIN checks, online logins remembered, emergency access; all audited.

The online check itself (a verification code) is the cloud's (cloud/routes/auth.py); the station keeps
what lets the same person in with no network: the argon2id hash of the PIN chosen at that login, valid
for a grace period. The validation bundle replaces these rows at every sync (revocation reaches the
station there); a login remembered here only bridges the time until that bundle arrives.

Every function is one transaction with its audit entry. PIN hashing and checking (argon2, tens of
milliseconds by design) happen outside the write transaction, so they never hold up a scan.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, or_, select, update

from store.engine import read_transaction
from store.enums import Role
from store.errors import InvalidInput, NotPermitted
from store.guards import clean_text
from store.journal import transaction
from store.models import User, ValidationCacheEntry
from store.station import Actor, Station

USERS = User.__table__
MAX_PIN_FAILURES = 5  # then the PIN is refused until an online login (or emergency access)
DEFAULT_PIN_GRACE = timedelta(days=7)  # the cloud's default (PIN_GRACE_DAYS); its bundle has the truth
EMERGENCY_PREFIX = "emergency-"

_hasher = PasswordHasher()


class PinRefused(NotPermitted):
    code = "pin_refused"


@dataclass(frozen=True)
class KnownUser:
    id: str
    name: str
    role: Role
    sites: frozenset[str]
    position: str | None
    has_pin: bool
    pin_valid_until: datetime | None
    failed_attempts: int

    def actor(self) -> Actor:
        return Actor(self.id, self.name, self.role, self.sites, self.position)


def find_user(station: Station, identifier: str) -> KnownUser | None:
    """The active user of this station whose e-mail address or phone number this is."""
    text = (identifier or "").strip()
    if not text:
        return None
    with read_transaction(station.engine) as conn:
        row = (
            conn.execute(
                select(USERS).where(
                    USERS.c.is_active,
                    or_(func.lower(USERS.c.email) == text.lower(), USERS.c.phone == _phone(text)),
                )
            )
            .mappings()
            .first()
        )
    return None if row is None else _known(row)


def load_user(station: Station, user_id: str) -> KnownUser | None:
    with read_transaction(station.engine) as conn:
        row = conn.execute(select(USERS).where(USERS.c.id == user_id)).mappings().first()
    return None if row is None else _known(row)


def check_pin(station: Station, *, identifier: str, pin: str, purpose: str = "login") -> Actor:
    """The user with this e-mail/phone and PIN, offline; refusals say why, for the field they concern."""
    user = find_user(station, identifier)
    if user is None:
        raise PinRefused(
            "Nobody with this e-mail address or phone number may sign in at this station.", field="identifier"
        )
    return check_user_pin(station, user_id=user.id, pin=pin, purpose=purpose)


def check_user_pin(station: Station, *, user_id: str, pin: str, purpose: str = "login") -> Actor:
    """Check the PIN of a known user (sign-in, unlocking the screen, signing offline)."""
    user = load_user(station, user_id)
    now = station.now()
    if user is None:
        raise PinRefused("This user may no longer sign in at this station.", field="pin")
    if user.failed_attempts >= MAX_PIN_FAILURES:
        raise PinRefused(
            f"The PIN was entered wrongly {MAX_PIN_FAILURES} times and is blocked. Sign in online with a "
            "code to unblock it, or use emergency access.",
            field="pin",
        )
    if not user.has_pin:
        raise PinRefused(
            "You have no offline PIN on this station. Sign in online with a code and choose a PIN.",
            field="pin",
        )
    if user.pin_valid_until is not None and user.pin_valid_until <= now:
        shown = user.pin_valid_until.astimezone(station.settings.zone)
        raise PinRefused(
            f"Your offline PIN expired on {shown:%d %b %Y %H:%M}. Sign in online with a code to renew it.",
            field="pin",
        )
    if not _pin_matches(station, user.id, pin):
        left = _record_failure(station, user, purpose)
        raise PinRefused(
            "The PIN is wrong." + (f" {left} tries left." if left else " The PIN is now blocked."),
            field="pin",
        )
    with transaction(station, user.actor()) as journal:
        journal.conn.execute(
            update(USERS).where(USERS.c.id == user.id).values(failed_attempts=0, last_login=journal.now)
        )
        journal.audit_only(f"pin_{purpose}", table="users", record_id=user.id)
    return user.actor()


def remember_online_login(
    station: Station,
    *,
    user: dict[str, Any],
    identifier: str,
    pin: str | None,
    pin_grace: timedelta = DEFAULT_PIN_GRACE,
) -> Actor:
    """After the cloud accepted a code: keep the user (and the PIN's hash) for offline sign-in."""
    pin_hash = _hasher.hash(pin) if pin else None  # outside the transaction: argon2 is slow on purpose
    role = Role(user["role"])
    actor = Actor(
        str(user["id"]), str(user["name"]), role, frozenset(user.get("sites") or []), user.get("position")
    )
    with transaction(station, actor) as journal:
        now = journal.now
        values: dict[str, Any] = {
            "name": actor.name,
            "role": role.value,
            "sites": sorted(actor.sites),
            "position": actor.position,
            "is_active": True,
            "failed_attempts": 0,
            "last_login": now,
            "updated_at": now,
        }
        if pin_hash is not None:
            values |= {"pin_hash": pin_hash, "pin_valid_until": now + pin_grace}
        exists = journal.conn.execute(select(USERS.c.id).where(USERS.c.id == actor.user_id)).first()
        if exists:
            journal.conn.execute(update(USERS).where(USERS.c.id == actor.user_id).values(values))
        else:
            contact = {"email": identifier.strip()} if "@" in identifier else {"phone": _phone(identifier)}
            journal.conn.execute(USERS.insert().values(id=actor.user_id, created_at=now, **contact, **values))
        journal.audit_only(
            "online_login", table="users", record_id=actor.user_id, new={"pin_set": pin_hash is not None}
        )
    return actor


def emergency_access(station: Station, *, name: str, reason: str, sites: frozenset[str]) -> Actor:
    """Open the station with no check at all: audited with who and why, reported at the next sync."""
    person = clean_text(name, field="name", label="Your name", required=True) or ""
    why = clean_text(reason, field="reason", label="The reason for emergency access", required=True)
    if len(why or "") < 5:
        raise InvalidInput("Say in a few words why emergency access is needed.", field="reason")
    if not sites:
        raise InvalidInput(
            "This station has no site yet (no validation data was ever loaded), so emergency access "
            "cannot open it.",
            field="reason",
        )
    actor = Actor(f"{EMERGENCY_PREFIX}{uuid.uuid4().hex[:12]}", person, Role.HOSPITAL, sites, None)
    with transaction(station, actor) as journal:
        journal.audit_only("emergency_access", new={"name": person, "sites": sorted(sites)}, reason=why)
    return actor


def record_sign_out(station: Station, actor: Actor, *, reason: str = "signed out") -> None:
    with transaction(station, actor) as journal:
        journal.audit_only("signed_out", table="users", record_id=actor.user_id, reason=reason)


def known_sites(station: Station) -> frozenset[str]:
    """The sites this station serves, as its validation data names them."""
    cache = ValidationCacheEntry.__table__
    with read_transaction(station.engine) as conn:
        from_cache = conn.execute(select(cache.c.site).where(cache.c.site.is_not(None)).distinct()).scalars()
        sites = set(from_cache)
        for row in conn.execute(select(USERS.c.sites).where(USERS.c.role == Role.HOSPITAL.value)):
            sites.update(row.sites or [])
    return frozenset(sites)


# --- helpers ----------------------------------------------------------------------------------------
def _pin_matches(station: Station, user_id: str, pin: str) -> bool:
    with read_transaction(station.engine) as conn:
        stored = conn.execute(select(USERS.c.pin_hash).where(USERS.c.id == user_id)).scalar()
    if not stored or not pin:
        return False
    try:
        return _hasher.verify(stored, pin.strip())
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _record_failure(station: Station, user: KnownUser, purpose: str) -> int:
    with transaction(station, None) as journal:
        journal.conn.execute(
            update(USERS)
            .where(USERS.c.id == user.id)
            .values(failed_attempts=USERS.c.failed_attempts + 1, updated_at=journal.now)
        )
        journal.audit_only(f"pin_{purpose}_refused", table="users", record_id=user.id)
        count = journal.conn.execute(
            select(USERS.c.failed_attempts).where(USERS.c.id == user.id)
        ).scalar_one()
    return max(MAX_PIN_FAILURES - count, 0)


def _known(row: Any) -> KnownUser:
    return KnownUser(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        sites=frozenset(row["sites"] or []),
        position=row["position"],
        has_pin=bool(row["pin_hash"]),
        pin_valid_until=row["pin_valid_until"],
        failed_attempts=row["failed_attempts"],
    )


def _phone(text: str) -> str:
    """A phone number as the directory keeps it: digits with a leading +, no spaces or dashes."""
    stripped = text.strip()
    return ("+" if stripped.startswith("+") else "") + re.sub(r"\D", "", stripped)
