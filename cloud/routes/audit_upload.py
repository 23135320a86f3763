"""POST /api/v1/audit: a station's audit chain, verified on arrival (cloud/station_audit.py).

Authenticated like the sync routes (cloud/deps.py): the chain is the calling DEVICE's, filed at the
device's sites, whether the device's own credential or a user's session on it makes the request.
"""

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response

from cloud.deps import EngineDep, PrincipalDep
from cloud.station_audit import ChainBroken, SiteRefused, receive
from sync.audit_protocol import MAX_AUDIT_BYTES, AuditRefusal, AuditReply, AuditUpload

router = APIRouter()


def _body_not_too_large(request: Request) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_AUDIT_BYTES:
        raise HTTPException(
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"An audit upload may carry at most {MAX_AUDIT_BYTES} bytes; send smaller batches.",
        )


@router.post(
    "",
    response_model=AuditReply,
    dependencies=[Depends(_body_not_too_large)],
    responses={
        409: {"model": AuditRefusal, "description": "the batch breaks the chain; nothing was stored"},
    },
)
def upload(batch: AuditUpload, who: PrincipalDep, engine: EngineDep) -> Response:
    """Append the device's audit entries that continue its chain; answer where the chain stands."""
    try:
        reply = receive(engine, who.device_id, who.device_sites, batch)
    except ChainBroken as broken:
        refusal = AuditRefusal(
            detail=f"{broken}. Nothing of this batch was stored; the hospital has an incident to look into.",
            device_seq=broken.device_seq,
            acknowledged_seq=broken.held_seq,
        )
        return JSONResponse(refusal.model_dump(), status_code=status.HTTP_409_CONFLICT)
    except SiteRefused as refused:
        raise HTTPException(status_code=422, detail=str(refused)) from None
    return Response(reply.model_dump_json(), media_type="application/json")
