"""The cloud's signing-code endpoints (cloud/routes/signing.py), called with the signed-in user's session.

Like ui/login_client.py: asynchronous, so a cloud that does not answer never holds the event loop,
and every failure comes back as words for the person. The session is the one an online login
created on this station (ui.session.BrowserSession.cloud_token): the cloud checks the user's role
and that the session belongs to this station.
"""

from typing import Any

import httpx

from store import remote
from store.signing import CodeSignature
from store.station import Station
from ui.offloop import off_loop

API = "/api/v1/signing-codes"
TIMEOUT = httpx.Timeout(15.0, connect=4.0)


class SigningProblem(Exception):
    """Why a signing code was not sent or did not sign; `tries_left` when the cloud told it."""

    def __init__(self, message: str, *, tries_left: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tries_left = tries_left


class SigningUnavailable(SigningProblem):
    """No cloud to ask: signing by code cannot happen from here now."""


async def send_signing_code(
    station: Station, session_token: str, *, site: str, treatment_id: str, signer_id: str
) -> str:
    """Ask the cloud to send the signer a code; returns its words ("A signing code was sent to ...")."""
    reply = await _post(
        station, session_token, "", {"site": site, "treatment_id": treatment_id, "signer_id": signer_id}
    )
    return str(reply["detail"])


async def verify_signing_code(
    station: Station, session_token: str, *, treatment_id: str, code: str
) -> CodeSignature:
    code = code.replace(" ", "")
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        raise SigningProblem("The signing code is the 6 digits of the message the signer received.")
    reply = await _post(station, session_token, "/verify", {"treatment_id": treatment_id, "code": code})
    return CodeSignature.from_reply(reply)


async def _post(station: Station, session_token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    state = await off_loop(remote.load_state, station)
    if not state.linked or not state.cloud_url:
        raise SigningUnavailable(
            "This station is not linked to a cloud: signing by code is not possible here."
        )
    headers = {"Authorization": f"Bearer {session_token}"}
    async with httpx.AsyncClient(base_url=state.cloud_url.rstrip("/"), timeout=TIMEOUT) as client:
        try:
            response = await client.post(f"{API}{path}", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SigningUnavailable(
                "The cloud cannot be reached from this room: signing by code needs the cloud. "
                "The hospital user can sign offline with their PIN."
            ) from exc
    if response.status_code < 400:
        return dict(response.json())
    raise _problem(response)


def _problem(response: httpx.Response) -> SigningProblem:
    status = response.status_code
    try:
        reply = response.json()
    except ValueError:
        reply = {}
    detail = reply.get("detail") if isinstance(reply, dict) else None
    if status == 401 and isinstance(reply, dict) and "tries_left" in reply:
        return SigningProblem(str(detail), tries_left=int(reply["tries_left"]))
    if status == 401:
        return SigningProblem("Your cloud session has ended: sign out, then sign in online again.")
    if status >= 500:
        return SigningUnavailable(
            str(detail) if status == 503 and detail else "The cloud failed to answer: try again shortly."
        )
    return SigningProblem(str(detail) if isinstance(detail, str) else f"The cloud refused this ({status}).")
