"""Routes: enrolling stations and revoking them (/api/v1/devices).

An administrator issues a one-time enrolment code for a named device and its sites; hospital IT
types it on the new station, which trades it (no credential yet) for its own credential.
"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from cloud.auth.enrolment import enrol, hospitals_of, issue_code, normalise_code, revoke, unknown_sites
from cloud.db import SiteScope, scoped_transaction
from cloud.deps import AdminDep, EngineDep

router = APIRouter()

# One refusal for every reason (unknown, used, expired): the reply tells a guesser nothing.
ENROLMENT_REFUSED = (
    "The enrolment code is wrong, already used or expired; ask an administrator for a new one."
)

SiteCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("each site once")
    return values


# --- request and reply bodies
class EnrolmentCodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_name: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
        Field(examples=["OR-3 laptop"]),
    ]
    sites: Annotated[list[SiteCode], Field(min_length=1, max_length=50), AfterValidator(_distinct)]


class EnrolmentCodeReply(BaseModel):
    code: str  # shown once: the station types it at enrolment
    expires_at: datetime


class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[
        str, Field(max_length=64, examples=["7K3M-Q9TX-2HCW-ZP4R"]), AfterValidator(normalise_code)
    ]


class EnrolReply(BaseModel):
    device_id: str
    credential: str  # shown once: the station keeps it and sends it as "Authorization: Bearer <credential>"
    name: str
    sites: list[str]


class RevokeReply(BaseModel):
    device_id: str
    revoked_at: datetime


# --- routes
@router.post(
    "/enrolment-codes",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrolmentCodeReply,
    responses={403: {"description": "not an administrator"}},
)
def issue_enrolment_code(body: EnrolmentCodeRequest, who: AdminDep, engine: EngineDep) -> EnrolmentCodeReply:
    """A one-time code (24 hours) that enrols one device for the given sites."""
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        missing = unknown_sites(conn, body.sites)
        if missing:
            raise HTTPException(
                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"sites: no such site: {', '.join(missing)}",
            )
        if len(hospitals_of(conn, body.sites)) > 1:
            # A device syncs its sites in one scope: sites of two hospitals would cross the boundary.
            raise HTTPException(
                status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail="sites: a device serves the sites of one hospital only",
            )
        code, expires_at = issue_code(
            conn, admin=who, device_name=body.device_name, device_sites=body.sites, now=datetime.now(UTC)
        )
    return EnrolmentCodeReply(code=code, expires_at=expires_at)


@router.post(
    "/enrol",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrolReply,
    responses={401: {"description": ENROLMENT_REFUSED}},
)
def enrol_device(body: EnrolRequest, engine: EngineDep) -> EnrolReply:
    """Trade an enrolment code for this device's own credential (no credential needed)."""
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        enrolled = enrol(conn, code=body.code, now=datetime.now(UTC))
    if enrolled is None:
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail=ENROLMENT_REFUSED)
    return EnrolReply(
        device_id=enrolled.device_id, credential=enrolled.credential, name=enrolled.name, sites=enrolled.sites
    )


@router.post(
    "/{device_id}/revoke",
    response_model=RevokeReply,
    responses={403: {"description": "not an administrator"}, 404: {"description": "no such device"}},
)
def revoke_device(device_id: str, who: AdminDep, engine: EngineDep) -> RevokeReply:
    """End a device's credential and every session on it; revoking twice changes nothing."""
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        revoked_at = revoke(conn, device_id=device_id, admin=who, now=datetime.now(UTC))
    if revoked_at is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"No device {device_id!r}.")
    return RevokeReply(device_id=device_id, revoked_at=revoked_at)
