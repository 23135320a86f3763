"""The connectivity monitor: is the cloud there, slow, or failing? What the banner says about the network.

A probe is one cheap request (`GET /health`, no credential) with a short timeout, so an operating
room without network costs two seconds in a worker thread, never a hung page. What it tells:

- `online`: the cloud answered in time and says it is healthy;
- `degraded`: it answered, but slowly, with a server error, or saying its database is unwell; or
  the last sync round failed although the cloud was reachable (a refused credential, an error);
- `offline`: no answer (no route, refused, timed out);
- `not_linked`: no cloud or credential configured on this station (or a credential of another
  device: the round says so, and the station must be enrolled again);
- `unknown`: linked, but neither a probe nor a round has finished since the station started.

The rounds feed the monitor too (`note_round`): whichever observation is newest speaks, except that a
round that failed while the cloud was reachable keeps the banner at `degraded` until a round succeeds.
"""

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import httpx

from store import remote
from store.station import Station
from sync.engine import Outcome, RoundReport

log = logging.getLogger(__name__)

PROBE_PATH = "/health"
PROBE_TIMEOUT_S = 2.0
SLOW_MS = 1000.0  # an answer slower than this is "degraded": rounds will crawl
# Rounds that ended with the cloud answering but the exchange failing.
FAILED_WHILE_REACHABLE = frozenset({Outcome.FAILED, Outcome.REFUSED, Outcome.UNAUTHORISED, Outcome.OUTDATED})


ROUND_WORDS = {
    Outcome.OK: "the last sync round completed",
    Outcome.OFFLINE: "the last sync round found no cloud",
}


