"""The cloud's background jobs: the Priority refresh and the write-back queue.

APScheduler 3.11 in a background thread (the jobs call Priority over blocking HTTP); one instance
of each job at a time, coalesced, so a slow Priority never piles runs up. In a deployment with
several workers, one worker runs them (DART_RUN_JOBS=1); the write-back is safe to run twice anyway
(SKIP LOCKED), and so is the refresh (one transaction).
"""

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from cloud.cipher import load_cipher
from cloud.config import CloudSettings
from cloud.priority.adapter import PriorityClient
from cloud.priority.refresh import refresh
from cloud.priority.writeback import send_due

log = logging.getLogger(__name__)

REFRESH_MINUTES = 10
WRITEBACK_SECONDS = 60


def start_jobs(engine: Engine, settings: CloudSettings) -> BackgroundScheduler | None:
    if not settings.priority_url:
        log.warning("PRIORITY_URL is not set: no Priority refresh and no write-back")
        return None
    client = PriorityClient(
        settings.priority_url, username=settings.priority_user, password=settings.priority_password
    )
    cipher = load_cipher(settings.data_key_file)

    def refresh_job() -> None:
        report = refresh(engine, client, cipher, today=datetime.now(UTC).date())
        if not report.ok:
            log.warning("Priority refresh failed; serving the last copy: %s", report.error)

    def writeback_job() -> None:
        report = send_due(engine, client)
        if report.failed:
            log.warning("%d write-back(s) to Priority failed; they will be retried", report.failed)

    scheduler = BackgroundScheduler(timezone=UTC)
    common = {"max_instances": 1, "coalesce": True}
    scheduler.add_job(
        refresh_job,
        "interval",
        minutes=REFRESH_MINUTES,
        next_run_time=datetime.now(UTC),
        misfire_grace_time=REFRESH_MINUTES * 60,
        **common,
    )
    scheduler.add_job(
        writeback_job, "interval", seconds=WRITEBACK_SECONDS, misfire_grace_time=WRITEBACK_SECONDS, **common
    )
    scheduler.start()
    return scheduler
