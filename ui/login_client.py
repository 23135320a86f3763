"""The cloud's login endpoints (cloud/routes/auth.py), called with this station's device credential.

Asynchronous on purpose: the login page awaits the cloud without holding the event loop, and a cloud
that does not answer costs at most a few seconds before the page offers the PIN instead.
"""

from dataclasses import dataclass
from typing import Any

import httpx

from store import remote
from store.station import Station
from ui.offloop import off_loop

API = "/api/v1/auth"
TIMEOUT = httpx.Timeout(10.0, connect=4.0)


class LoginProblem(Exception):
    """Why an online login did not happen, in words for the person, and the field it concerns."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class CloudUnavailable(LoginProblem):
    """No cloud to ask (not linked, or no answer): the PIN or emergency access are the way in."""


@dataclass(frozen=True)
class OnlineLogin:
    session_token: str
    user: dict[str, Any]  # id, name, role, sites, position


async def request_code(station: Station, identifier: str) -> str:
    """Ask the cloud to send a code; returns the cloud's words (the same for every identifier)."""
    reply = await _post(station, "/request-code", {"identifier": identifier.strip()})
    return str(reply.get("detail") or "If this account exists, a code is on its way.")


async def verify_code(station: Station, identifier: str, code: str, pin: str | None) -> OnlineLogin:
    body: dict[str, Any] = {"identifier": identifier.strip(), "code": code.strip()}
    if pin:
        body["pin"] = pin.strip()
    reply = await _post(station, "/verify", body)
    return OnlineLogin(session_token=str(reply["session_token"]), user=dict(reply["user"]))


async def end_session(station: Station, token: str) -> None:
    """Sign the cloud session out (best effort: an unreachable cloud lets it expire by itself)."""
    state = await off_loop(remote.load_state, station)
    if not state.cloud_url:
        return
    async with httpx.AsyncClient(base_url=state.cloud_url, timeout=TIMEOUT) as client:
        try:
            await client.post(f"{API}/logout", headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError:
            return


async def _post(station: Station, path: str, body: dict[str, Any]) -> dict[str, Any]:
    state = await off_loop(remote.load_state, station)
    if not state.linked or not state.cloud_url or not state.credential:
        raise CloudUnavailable(
            "This station is not linked to a cloud yet: sign in with your PIN, or use emergency access.",
            field="identifier",
        )
    headers = {"Authorization": f"Bearer {state.credential}"}
    async with httpx.AsyncClient(base_url=state.cloud_url.rstrip("/"), timeout=TIMEOUT) as client:
        try:
            response = await client.post(f"{API}{path}", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise CloudUnavailable(
                "The cloud cannot be reached from this room: sign in with your PIN, or use emergency access.",
                field="identifier",
            ) from exc
    if response.status_code < 400:
        return dict(response.json())
    raise _problem(response)


def _problem(response: httpx.Response) -> LoginProblem:
    status = response.status_code
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if status == 401:
        text = detail if isinstance(detail, str) else "The code is wrong or has expired."
        return LoginProblem(
            f"{text} Ask for a new code if it keeps failing (after 5 wrong codes, wait 15 minutes).",
            field="code",
        )
    if status == 422 and isinstance(detail, list):
        first = detail[0] if detail else {}
        where = [str(p) for p in first.get("loc", [])]
        field = next((f for f in ("identifier", "code", "pin") if f in where), "identifier")
        message = str(first.get("msg", "This was not accepted.")).removeprefix("Value error, ")
        return LoginProblem(message[:1].upper() + message[1:] + ".", field=field)
    if status == 403:
        return LoginProblem(
            "The cloud does not accept this station's credential for sign-in; ask IT to enrol it again.",
            field="identifier",
        )
    if status == 429:
        return LoginProblem("Too many attempts: wait a few minutes, then ask for a new code.", field="code")
    if status >= 500:
        return CloudUnavailable(
            "The cloud failed to answer: sign in with your PIN, or use emergency access.", field="identifier"
        )
    return LoginProblem(str(detail or f"The cloud refused the sign-in ({status})."), field="identifier")
