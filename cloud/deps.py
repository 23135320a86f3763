"""Who is calling: a device (its own credential) or a user signed in on a device (a session).

Every request is authenticated with `Authorization: Bearer <token>`. Unknown, expired and
revoked tokens get the same 401, so the answer tells nothing about which tokens exist.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import Engine, select

from cloud.db import SiteScope
from cloud.schema import devices, sessions, users
from cloud.tokens import digest

ALL_SITE_ROLES = frozenset({"alphatau", "admin"})


@dataclass(frozen=True)
class Principal:
    device_id: str
    device_sites: frozenset[str]
    user_id: str | None = None
    role: str | None = None
    user_sites: frozenset[str] = frozenset()

    @property
    def scope(self) -> SiteScope:
        """A device syncs its own sites; a user sees theirs (alphatau and admin: every site)."""
        if self.user_id is None:
            return SiteScope(self.device_sites)
        if self.role in ALL_SITE_ROLES:
            return SiteScope.everything()
        return SiteScope(self.user_sites)


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(engine_of)]


def _unauthorised() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="Sign in again: the credential is missing, expired or revoked.",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorised()
    return token.strip()


def principal(request: Request, engine: EngineDep) -> Principal:
    token_hash = digest(_bearer(request))
    now = datetime.now(UTC)
    # Read-only look-ups, each one statement: autocommit spares the BEGIN and ROLLBACK round trips
    # that every request would otherwise pay before its real work.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        device = conn.execute(
            select(devices.c.id, devices.c.sites).where(
                devices.c.credential_hash == token_hash, devices.c.revoked_at.is_(None)
            )
        ).first()
        if device is not None:
            return Principal(device_id=device.id, device_sites=frozenset(device.sites))
        row = conn.execute(
            select(
                sessions.c.device_id,
                users.c.id,
                users.c.role,
                users.c.sites,
                devices.c.sites.label("device_sites"),
            )
            .join(users, users.c.id == sessions.c.user_id)
            .join(devices, devices.c.id == sessions.c.device_id)
            .where(
                sessions.c.token_hash == token_hash,
                sessions.c.revoked_at.is_(None),
                sessions.c.expires_at > now,
                users.c.is_active,
                devices.c.revoked_at.is_(None),
            )
        ).first()
    if row is None:
        raise _unauthorised()
    return Principal(
        device_id=row.device_id,
        device_sites=frozenset(row.device_sites),
        user_id=row.id,
        role=row.role,
        user_sites=frozenset(row.sites),
    )


PrincipalDep = Annotated[Principal, Depends(principal)]


def require_admin(who: PrincipalDep) -> Principal:
    if who.role != "admin":
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="Only an administrator may do this."
        )
    return who


AdminDep = Annotated[Principal, Depends(require_admin)]
