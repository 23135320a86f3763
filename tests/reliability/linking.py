"""A real station for the reliability tests: its own directory, the real clock, its orders, enrolled
in the cloud and linked to it (or to a proxy in front of it)."""

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from store import remote
from store.station import Station, open_station
from store.validation_cache import install_bundle
from sync.engine import SyncSettings
from tests.cloud.test_push import Cloud, Device
from tests.reliability.workload import Plan, bundle

# The cloud of these tests has no bundle of its own worth installing: keep the one installed here.
QUIET_BUNDLE = timedelta(days=365)
ORDERS_PER_STATION = 200


def linked_station(
    data_dir: Path, cloud: Cloud, plan: Plan, *, url: str | None = None
) -> tuple[Station, Device]:
    """A station on the real clock (the engine measures its offset to the cloud's real one) with
    the orders and stock of `plan`, enrolled at the cloud and linked to `url` (default: the cloud)."""
    station = open_station(data_dir)
    orders = range(plan.first_order, plan.first_order + ORDERS_PER_STATION)
    install_bundle(station, bundle(station.local_today(), orders, plan))
    device = cloud.enrol(station.device_id)
    remote.link_cloud(
        station, cloud_url=url or cloud.url, credential=device.token, device_id=station.device_id
    )
    return station, device


def settings(**overrides: Any) -> SyncSettings:
    return replace(SyncSettings(bundle_interval=QUIET_BUNDLE), **overrides)
