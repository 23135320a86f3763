"""Online login with a one-time code: request, verify, and the session bound to the station.

Rules (architecture.md "Identity"), each with the control it gives:
- 6 digits from `secrets` (a CSPRNG: codes cannot be predicted from earlier ones);
- valid 10 minutes, single use, at most 5 tries per code: a guesser gets 5 chances in 10**6;
- every failure on an account counts; 10 in a row lock it for 15 minutes, and a locked account gets
  no new codes, so requesting fresh codes does not buy fresh tries (brute-forced codes, hazards.md);
- at most 5 code requests per account in 15 minutes: a station cannot be used to flood a phone;
- a new request ends every earlier unused code: only the last message a person received works;
- a code works only on the station that requested it (the session is bound to that device);
- stored hashed, compared in constant time;
- the same reply whether the account exists, is locked, or anything else went wrong.

Every step is audited (cloud.audit) with the identifier masked. All functions take the caller's
connection: the route runs them in one transaction with their audit events.
"""

import base64
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.low_level import Type, hash_secret_raw
from sqlalchemy import Connection, Row, delete, func, insert, select, update

from cloud import audit
from cloud.auth import Channel, Identifier
from cloud.deps import ALL_SITE_ROLES, Principal
from cloud.schema import login_codes, sessions, users
from cloud.tokens import digest, new_token

CODE_DIGITS = 6
CODE_TTL = timedelta(minutes=10)
TRIES_PER_CODE = 5
FAILURES_BEFORE_LOCK = 10
LOCK_TIME = timedelta(minutes=15)
REQUESTS_PER_WINDOW = 5
REQUEST_WINDOW = timedelta(minutes=15)
KEEP_USED_CODES = timedelta(days=1)  # older code rows of an account are deleted at its next request
DEFAULT_PIN_GRACE = timedelta(days=7)

# Why argon2id rather than HMAC-SHA256 with a server key: a 6-digit code has only 10**6 values, so
# a plain digest of it is reversed instantly by anyone who reads login_codes. A keyed HMAC would
# stop that only while the key stays apart from the database, and it would be one more secret that
# every stateless worker must share and operators must rotate (CloudSettings has none today).
# Argon2id needs no secret: each stored code costs a thief about 10**6 memory-hard hashes (hours of
# CPU) for something that is worth one sign-in, for 10 minutes at most, on one enrolled station.
# Its price for us is one hash (~20 ms) per request and per try, and both need a device credential.
# The parameters are OWASP's minimum for argon2id (19 MiB, 2 passes, 1 lane).
_HASH_TAG = "argon2id-m19456-t2-p1"  # a row of another scheme never matches (codes live 10 minutes)
_DUMMY_SALT = b"\x00" * 16

# The offline PIN is stored in argon2-cffi's own format (parameters inside), which is what the
# station reads from its bundle to check the PIN offline. Defaults: argon2id, RFC 9106 profile.
_pin_hasher = PasswordHasher()


@dataclass(frozen=True)
class Issued:
    """A code to send; the route hands it to the sender after the transaction committed."""

    user_id: str
    channel: Channel
    destination: str
    code: str


@dataclass(frozen=True)
class SignedIn:
    user: Row
    token: str  # the bearer token: shown once, stored only as its digest
    expires_at: datetime


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def hash_code(code: str) -> str:
    salt = secrets.token_bytes(16)
    return f"{_HASH_TAG}${_b64(salt)}${_b64(_raw_hash(code, salt))}"


def code_matches(code: str, stored: str) -> bool:
    """Constant time in the code: the whole hash is compared with hmac.compare_digest."""
    tag, _, rest = stored.partition("$")
    salt_text, _, hash_text = rest.partition("$")
    if tag != _HASH_TAG:  # a row of another hash scheme: refuse, never guess how to read it
        spend_hash_time()
        return False
    try:
        salt, expected = (
            base64.b64decode(salt_text, validate=True),
            base64.b64decode(hash_text, validate=True),
        )
    except ValueError:  # binascii.Error is a ValueError: a damaged row matches nothing
        spend_hash_time()
        return False
    return hmac.compare_digest(_raw_hash(code, salt), expected)


