"""Routes: online login with a one-time code, on an enrolled station (/api/v1/auth).

request-code and verify take the station's own device credential: a login happens on an enrolled
station, and the session it creates is bound to that station. A user's session cannot start
another login, so a stolen session token cannot be turned into sessions for other people.
"""

import itertools
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request, Response, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from cloud import audit
from cloud.auth import Identifier
from cloud.auth.codes import Issued, end_session, message_text, request_code, verify_code
from cloud.auth.senders import sender_for
from cloud.config import CloudSettings
from cloud.db import SiteScope, scoped_transaction
from cloud.deps import EngineDep, Principal, PrincipalDep

log = logging.getLogger(__name__)
router = APIRouter()

# One reply for every request, known account or not, locked or not: the reply must not tell a
# caller which identifiers belong to somebody.
CODE_REQUESTED = "If this e-mail address or phone number belongs to an account, a code is on its way."
# One refusal for every failed verification (wrong, expired, used, superseded, too many tries,
# unknown account, locked account). Why a locked account is not named, not even after a correct
# code: "locked" would tell a stranger that the account exists and is being attacked; and if a
# correct code during the lock got a different answer, the lock would become an oracle that keeps
# confirming guesses, the very thing it exists to stop. The person who is locked out waits the lock
# out (15 minutes) or asks an administrator; the station can say so beside this message.
CODE_REFUSED = "The code is wrong or has expired."


def station(who: PrincipalDep) -> Principal:
    if who.user_id is not None:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="Sign-in runs on the station's own device credential, not on a user's session.",
        )
    return who


StationDep = Annotated[Principal, Depends(station)]


def session_holder(who: PrincipalDep) -> Principal:
    if who.user_id is None:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="Only a user's session can be signed out."
        )
    return who


SessionDep = Annotated[Principal, Depends(session_holder)]


# --- request and reply bodies
def _identifier(raw: str) -> str:
    Identifier.parse(raw)  # raises ValueError with a sentence for the person
    return raw.strip()


IdentifierText = Annotated[
    str,
    Field(max_length=254, examples=["dana@hospital.example", "+972501234567"]),
    AfterValidator(_identifier),
]


class CodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identifier: IdentifierText


class CodeRequested(BaseModel):
    detail: str


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt "pin" must not silently set no PIN
    identifier: IdentifierText
    code: Annotated[str, Field(max_length=16, examples=["042917"])]
    pin: Annotated[str | None, Field(max_length=16, description="the offline PIN to set, 4-8 digits")] = None

    @field_validator("code")
    @classmethod
    def _six_digits(cls, code: str) -> str:
        code = code.replace(" ", "")  # "042 917", as some messages group it
        if len(code) != 6 or not code.isascii() or not code.isdigit():
            raise ValueError("the code is the 6 digits of the message")
        return code

    @field_validator("pin")
    @classmethod
    def _usable_pin(cls, pin: str | None) -> str | None:
        if pin is None:
            return None
        if not 4 <= len(pin) <= 8 or not pin.isascii() or not pin.isdigit():
            raise ValueError("the PIN is 4 to 8 digits")
        # The PIN guards clinical data offline: refuse the ones guessed first (1111, 1234, 4321).
        steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
        if steps in ({0}, {1}, {-1}):
            raise ValueError("choose a PIN that is not one digit repeated or a run like 1234")
        return pin


class SessionUser(BaseModel):
    id: str
    name: str
    role: str
    sites: list[str]
    position: str | None


class SessionReply(BaseModel):
    session_token: str  # shown once; send it as "Authorization: Bearer <token>"
    expires_at: datetime
    user: SessionUser


# --- routes
@router.post(
    "/request-code",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CodeRequested,
    responses={403: {"description": "not a station's device credential"}},
)
def request_login_code(
    body: CodeRequest, who: StationDep, engine: EngineDep, request: Request, tasks: BackgroundTasks
) -> CodeRequested:
    """Send a one-time code to the account's e-mail or phone; the same reply for every identifier."""
    identifier = Identifier.parse(body.identifier)
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        issued = request_code(conn, identifier=identifier, station=who, now=datetime.now(UTC))
    if issued is not None:
        # After the reply: a gateway's latency would otherwise tell known accounts from unknown ones.
        tasks.add_task(_send, request.app.state, issued, who.device_id)
    return CodeRequested(detail=CODE_REQUESTED)


@router.post("/verify", response_model=SessionReply, responses={401: {"description": CODE_REFUSED}})
def verify(body: VerifyRequest, who: StationDep, engine: EngineDep, request: Request) -> SessionReply:
    """Trade the code for a session on this station; optionally set the offline PIN."""
    settings = request.app.state.settings
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        signed_in = verify_code(
            conn,
            identifier=Identifier.parse(body.identifier),
            code=body.code,
            pin=body.pin,
            station=who,
            now=datetime.now(UTC),
            session_ttl=timedelta(hours=settings.session_hours),
            pin_grace=_pin_grace(settings),
        )
    # Raised only now: the failure (tries, the account's count, the lock) is committed first.
    if signed_in is None:
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail=CODE_REFUSED)
    user = signed_in.user
    return SessionReply(
        session_token=signed_in.token,
        expires_at=signed_in.expires_at,
        user=SessionUser(
            id=user.id, name=user.name, role=user.role, sites=list(user.sites), position=user.position
        ),
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(who: SessionDep, engine: EngineDep, request: Request) -> Response:
    """End this session (the station keeps its own credential)."""
    token = request.headers["authorization"].partition(" ")[2].strip()  # checked by `principal`
    with scoped_transaction(engine, SiteScope.everything()) as conn:
        end_session(conn, token=token, who=who, now=datetime.now(UTC))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- helpers
def _send(state: Any, issued: Issued, device_id: str) -> None:
    """Hand the code to the configured gateway, and audit whether it took it."""
    details = {"identifier": Identifier(issued.channel, issued.destination).masked, "channel": issued.channel}
    try:
        sender_for(state.settings.code_sender).send(
            issued.channel, issued.destination, message_text(issued.code)
        )
    except Exception as exc:  # any gateway failure: audited and logged, never shown to the caller
        log.warning("login code to %s not sent: %s", details["identifier"], exc)
        audit.append_alone(
            state.engine,
            "login.code_send_failed",
            actor=issued.user_id,
            device_id=device_id,
            details={**details, "error": type(exc).__name__},
        )
        return
    audit.append_alone(
        state.engine, "login.code_sent", actor=issued.user_id, device_id=device_id, details=details
    )


def _pin_grace(settings: CloudSettings) -> timedelta:
    return timedelta(days=settings.pin_grace_days)
