"""Sync fixtures: the real cloud over HTTP on loopback and real stations (laptops) linked to it.

The stations' clock stands at the real time (frozen; tests move it), because the engine measures
its offset to the cloud's real clock and a clock hours off is "skewed" (invariant 8): "latest
wins" would then be held for a person. The validation data is this week's, built around today.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from store import remote
from store.enums import ApplicatorStatus, SignatureMode
from store.scanning import Confirmation, scan_applicator
from store.station import Station, open_station
from store.treatments import finalise_treatment, start_insertion
from store.validation_cache import bundle_checksum, install_bundle
from sync.engine import RoundReport, SyncEngine, SyncSettings
from tests.cloud import test_push as shared
from tests.cloud.conftest import app_engine, cloud_db, owner_engine  # noqa: F401  (fixtures by name)
from tests.cloud.test_push import Cloud, Device
from tests.utils.data import NURSE, ORDERS, SECOND_SITE, SITE, TODAY, FakeClock, make_bundle
from tests.utils.flows import PATHS, move

S = ApplicatorStatus
STATION_SITES = (SITE, SECOND_SITE)

cloud = shared.cloud  # the push tests' fixture: the app over HTTP with its own data key, sites added


@pytest.fixture
def clock() -> FakeClock:
    """Every laptop's clock: the real time now, moved only by the test."""
    return FakeClock(now=datetime.now(UTC).replace(microsecond=0))


def bundle_for(today: date, *, version: str = "b-1") -> dict[str, Any]:
    """tests.utils.data's bundle with its orders moved to the week around `today`."""
    bundle = make_bundle(datetime.combine(today, datetime.min.time(), UTC), version=version)
    for order in bundle["schedule"]:
        order["day"] = (date.fromisoformat(order["day"]) - TODAY + today).isoformat()
    bundle["checksum"] = bundle_checksum(bundle)
    return bundle


@dataclass
class Laptop:
    """A station linked to the cloud, with its sync engine."""

    station: Station
    engine: SyncEngine
    device: Device

    def sync(self) -> RoundReport:
        report = self.engine.run_round()
        assert report.outcome == "ok", report.error
        return report

    def insertion(self, order: str = "SO2611001") -> str:
        day = self.station.local_today() + timedelta(days=ORDERS[order][2])
        change = start_insertion(
            self.station, NURSE, site=SITE, day=day, surgeon="Dr. Gold", order_names=[order]
        )
        return change.record["id"]

    def scan(
        self, treatment_id: str, serial: str, confirmed: frozenset[Confirmation] = frozenset()
    ) -> dict[str, Any]:
        result = scan_applicator(
            self.station, NURSE, treatment_id=treatment_id, raw=serial, confirmed=confirmed
        )
        assert result.saved and result.applicator is not None, result.message
        return result.applicator

    def finalise(self, treatment_id: str) -> None:
        finalise_treatment(self.station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)

    def rows(self, table: Any, *where: Any) -> list[dict[str, Any]]:
        with self.station.engine.connect() as conn:
            query = select(table).where(*where).order_by(*table.primary_key.columns)
            return [dict(r) for r in conn.execute(query).mappings()]

    @property
    def state(self) -> remote.SyncStatus:
        return remote.load_state(self.station)


LaptopFactory = Callable[..., Laptop]


@pytest.fixture
def laptops(tmp_path: Path, cloud: Cloud, clock: FakeClock) -> Iterator[LaptopFactory]:
    """Make laptops: each a station in its own directory, enrolled in the cloud and linked to it."""
    made: list[Station] = []

    def make(
        name: str = "a",
        *,
        sites: tuple[str, ...] = STATION_SITES,
        settings: SyncSettings | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> Laptop:
        station = open_station(tmp_path / f"laptop-{name}", clock=clock)
        made.append(station)
        install_bundle(station, bundle_for(station.local_today()))
        device = cloud.enrol(station.device_id, sites)
        remote.link_cloud(station, cloud_url=cloud.url, credential=device.token, device_id=station.device_id)
        engine = SyncEngine(station, settings=settings, transport=transport)
        return Laptop(station, engine, device)

    yield make
    for station in made:
        station.close()


def walk(laptop: Laptop, applicator_id: str, status: ApplicatorStatus, *, deployed: int = 3) -> None:
    """Move an applicator along the loaded workflow to `status` (tests.utils.flows.move)."""
    move(laptop.station, applicator_id, PATHS["loaded"][status], deployed=deployed)