def spend_hash_time() -> None:
    """One hash for nothing: a path that has no code to check answers as slowly as one that has,
    so response time does not tell which accounts exist."""
    _raw_hash("000000", _DUMMY_SALT)


def message_text(code: str) -> str:
    # The code first: phones offer it for autofill, and the console line reads naturally.
    minutes = int(CODE_TTL.total_seconds() // 60)
    return f"{code} is your DaRT verification code. It expires in {minutes} minutes. Never share it."


def hash_pin(pin: str) -> str:
    return _pin_hasher.hash(pin)


def request_code(
    conn: Connection, *, identifier: Identifier, station: Principal, now: datetime
) -> Issued | None:
    """A new code for the account, or None (unknown, locked, too many requests) — the caller replies
    the same either way. The account row is locked, so two requests at once cannot both count as
    the 5th, and the code they supersede is always the one before."""
    user, refusal = _account(conn, identifier, station)
    account = user.id if user is not None else None  # for the audit trail, whatever happens next
    if user is not None and user.locked_until is not None and user.locked_until > now:
        user, refusal = None, "locked"
    if user is not None:
        recent = conn.execute(
            select(func.count())
            .select_from(login_codes)
            .where(login_codes.c.user_id == user.id, login_codes.c.created_at > now - REQUEST_WINDOW)
        ).scalar_one()
        if recent >= REQUESTS_PER_WINDOW:
            user, refusal = None, "too_many_requests"
    if user is None:
        spend_hash_time()
        _audit(conn, "login.code_requested", identifier, station, account, outcome=refusal)
        return None

    # Only the newest code works: every earlier unused one expires now.
    conn.execute(
        update(login_codes)
        .where(
            login_codes.c.user_id == user.id, login_codes.c.used_at.is_(None), login_codes.c.expires_at > now
        )
        .values(expires_at=now)
    )
    conn.execute(
        delete(login_codes).where(
            login_codes.c.user_id == user.id, login_codes.c.created_at < now - KEEP_USED_CODES
        )
    )
    code = new_code()
    conn.execute(
        insert(login_codes).values(
            id=str(uuid.uuid4()),
            user_id=user.id,
            code_hash=hash_code(code),
            channel=identifier.kind,
            device_id=station.device_id,
            expires_at=now + CODE_TTL,
            created_at=now,  # the app's clock, like expires_at: one clock for every comparison here
        )
    )
    _audit(conn, "login.code_requested", identifier, station, user.id, outcome="issued")
    # Send to what the account holds, not to what was typed (they match, up to case and spacing).
    destination = user.email if identifier.kind == "email" else identifier.value
    return Issued(user_id=user.id, channel=identifier.kind, destination=destination, code=code)


def verify_code(
    conn: Connection,
    *,
    identifier: Identifier,
    code: str,
    pin: str | None,
    station: Principal,
    now: datetime,
    session_ttl: timedelta,
    pin_grace: timedelta,
) -> SignedIn | None:
    """A session on `station`, or None for every failure (the caller answers one uniform 401).

    Failures are written here (tries, the account's count, the lock) and must be committed by the
    caller even though it refuses the request."""
    user, refusal = _account(conn, identifier, station)
    if user is None:
        spend_hash_time()
        _audit(conn, "login.verify_failed", identifier, station, None, reason=refusal)
        return None
    failures = user.failed_attempts
    if user.locked_until is not None:
        if user.locked_until > now:
            # Checked before the code: during the lock no guess is tried, so none can be learned.
            spend_hash_time()
            _audit(conn, "login.verify_failed", identifier, station, user.id, reason="locked")
            return None
        failures = 0  # the lock was served: a fresh count (the update below clears locked_until)

    live = conn.execute(
        select(login_codes)
        .where(
            login_codes.c.user_id == user.id, login_codes.c.used_at.is_(None), login_codes.c.expires_at > now
        )
        .order_by(login_codes.c.created_at.desc())
        .limit(1)
        .with_for_update()
    ).first()
    if live is None:
        spend_hash_time()
        reason = "no_live_code"  # none requested, expired, superseded or used
    elif live.attempts >= TRIES_PER_CODE:
        spend_hash_time()
        reason = "tries_used"  # dead even if this guess is right
    elif not code_matches(code, live.code_hash):
        reason = "wrong_code"
    elif live.device_id != station.device_id:
        reason = "other_device"  # a code shown on one station does not sign in on another
    else:
        reason = None

    if live is not None:
        conn.execute(
            update(login_codes)
            .where(login_codes.c.id == live.id)
            .values(attempts=login_codes.c.attempts + 1, used_at=now if reason is None else None)
        )
    if reason is not None:
        failures += 1
        locked_until = now + LOCK_TIME if failures >= FAILURES_BEFORE_LOCK else None
        conn.execute(
            update(users)
            .where(users.c.id == user.id)
            .values(failed_attempts=failures, locked_until=locked_until)
        )
        _audit(
            conn, "login.verify_failed", identifier, station, user.id, reason=reason, failed_attempts=failures
        )
        if locked_until is not None:
            _audit(conn, "login.locked", identifier, station, user.id, until=locked_until.isoformat())
        return None

    values: dict[str, object] = {"failed_attempts": 0, "locked_until": None, "last_login": now}
    if pin is not None:
        # updated_at moves only with the PIN: it is what stations must fetch again for offline login.
        values |= {"pin_hash": hash_pin(pin), "pin_valid_until": now + pin_grace, "updated_at": now}
    conn.execute(update(users).where(users.c.id == user.id).values(**values))
    token = new_token()
    expires_at = now + session_ttl
    conn.execute(
        insert(sessions).values(
            token_hash=digest(token),
            user_id=user.id,
            device_id=station.device_id,
            expires_at=expires_at,
            created_at=now,
        )
    )
    _audit(
        conn,
        "login.verify_ok",
        identifier,
        station,
        user.id,
        session_expires_at=expires_at.isoformat(),
        pin_set=pin is not None,
    )
    return SignedIn(user=user, token=token, expires_at=expires_at)


def end_session(conn: Connection, *, token: str, who: Principal, now: datetime) -> None:
    conn.execute(
        update(sessions)
        .where(sessions.c.token_hash == digest(token), sessions.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    audit.append(conn, "login.logout", actor=who.user_id, device_id=who.device_id)


def _account(conn: Connection, identifier: Identifier, station: Principal) -> tuple[Row | None, str]:
    """The one active account the identifier names and that may sign in on this station, locked
    for the rest of the transaction; otherwise None and why (for the audit trail only)."""
    if identifier.kind == "email":
        match = func.lower(users.c.email) == identifier.value
    else:
        # Priority keeps phone numbers as people typed them: compare digits (and the leading '+').
        match = func.regexp_replace(users.c.phone, "[^0-9+]", "", "g") == identifier.value
    rows = conn.execute(select(users).where(match, users.c.is_active).limit(2).with_for_update()).all()
    if not rows:
        return None, "unknown"
    if len(rows) > 1:
        return None, "ambiguous"  # one phone number on two accounts: which one is asking is unknowable
    user = rows[0]
    # A hospital user signs in only on a station of one of their sites: the station's offline data
    # (bundle) covers its own sites, and a laptop of one hospital is no door into another's.
    if user.role not in ALL_SITE_ROLES and not set(user.sites) & station.device_sites:
        return None, "not_at_this_station"
    return user, ""


def _audit(
    conn: Connection,
    action: str,
    identifier: Identifier,
    station: Principal,
    user_id: str | None,
    **details: object,
) -> None:
    audit.append(
        conn,
        action,
        actor=user_id,
        device_id=station.device_id,
        details={"identifier": identifier.masked, "channel": identifier.kind, **details},
    )


def _raw_hash(code: str, salt: bytes) -> bytes:
    return hash_secret_raw(
        code.encode(), salt, time_cost=2, memory_cost=19_456, parallelism=1, hash_len=32, type=Type.ID
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
