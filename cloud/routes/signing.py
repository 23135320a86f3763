"""Routes: signing a treatment by code (/api/v1/signing-codes).

An Alpha Tau user (or an administrator), signed in on a station, chooses the signer from the site's
staff; the cloud sends the signer a code; the signer types it on that station, which sends it here
and gets back the signature to record (cloud/auth/signing.py has the rules).
"""

import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from cloud import audit
from cloud.auth import mask
from cloud.auth.senders import sender_for
from cloud.auth.signing import (
    SigningIssued,
    SigningRefused,
    WrongCode,
    request_signing_code,
    verify_signing_code,
)
from cloud.db import scoped_transaction
from cloud.deps import ALL_SITE_ROLES, EngineDep, Principal, PrincipalDep

log = logging.getLogger(__name__)
router = APIRouter()


def signing_requester(who: PrincipalDep) -> Principal:
    """An alphatau or admin user's session: the roles that may choose a signer (domain.md, Roles)."""
    if who.user_id is None:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="Signing codes are sent for a signed-in Alpha Tau user, not for a station's credential.",
        )
    if who.role not in ALL_SITE_ROLES:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="A hospital user signs for themselves; only an Alpha Tau user or an administrator "
            "chooses a signer and sends a signing code.",
        )
    return who


RequesterDep = Annotated[Principal, Depends(signing_requester)]

Key = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=36)]
SiteCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


# --- request and reply bodies
class SigningCodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: Annotated[SiteCode, Field(examples=["TLV-1"])]
    treatment_id: Annotated[Key, Field(examples=["0b6f3c52-7d1e-4a8e-9a4b-3f0e2d1c9b8a"])]
    signer_id: Annotated[UserId, Field(description="a hospital user of the site's staff")]


class SigningCodeSent(BaseModel):
    detail: str
    destination: str  # masked: enough for the people in the room to recognise
    channel: str
    expires_at: datetime


class SigningCodeVerify(BaseModel):
    model_config = ConfigDict(extra="forbid")
    treatment_id: Key
    code: Annotated[str, Field(max_length=16, examples=["042917"])]

    @field_validator("code")
    @classmethod
    def _six_digits(cls, code: str) -> str:
        code = code.replace(" ", "")
        if len(code) != 6 or not code.isascii() or not code.isdigit():
            raise ValueError("the signing code is the 6 digits of the message")
        return code


class SignatureReply(BaseModel):
    treatment_id: str
    site: str
    signer_id: str
    signer_name: str
    signer_position: str | None
    signed_at: datetime
    requested_by: str  # the Alpha Tau user (or administrator) who chose the signer
    requested_by_name: str
    signature_id: str  # the signing code's row: the cloud's record of this signature


class CodeRefused(BaseModel):
    """A code that did not sign: why in words, and how many tries are left (0: send a new code)."""

    detail: str
    tries_left: int | None = None


# --- routes
@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SigningCodeSent,
    responses={503: {"model": CodeRefused, "description": "the gateway did not take the message"}},
)
def send_signing_code(
    body: SigningCodeRequest, who: RequesterDep, engine: EngineDep, request: Request
) -> SigningCodeSent | JSONResponse:
    """Send the chosen signer a code that signs this treatment (1 hour, 3 tries); voids the earlier one."""
    try:
        with scoped_transaction(engine, who.scope) as conn:
            issued = request_signing_code(
                conn,
                who=who,
                site=body.site,
                treatment_id=body.treatment_id,
                signer_id=body.signer_id,
                now=datetime.now(UTC),
            )
    except SigningRefused as refusal:
        # Audited in a transaction of its own: the request's rolled back. Filed under no site, as
        # the site named may be none of the caller's.
        audit.append_alone(
            engine,
            "signing.code_refused",
            actor=who.user_id,
            device_id=who.device_id,
            details={
                "site": body.site,
                "treatment_id": body.treatment_id,
                "signer_id": body.signer_id,
                "status": refusal.status,
                "reason": refusal.message,
            },
        )
        raise HTTPException(status_code=refusal.status, detail=refusal.message) from None
    # Sent while the requester waits: they are in the room with the signer and must know it left.
    if not _send(request, issued, who):
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": f"The code could not be sent to {mask(issued.destination)}; try again."},
        )
    return SigningCodeSent(
        detail=f"A signing code was sent to {mask(issued.destination)}.",
        destination=mask(issued.destination),
        channel=issued.channel,
        expires_at=issued.expires_at,
    )


@router.post(
    "/verify",
    response_model=SignatureReply,
    responses={401: {"model": CodeRefused, "description": "the code did not sign"}},
)
def verify_signing(
    body: SigningCodeVerify, who: RequesterDep, engine: EngineDep
) -> SignatureReply | JSONResponse:
    """Trade the signer's code for the signature to record on the treatment."""
    with scoped_transaction(engine, who.scope) as conn:
        outcome = verify_signing_code(
            conn, who=who, treatment_id=body.treatment_id, code=body.code, now=datetime.now(UTC)
        )
    # Answered only now: a wrong code's try is committed first.
    if isinstance(outcome, WrongCode):
        return JSONResponse(
            status_code=status.HTTP_401_UNAUTHORIZED,
            content={"detail": outcome.message, "tries_left": outcome.tries_left},
        )
    return SignatureReply(
        treatment_id=outcome.treatment_id,
        site=outcome.site,
        signer_id=outcome.signer_id,
        signer_name=outcome.signer_name,
        signer_position=outcome.signer_position,
        signed_at=outcome.signed_at,
        requested_by=outcome.requested_by,
        requested_by_name=outcome.requested_by_name,
        signature_id=outcome.code_id,
    )


# --- helpers
def _send(request: Request, issued: SigningIssued, who: Principal) -> bool:
    """Hand the code to the configured gateway, and audit whether it took it."""
    state = request.app.state
    details = {
        "treatment_id": issued.treatment_id,
        "destination": mask(issued.destination),
        "channel": issued.channel,
        "code_id": issued.code_id,
    }
    try:
        sender_for(state.settings.code_sender).send(issued.channel, issued.destination, issued.text)
    except Exception as exc:  # any gateway failure: audited and logged, the requester told to retry
        log.warning("signing code to %s not sent: %s", details["destination"], exc)
        audit.append_alone(
            state.engine,
            "signing.code_send_failed",
            site=issued.site,
            actor=who.user_id,
            device_id=who.device_id,
            details={**details, "error": type(exc).__name__},
        )
        return False
    audit.append_alone(
        state.engine,
        "signing.code_sent",
        site=issued.site,
        actor=who.user_id,
        device_id=who.device_id,
        details=details,
    )
    return True
