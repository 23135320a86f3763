"""Cloud fixtures: a fresh PostgreSQL database migrated by the owner, used through the service role."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine

from cloud.db import make_engine
from cloud.migrate import upgrade
from tests.pg import fresh_database


@dataclass(frozen=True)
class CloudDatabase:
    owner_url: str  # the migrations' role (owns the tables)
    app_url: str  # the service role: owns nothing, subject to row-level security


def service_url(owner_url: str, role: str = "dart_app") -> str:
    return owner_url.replace("://postgres@", f"://{role}@", 1)


@pytest.fixture
def cloud_db() -> Iterator[CloudDatabase]:
    with fresh_database() as url:
        upgrade(url)
        yield CloudDatabase(owner_url=url, app_url=service_url(url))


@pytest.fixture
def app_engine(cloud_db: CloudDatabase) -> Iterator[Engine]:
    engine = make_engine(cloud_db.app_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def owner_engine(cloud_db: CloudDatabase) -> Iterator[Engine]:
    """The owner's connection, for test set-up only (sites, devices, users)."""
    engine = make_engine(cloud_db.owner_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def cloud_url(cloud_db: CloudDatabase, app_engine: Engine) -> Iterator[str]:
    """The cloud app served over real HTTP on loopback, connected as the service role."""
    from cloud.app import create_app
    from cloud.config import CloudSettings
    from tests.utils.servers import serve

    settings = CloudSettings(database_url=cloud_db.app_url)
    with serve(create_app(settings, engine=app_engine)) as url:
        yield url
