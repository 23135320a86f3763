"""Signing by code on the station: the site's staff to choose from, and finalising with the signature
the cloud verified (cloud/auth/signing.py).

An Alpha Tau user (or an administrator) chooses the signer; the signer types the code the cloud sent
them; the cloud answers with the signature. The station records it through `finalise_treatment`'s
own signature path (mode `code`): the same checks, lock, sync-queue entry and audit entry as every
other signature. The requester is the treatment's `completed_by`.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from store import lookups
from store.engine import read_transaction
from store.enums import Role, SignatureMode
from store.errors import InvalidInput, NotPermitted
from store.journal import Change
from store.models import User
from store.station import Actor, Station
from store.treatments import finalise_treatment

USERS = User.__table__
SIGNING_ROLES = (Role.ALPHATAU, Role.ADMIN)


@dataclass(frozen=True)
class StaffMember:
    user_id: str
    name: str
    position: str | None


@dataclass(frozen=True)
class CodeSignature:
    """The cloud's answer to a verified signing code."""

    treatment_id: str
    site: str
    signer_id: str
    signer_name: str
    signer_position: str | None
    signed_at: datetime
    requested_by: str
    signature_id: str

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> "CodeSignature":
        return cls(
            treatment_id=str(reply["treatment_id"]),
            site=str(reply["site"]),
            signer_id=str(reply["signer_id"]),
            signer_name=str(reply["signer_name"]),
            signer_position=reply.get("signer_position"),
            signed_at=datetime.fromisoformat(str(reply["signed_at"]).replace("Z", "+00:00")),
            requested_by=str(reply["requested_by"]),
            signature_id=str(reply["signature_id"]),
        )


def site_staff(station: Station, actor: Actor, site: str) -> list[StaffMember]:
    """The hospital users of `site` in the station's validation data, by name: who may be chosen."""
    if not actor.may_access(site):
        raise NotPermitted(f"You do not work at site {site}.")
    with read_transaction(station.engine) as conn:
        rows = conn.execute(
            select(USERS.c.id, USERS.c.name, USERS.c.position, USERS.c.sites).where(
                USERS.c.is_active, USERS.c.role == Role.HOSPITAL.value
            )
        ).all()
    staff = [StaffMember(r.id, r.name, r.position) for r in rows if site in (r.sites or [])]
    return sorted(staff, key=lambda member: (member.name.casefold(), member.user_id))


def finalise_with_code(
    station: Station, actor: Actor, *, treatment_id: str, signature: CodeSignature
) -> Change:
    """Finalise `treatment_id` with the signature the cloud verified for this actor."""
    if actor.role not in SIGNING_ROLES:
        raise NotPermitted("A hospital user signs for themselves.")
    treatment = lookups.treatment(station, actor, treatment_id)
    # The cloud's answer must be for this treatment, at its site, asked for by this user: anything
    # else is not a verification of this signature.
    if (signature.treatment_id, signature.site, signature.requested_by) != (
        treatment_id,
        treatment["site"],
        actor.user_id,
    ):
        raise InvalidInput("The cloud's signature is not for this treatment and user; send a new code.")
    return finalise_treatment(
        station,
        actor,
        treatment_id=treatment_id,
        mode=SignatureMode.CODE,
        signer_name=signature.signer_name,
        signer_position=signature.signer_position,
        signer_user_id=signature.signer_id,
    )
