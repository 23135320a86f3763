"""Fixtures: a real station database file per test, with a clock the test controls."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from store.station import Station, open_station
from store.validation_cache import install_bundle
from tests.utils.data import FakeClock, make_bundle


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fresh_station(tmp_path: Path, clock: FakeClock) -> Iterator[Station]:
    """A migrated, empty station (no validation data yet)."""
    station = open_station(tmp_path / "station", clock=clock)
    yield station
    station.close()


@pytest.fixture
def station(fresh_station: Station) -> Station:
    """A station with this week's validation bundle installed."""
    install_bundle(fresh_station, make_bundle())
    return fresh_station
