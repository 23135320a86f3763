"""SyncService: the scheduler's jobs, "sync now", rounds off the event loop, a clean stop, one per station.

Rounds run against the real cloud (HTTP on loopback, PostgreSQL). Nothing waits on time: a test waits
for a round's report (a listener's future), and a round is held in its worker thread by an event
when a test needs one in progress.
"""

import asyncio
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select

from cloud.schema import applicators as cloud_applicators
from cloud.schema import treatments as cloud_treatments
from store.station import Station
from sync.engine import Outcome, RoundReport
from sync.monitor import Connectivity
from sync.service import MONITOR_JOB, SYNC_JOB, SyncService, running_service
from sync.status import Receipt
from tests.cloud.test_push import Cloud
from tests.sync.conftest import LaptopFactory

pytestmark = pytest.mark.postgres

WAIT_S = 60  # an upper bound for a round on a loaded machine, never a pause


def next_report(service: SyncService) -> "asyncio.Future[RoundReport]":
    """A future for the report of the next round the service finishes."""
    future: asyncio.Future[RoundReport] = asyncio.get_running_loop().create_future()
    service.add_listener(lambda report: future.done() or future.set_result(report))
    return future


class HeldRounds:
    """Wraps the service's engine: the first round waits in its worker thread until released."""

    def __init__(self, service: SyncService) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[int] = []
        self.finished: list[Outcome] = []
        original: Callable[[], RoundReport] = service.engine.run_round

        def run_round() -> RoundReport:
            self.threads.append(threading.get_ident())
            if len(self.threads) == 1:
                self.entered.set()
                assert self.release.wait(WAIT_S), "the test never released the round"
            report = original()
            self.finished.append(report.outcome)
            return report

        service.engine.run_round = run_round  # type: ignore[method-assign]


async def test_the_jobs_run_one_at_a_time_coalesced_with_a_grace_near_the_interval(
    fresh_station: Station,
) -> None:
    service = SyncService(fresh_station, interval_s=45, monitor_interval_s=7)
    await service.start()
    try:
        scheduler = service.scheduler
        assert isinstance(scheduler, AsyncIOScheduler) and scheduler.running
        jobs = {job.id: job for job in scheduler.get_jobs()}
        sync_job, monitor_job = jobs[SYNC_JOB], jobs[MONITOR_JOB]
        assert (sync_job.max_instances, sync_job.coalesce, sync_job.misfire_grace_time) == (1, True, 45)
        assert sync_job.trigger.interval == timedelta(seconds=45)
        assert (monitor_job.max_instances, monitor_job.coalesce, monitor_job.misfire_grace_time) == (
            1,
            True,
            7,
        )
        assert monitor_job.trigger.interval == timedelta(seconds=7)
        assert running_service(fresh_station.data_dir) is service
    finally:
        await service.stop()
    assert service.scheduler is None and not scheduler.running
    assert running_service(fresh_station.data_dir) is None


async def test_a_scheduled_round_and_sync_now_both_complete_and_reach_the_cloud(
    laptops: LaptopFactory, cloud: Cloud
) -> None:
    a = laptops("a")
    treatment = a.insertion()
    service = SyncService(a.station, interval_s=3600)  # its first round runs at start, then hourly
    scheduled = next_report(service)
    await service.start()
    try:
        first = await asyncio.wait_for(scheduled, WAIT_S)
        assert (first.outcome, first.sent) == (Outcome.OK, 1)
        assert [r.id for r in cloud.rows(select(cloud_treatments.c.id))] == [treatment]

        applicator = a.scan(treatment, "DART-9000-00000")
        assert service.receipt("applicators", applicator["id"]) is Receipt.SAVED_HERE
        pressed = await service.sync_now()

        assert (pressed.outcome, pressed.sent) == (Outcome.OK, 1) and service.last_report is pressed
        assert [r.id for r in cloud.rows(select(cloud_applicators.c.id))] == [applicator["id"]]
        assert await asyncio.to_thread(service.receipt, "applicators", applicator["id"]) is Receipt.CONFIRMED
        probe = await service.check_connectivity()
        status = await asyncio.to_thread(service.status)
        assert probe.connectivity is Connectivity.ONLINE and status.connectivity is Connectivity.ONLINE
        assert status.connectivity_detail == probe.detail and probe.detail.startswith("the cloud answered")
        assert status.waiting_total == 0 and status.last_success_at == pressed.started_at
    finally:
        await service.stop()


async def test_rounds_run_in_worker_threads_and_sync_now_waits_for_the_round_in_progress(
    laptops: LaptopFactory,
) -> None:
    a = laptops("a")
    a.insertion()
    service = SyncService(a.station)
    held = HeldRounds(service)

    first = asyncio.create_task(service.sync_now())
    # The loop goes on while the round waits in its thread (a round on the loop would hang here).
    assert await asyncio.to_thread(held.entered.wait, WAIT_S)
    second = asyncio.create_task(service.sync_now())  # "sync now" pressed again meanwhile
    asyncio.get_running_loop().call_soon(held.release.set)
    reports = await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)

    assert [r.outcome for r in reports] == [Outcome.OK, Outcome.OK]  # the second waited: never BUSY
    assert (reports[0].sent, reports[1].sent) == (1, 0)
    assert held.finished == [Outcome.OK, Outcome.OK]
    assert threading.get_ident() not in held.threads  # never on the event loop's thread


async def test_stop_waits_for_the_round_in_progress_to_finish(laptops: LaptopFactory) -> None:
    a = laptops("a")
    a.insertion()
    service = SyncService(a.station, interval_s=3600)
    held = HeldRounds(service)
    await service.start()  # the first scheduled round starts at once and is held
    assert await asyncio.to_thread(held.entered.wait, WAIT_S)

    stopping = asyncio.create_task(service.stop())
    # Released only after stop() has begun: stop() must still wait for the round to end.
    asyncio.get_running_loop().call_soon(held.release.set)
    await asyncio.wait_for(stopping, WAIT_S)

    assert held.finished == [Outcome.OK]
    assert service.scheduler is None and running_service(a.station.data_dir) is None
    assert service.last_report is not None and service.last_report.outcome is Outcome.OK


async def test_a_station_without_a_cloud_runs_its_jobs_and_says_not_linked(fresh_station: Station) -> None:
    service = SyncService(fresh_station)
    scheduled = next_report(service)
    await service.start()
    try:
        report = await asyncio.wait_for(scheduled, WAIT_S)
        probe = await service.check_connectivity()
        status = await asyncio.to_thread(service.status)
    finally:
        await service.stop()

    assert report.outcome is Outcome.NOT_LINKED and "not linked" in (report.error or "")
    assert probe.connectivity is Connectivity.NOT_LINKED and status.connectivity is Connectivity.NOT_LINKED
    assert status.last_error == report.error


async def test_one_service_per_station_database(laptops: LaptopFactory) -> None:
    a = laptops("a")
    first, second = SyncService(a.station, interval_s=3600), SyncService(a.station, interval_s=3600)
    await first.start()
    try:
        with pytest.raises(RuntimeError, match="already runs for the station"):
            await second.start()
    finally:
        await first.stop()
    await second.start()
    try:
        assert running_service(a.station.data_dir) is second
    finally:
        await second.stop()
    with pytest.raises(ValueError, match="positive"):
        SyncService(a.station, interval_s=0)
