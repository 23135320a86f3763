"""The station's background sync: the scheduled round, "sync now", the connectivity monitor, the banner.

The UI starts one `SyncService` with the station and calls it from its pages:

- `start()` / `stop()`: an APScheduler 3.11 `AsyncIOScheduler` on the running event loop with two
  jobs: the sync round (one at a time, coalesced, a misfire grace near the interval, so a laptop
  that slept does not run a burst of rounds) and the connectivity probe;
- `sync_now()`: the "sync now" button; it waits for a round in progress and then runs its own;
- `status()` and `receipt()`: synchronous reads of the store for the banner and the per-record
  receipt (the UI calls them through `run.io_bound`).

Every round and every probe runs in a worker thread (`asyncio.to_thread`): the engine and the
store are synchronous, and the UI's event loop must never wait for SQLite or the network. A
station that is not linked to a cloud runs the same jobs; its rounds end `not_linked`.

One service per station database in a process: two schedulers on one database would run rounds
against each other, so `start()` refuses a second one (`running_service` finds the first).
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from store.station import Station
from sync.engine import Outcome, RoundReport, SyncEngine, SyncSettings
from sync.monitor import ConnectivityMonitor, Probe
from sync.status import BannerStatus, Receipt, read_banner, read_receipt

log = logging.getLogger(__name__)

SYNC_JOB = "sync-round"
MONITOR_JOB = "connectivity-probe"

T = TypeVar("T")
RoundListener = Callable[[RoundReport], None]

_running: dict[Path, "SyncService"] = {}
_running_lock = threading.Lock()


def running_service(data_dir: Path) -> "SyncService | None":
    """The service started in this process for the station database in `data_dir`, if any."""
    with _running_lock:
        return _running.get(data_dir.resolve())


class SyncService:
    def __init__(
        self,
        station: Station,
        *,
        interval_s: float = 30.0,
        settings: SyncSettings | None = None,
        monitor_interval_s: float = 10.0,
    ) -> None:
        if interval_s <= 0 or monitor_interval_s <= 0:
            raise ValueError("the sync and monitor intervals must be positive numbers of seconds")
        self.station = station
        self.interval_s = interval_s
        self.monitor_interval_s = monitor_interval_s
        self.engine = SyncEngine(station, settings=settings)
        self.monitor = ConnectivityMonitor(station)
        self.scheduler: AsyncIOScheduler | None = None
        self.last_report: RoundReport | None = None
        self._rounds: asyncio.Lock | None = None  # one round of this service at a time
        self._work: set[asyncio.Task[Any]] = set()  # rounds and probes running in worker threads
        self._listeners: list[RoundListener] = []

    # --- the scheduler --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the jobs on the running event loop; the first round and probe start at once."""
        if self.scheduler is not None:
            return
        key = self.station.data_dir.resolve()
        with _running_lock:
            other = _running.get(key)
            if other is not None and other is not self:
                raise RuntimeError(f"a sync service already runs for the station in {key}")
            _running[key] = self
        now = datetime.now(UTC)
        scheduler = AsyncIOScheduler(timezone=UTC, event_loop=asyncio.get_running_loop())
        scheduler.add_job(
            self._scheduled_round,
            IntervalTrigger(seconds=self.interval_s, timezone=UTC),
            id=SYNC_JOB,
            name="sync round",
            max_instances=1,
            coalesce=True,
            # A laptop that slept through runs one late round, not one per missed interval.
            misfire_grace_time=_grace(self.interval_s),
            next_run_time=now,
        )
        scheduler.add_job(
            self._scheduled_probe,
            IntervalTrigger(seconds=self.monitor_interval_s, timezone=UTC),
            id=MONITOR_JOB,
            name="connectivity probe",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=_grace(self.monitor_interval_s),
            next_run_time=now,
        )
        scheduler.start()
        self.scheduler = scheduler

    async def stop(self) -> None:
        """Stop the jobs and wait for a round in progress to finish (its work is committed or not)."""
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None:
            scheduler.pause()  # no new runs from here on
        await asyncio.gather(*self._work, return_exceptions=True)
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
            # APScheduler queues its shutdown on the loop (call_soon_threadsafe): one pass of the
            # loop runs it, so the scheduler is stopped when this method returns.
            await asyncio.sleep(0)
        with _running_lock:
            key = self.station.data_dir.resolve()
            if _running.get(key) is self:
                del _running[key]

    # --- rounds --------------------------------------------------------------------------------------
    async def sync_now(self) -> RoundReport:
        """A round now, off the event loop; a round already in progress is waited for first."""
        async with self._round_lock():
            return await self._round()

    def add_listener(self, listener: RoundListener) -> None:
        """Call `listener(report)` on the event loop after every round (e.g. to refresh the banner)."""
        self._listeners.append(listener)

    async def _scheduled_round(self) -> None:
        lock = self._round_lock()
        if lock.locked():
            return  # "sync now" is running one: this interval's work is being done
        try:
            async with lock:
                await self._round()
        except asyncio.CancelledError:
            log.debug("scheduled sync round abandoned at shutdown (the round itself ran to its end)")

    async def _round(self) -> RoundReport:
        report = await self._off_loop(self.engine.run_round)
        if report.outcome is not Outcome.BUSY:
            self.monitor.note_round(report)
            self.last_report = report
        for listener in list(self._listeners):
            try:
                listener(report)
            except Exception:
                log.exception("a sync round listener failed")
        return report

    async def _scheduled_probe(self) -> None:
        try:
            await self._off_loop(self.monitor.check)
        except asyncio.CancelledError:
            log.debug("connectivity probe abandoned at shutdown")

    async def check_connectivity(self) -> Probe:
        """Probe the cloud now (the monitor job does this every `monitor_interval_s`)."""
        return await self._off_loop(self.monitor.check)

    # --- what the pages read -------------------------------------------------------------------------
    def status(self) -> BannerStatus:
        """The banner's data from the store (blocking: call it through `run.io_bound`)."""
        return read_banner(self.station, self.monitor.connectivity(), detail=self.monitor.detail())

    def receipt(self, table: str, record_id: str) -> Receipt:
        """One record's receipt (blocking: call it through `run.io_bound`)."""
        return read_receipt(self.station, table, record_id)

    # --- plumbing ------------------------------------------------------------------------------------
    def _round_lock(self) -> asyncio.Lock:
        if self._rounds is None:
            self._rounds = asyncio.Lock()
        return self._rounds

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """Run `work` in a worker thread; shielded, so a cancelled caller never abandons it half-way
        (stop() waits for it before the station's database is closed)."""
        task = asyncio.ensure_future(asyncio.to_thread(work))
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        return await asyncio.shield(task)


def _grace(interval_s: float) -> int:
    return max(1, round(interval_s))
