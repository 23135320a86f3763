"""Cloud test data: devices and signed-in users created straight in the database (test set-up only)."""

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert

from cloud.schema import devices, sessions, sites, users
from cloud.tokens import digest, new_token

HOSPITAL_A_SITES = ("A-TLV", "A-HFA")
HOSPITAL_B_SITES = ("B-JLM", "B-BSH")


def add_sites(owner: Engine) -> None:
    with owner.begin() as conn:
        conn.execute(
            insert(sites),
            [{"code": s, "name": s, "hospital": s[0]} for s in (*HOSPITAL_A_SITES, *HOSPITAL_B_SITES)],
        )


def add_device(engine: Engine, device_sites: tuple[str, ...], *, name: str = "OR laptop") -> tuple[str, str]:
    """A device with its own credential; returns (device_id, bearer token)."""
    token = new_token()
    device_id = f"st-{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(
            insert(devices).values(
                id=device_id,
                name=name,
                sites=list(device_sites),
                credential_hash=digest(token),
                enrolled_by="test",
            )
        )
    return device_id, token


def add_user(
    engine: Engine,
    *,
    role: str,
    user_sites: tuple[str, ...],
    email: str | None = None,
    phone: str | None = None,
    name: str = "Test User",
) -> str:
    user_id = f"u-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(
            insert(users).values(
                id=user_id,
                email=email or f"{user_id}@hospital.example",
                phone=phone,
                name=name,
                role=role,
                sites=list(user_sites),
                position="Nurse",
            )
        )
    return user_id


def add_session(engine: Engine, user_id: str, device_id: str) -> str:
    """A signed-in user on a device; returns the session's bearer token."""
    token = new_token()
    with engine.begin() as conn:
        conn.execute(
            insert(sessions).values(
                token_hash=digest(token),
                user_id=user_id,
                device_id=device_id,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
    return token
