"""Sync endpoints: push, pull and the validation bundle (docs/sync-protocol.md).

Every exchange is scoped to the sites of the DEVICE making it: a device credential syncs the
device's sites; a user signed in on a device syncs the sites both may see. An Alpha Tau user on a
hospital laptop therefore never pulls another hospital's patients onto that laptop.
"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response

from cloud.bundle import build_bundle
from cloud.cipher import cipher_of
from cloud.db import SiteScope
from cloud.deps import EngineDep, Principal, PrincipalDep
from cloud.pull import pull_page
from cloud.push import push_batch
from store.crypto import PatientCipher
from sync.protocol import (
    MAX_PUSH_BYTES,
    PULL_DEFAULT_LIMIT,
    PULL_MAX_LIMIT,
    Bundle,
    PullReply,
    PushEnvelope,
    PushReply,
)

router = APIRouter()

MAX_CURSOR = 2**63 - 1  # change_log.seq is a PostgreSQL bigint
JSON = "application/json"

CipherDep = Annotated[PatientCipher, Depends(cipher_of)]


def sync_scope(who: Principal) -> SiteScope:
    """The sites a sync exchange covers: the device's, narrowed to the user's when one signed in."""
    user = who.scope
    if user.all_sites:
        return SiteScope(who.device_sites)
    return SiteScope(who.device_sites & user.sites)


def _body_not_too_large(request: Request) -> None:
    # The load balancer caps bodies first; this keeps the promise when there is none.
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_PUSH_BYTES:
        raise HTTPException(
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"A push may carry at most {MAX_PUSH_BYTES} bytes; send smaller batches.",
        )


@router.post("/push", response_model=PushReply, dependencies=[Depends(_body_not_too_large)])
def push(envelope: PushEnvelope, who: PrincipalDep, engine: EngineDep, cipher: CipherDep) -> Response:
    """Apply a batch of the station's operations: one result per operation, in the order sent."""
    reply = push_batch(engine, sync_scope(who), who.device_id, envelope, cipher)
    # Serialised once by its own model (FastAPI would validate it again first: a third of the cost).
    return Response(reply.model_dump_json(), media_type=JSON)


@router.get("/pull", response_model=PullReply)
def pull(
    who: PrincipalDep,
    engine: EngineDep,
    cipher: CipherDep,
    cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
    limit: Annotated[int, Query(ge=1, le=PULL_MAX_LIMIT)] = PULL_DEFAULT_LIMIT,
) -> Response:
    """Changes with a sequence number above the cursor, oldest first."""
    # Built as JSON by cloud/pull.py (records pass through as PostgreSQL wrote them): the shape of
    # PullReply, which the OpenAPI schema states and tests/cloud/test_pull.py checks.
    body = pull_page(engine, sync_scope(who), cipher, cursor=cursor, limit=limit)
    return Response(body, media_type=JSON)


@router.get("/bundle", response_model=Bundle)
def bundle(request: Request, who: PrincipalDep, engine: EngineDep, cipher: CipherDep) -> JSONResponse:
    """The validation data for offline work at the device's sites, with its checksum."""
    days = request.app.state.settings.bundle_days
    body = build_bundle(engine, sync_scope(who), cipher, now=datetime.now(UTC), days=days)
    # Sent as built: the checksum covers exactly these bytes' JSON, not a re-serialised model.
    return JSONResponse(body)
