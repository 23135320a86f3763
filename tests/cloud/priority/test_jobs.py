"""The cloud's background jobs: refresh and write-back, one instance each, coalesced."""

from pathlib import Path

import pytest
from sqlalchemy import Engine

from cloud.config import CloudSettings
from cloud.jobs import start_jobs
from cloud.priority.fake import DEFAULT_PASSWORD, SERVICE_ROOT, create_fake_priority
from cloud.priority.fixtures import build_fixtures
from cloud.priority.refresh import last_success
from tests.cloud.conftest import CloudDatabase
from tests.utils.data import TODAY
from tests.utils.servers import serve

pytestmark = pytest.mark.postgres


def test_jobs_refresh_priority_and_never_pile_up(
    cloud_db: CloudDatabase, app_engine: Engine, tmp_path: Path
) -> None:
    with serve(create_fake_priority(build_fixtures(TODAY))) as url:
        settings = CloudSettings(
            database_url=cloud_db.app_url,
            priority_url=url + SERVICE_ROOT,
            priority_password=DEFAULT_PASSWORD,
            data_key_file=tmp_path / "k",
        )
        scheduler = start_jobs(app_engine, settings)
        assert scheduler is not None
        try:
            jobs = scheduler.get_jobs()
            assert len(jobs) == 2 and all(j.max_instances == 1 and j.coalesce for j in jobs)
            scheduler.pause()
            refresh_job = next(j for j in jobs if j.func.__name__ == "refresh_job")
            refresh_job.func()  # what the scheduler runs, here on the test's thread
            assert last_success(app_engine) is not None
        finally:
            scheduler.shutdown(wait=True)


def test_no_priority_configured_means_no_jobs(cloud_db: CloudDatabase, app_engine: Engine) -> None:
    assert start_jobs(app_engine, CloudSettings(database_url=cloud_db.app_url)) is None
