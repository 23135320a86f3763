"""The station's HTTP client for the cloud's sync API (docs/sync-protocol.md): time, push, pull, bundle.

Synchronous on purpose: the engine runs in a worker thread (never on the UI's event loop) and its
database work is synchronous too. Every request carries the device credential as a bearer token and
has a timeout, so an operating room without network costs a few seconds, never a hung round.

Failures are sorted into what the station does next:

- `Offline`: no answer (no route, refused, timed out, a gateway's 502/503/504): try again later;
- `Unauthorised`: 401, the credential is wrong or revoked: a person must enrol the station again;
- `Refused`: any other 4xx, with the cloud's words (`ProtocolMismatch`: the station must be updated);
- `CloudFailed`: any other 5xx: the cloud's fault, try again later.
"""

from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from sync.audit_protocol import AuditReply
from sync.protocol import PROTOCOL_VERSION, PullReply, PushReply

API = "/api/v1"
CONNECT_TIMEOUT_S = 5.0
GATEWAY_STATUSES = frozenset({502, 503, 504})

Reply = TypeVar("Reply", bound=BaseModel)


class SyncError(Exception):
    """A sync exchange that did not happen; the message says why in words."""


class Offline(SyncError):
    """The cloud could not be reached (or did not answer in time)."""


class Unauthorised(SyncError):
    """The cloud refused the device credential."""


class Refused(SyncError):
    """The cloud refused the request (4xx)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"the cloud refused the request ({status_code}): {detail}")
        self.status_code = status_code
        self.detail = detail


class ProtocolMismatch(Refused):
    """The cloud does not speak this station's protocol version: the station must be updated."""


class CloudFailed(SyncError):
    """The cloud failed (5xx) or answered something that is not the protocol."""


class SyncClient:
    """One keep-alive connection to the cloud for one device (use it as a context manager)."""

    def __init__(
        self,
        base_url: str,
        credential: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {credential}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            transport=transport,
        )

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the four exchanges ----------------------------------------------------------------------
    def server_time(self) -> datetime:
        body = self._json("GET", f"{API}/time")
        try:
            moment = datetime.fromisoformat(str(body["server_time"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CloudFailed(f"the cloud's time is not readable: {body!r}") from exc
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)

    def push(self, ops: list[dict[str, Any]], *, device_seq_high: int | None = None) -> PushReply:
        body = {"protocol": PROTOCOL_VERSION, "device_seq_high": device_seq_high, "ops": ops}
        reply = self._parsed(PushReply, "POST", f"{API}/sync/push", content=orjson.dumps(body))
        if len(reply.results) != len(ops):
            raise CloudFailed(f"the cloud answered {len(reply.results)} results for {len(ops)} operations")
        return reply

    def pull(self, cursor: int, limit: int) -> PullReply:
        return self._parsed(PullReply, "GET", f"{API}/sync/pull", params={"cursor": cursor, "limit": limit})

    def bundle(self) -> dict[str, Any]:
        """The bundle exactly as received: its checksum is verified on this JSON, not on a model."""
        body = self._json("GET", f"{API}/sync/bundle")
        if not isinstance(body, dict):
            raise CloudFailed("the validation bundle is not a JSON object")
        return body

    def upload_audit(self, body: bytes) -> AuditReply:
        """POST /api/v1/audit with an encoded AuditUpload (sync/audit_upload.py builds it)."""
        return self._parsed(AuditReply, "POST", f"{API}/audit", content=body)

    # --- plumbing ------------------------------------------------------------------------------
    def _parsed(self, model: type[Reply], method: str, path: str, **kwargs: Any) -> Reply:
        response = self._send(method, path, **kwargs)
        try:
            reply = model.model_validate_json(response.content)
        except ValidationError as exc:
            raise CloudFailed(
                f"the cloud's answer to {path} is not protocol {PROTOCOL_VERSION}: {exc}"
            ) from exc
        protocol = getattr(reply, "protocol", PROTOCOL_VERSION)
        if protocol != PROTOCOL_VERSION:
            raise ProtocolMismatch(200, f"the cloud answered in protocol {protocol}")
        return reply

    def _json(self, method: str, path: str) -> Any:
        response = self._send(method, path)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise CloudFailed(f"the cloud's answer to {path} is not JSON") from exc

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if "content" in kwargs:
            kwargs["headers"] = {"Content-Type": "application/json"}
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise Offline(f"the cloud did not answer {path} in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise Offline(f"the cloud cannot be reached ({type(exc).__name__}: {exc})") from exc
        _raise_for_status(response)
        return response


def _raise_for_status(response: httpx.Response) -> None:
    code = response.status_code
    if code < 400:
        return
    detail = _detail(response)
    if code == 401:
        raise Unauthorised(f"the cloud refused this station's credential: {detail}")
    if code in GATEWAY_STATUSES:
        raise Offline(f"the cloud is unavailable ({code}): {detail}")
    if code >= 500:
        raise CloudFailed(f"the cloud failed ({code}): {detail}")
    if code == 422 and "is not spoken by this cloud" in detail:
        raise ProtocolMismatch(code, detail)
    raise Refused(code, detail)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.text[:500] or response.reason_phrase