class Connectivity(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DEGRADED = "degraded"
    NOT_LINKED = "not_linked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Probe:
    connectivity: Connectivity
    checked_at: datetime  # the station's clock, UTC
    latency_ms: float | None  # None: no answer
    detail: str  # in words, for the banner's tooltip and the log


class ConnectivityMonitor:
    """Probes the linked cloud and remembers what the probes and the rounds saw (thread-safe)."""

    def __init__(
        self,
        station: Station,
        *,
        timeout_s: float = PROBE_TIMEOUT_S,
        slow_ms: float = SLOW_MS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.station = station
        self.timeout_s = timeout_s
        self.slow_ms = slow_ms
        self._transport = transport
        self._lock = threading.Lock()
        self._seq = 0  # orders observations without trusting the station's clock
        self._probe: tuple[int, Probe] | None = None
        self._round: tuple[int, Outcome] | None = None
        # What the last round said that the next probe cannot overrule: sync does not work although
        # the cloud answers (DEGRADED), or the credential is another device's (NOT_LINKED).
        self._held: tuple[Connectivity, str] | None = None
        self._last_success_at: datetime | None = None

    # --- observations -----------------------------------------------------------------------------
    def check(self) -> Probe:
        """Probe the cloud now (blocking, at most about `timeout_s`): call it from a worker thread."""
        state = remote.load_state(self.station)
        if not state.linked or state.cloud_url is None:
            probe = Probe(Connectivity.NOT_LINKED, self.station.now(), None, "no cloud is linked")
        else:
            probe = self._probe_url(state.cloud_url)
        with self._lock:
            self._seq += 1
            self._probe = (self._seq, probe)
        if probe.connectivity in (Connectivity.OFFLINE, Connectivity.DEGRADED):
            log.warning("cloud %s: %s", probe.connectivity.value, probe.detail)
        return probe

    def note_round(self, report: RoundReport) -> None:
        """What a finished round says about the connection (a BUSY round says nothing)."""
        if report.outcome is Outcome.BUSY:
            return
        with self._lock:
            self._seq += 1
            self._round = (self._seq, report.outcome)
            reason = f"the last sync round ended {report.outcome.value}: {report.error}"
            if report.outcome is Outcome.OK:
                self._held = None
                self._last_success_at = report.finished_at or report.started_at
            elif report.outcome in FAILED_WHILE_REACHABLE:
                self._held = (Connectivity.DEGRADED, reason)
            elif report.outcome is Outcome.NOT_LINKED:
                self._held = (Connectivity.NOT_LINKED, reason)

    # --- what the banner shows ------------------------------------------------------------------
    @property
    def last_probe(self) -> Probe | None:
        with self._lock:
            return self._probe[1] if self._probe else None

    @property
    def last_success_at(self) -> datetime | None:
        """The last successful round seen by this monitor (the store keeps it across restarts)."""
        with self._lock:
            return self._last_success_at

    @property
    def held_reason(self) -> str | None:
        """Why the banner stays degraded or not linked until a round succeeds (None: nothing held)."""
        with self._lock:
            return self._held[1] if self._held else None

    def detail(self) -> str | None:
        """What stands behind `connectivity()`, in words (None: nothing observed yet)."""
        with self._lock:
            held, probe, round_ = self._held, self._probe, self._round
        if held is not None:
            return held[1]
        if round_ is not None and (probe is None or round_[0] > probe[0]):
            return ROUND_WORDS.get(round_[1], f"the last sync round ended {round_[1].value}")
        return probe[1].detail if probe else None

    def connectivity(self) -> Connectivity:
        with self._lock:
            probe, round_, held = self._probe, self._round, self._held
        newest_probe_seq = probe[0] if probe else -1
        newest_round_seq = round_[0] if round_ else -1
        if round_ is not None and newest_round_seq > newest_probe_seq:
            newest = _from_round(round_[1])
        elif probe is not None:
            newest = probe[1].connectivity
        else:
            newest = Connectivity.UNKNOWN
        if held is None or newest in (Connectivity.OFFLINE, Connectivity.NOT_LINKED):
            return newest
        return held[0]  # the cloud answers, yet sync does not work: until a round succeeds

    # --- the probe ----------------------------------------------------------------------------------
    def _probe_url(self, cloud_url: str) -> Probe:
        started = time.perf_counter()
        try:
            with httpx.Client(
                base_url=cloud_url.rstrip("/"), timeout=self.timeout_s, transport=self._transport
            ) as client:
                response = client.get(PROBE_PATH)
        except httpx.TransportError as exc:  # timeouts included
            return Probe(
                Connectivity.OFFLINE,
                self.station.now(),
                None,
                f"no answer from {cloud_url} ({type(exc).__name__})",
            )
        latency_ms = (time.perf_counter() - started) * 1000
        connectivity, detail = _judge(response, latency_ms, self.slow_ms)
        return Probe(connectivity, self.station.now(), latency_ms, detail)


def _judge(response: httpx.Response, latency_ms: float, slow_ms: float) -> tuple[Connectivity, str]:
    if response.status_code >= 500:
        return Connectivity.DEGRADED, f"the cloud answered {response.status_code}"
    if response.status_code != 200:
        return Connectivity.DEGRADED, f"the cloud's health check answered {response.status_code}"
    try:
        health = response.json()
    except ValueError:
        return Connectivity.DEGRADED, "the cloud's health check did not answer JSON"
    if not isinstance(health, dict) or health.get("status") != "ok":
        return Connectivity.DEGRADED, f"the cloud reports itself unwell: {health!r}"[:300]
    if latency_ms > slow_ms:
        return Connectivity.DEGRADED, f"the cloud answered slowly ({latency_ms:.0f} ms)"
    return Connectivity.ONLINE, f"the cloud answered in {latency_ms:.0f} ms"


def _from_round(outcome: Outcome) -> Connectivity:
    if outcome is Outcome.OK:
        return Connectivity.ONLINE
    if outcome is Outcome.OFFLINE:
        return Connectivity.OFFLINE
    if outcome is Outcome.NOT_LINKED:
        return Connectivity.NOT_LINKED
    return Connectivity.DEGRADED
