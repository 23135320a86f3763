"""The validation bundle: the device's sites only, in the station's format, with a checksum that a
real station verifies with the very function it installs with."""

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from cloud.schema import priority_applicators, priority_orders, users
from store.engine import read_transaction
from store.models import User
from store.station import Station
from store.treatments import start_insertion
from store.validation_cache import (
    BundleRejected,
    bundle_checksum,
    find_inventory,
    install_bundle,
    orders_for_day,
)
from tests.cloud import test_push as shared
from tests.cloud.test_push import Cloud, Device
from tests.utils.data import NURSE, OTHER_HOSPITAL_SITE, SECOND_SITE, SITE, FakeClock
from tests.utils.flows import scan

cloud = shared.cloud  # the app over HTTP with its own data key

NOW = datetime.now(UTC)
TODAY = NOW.date()


@pytest.fixture
def device(cloud: Cloud) -> Device:
    _seed(cloud)
    return cloud.enrol(device_sites=(SITE, SECOND_SITE))


def test_the_bundle_installs_on_a_real_station_and_validates_scans_offline(
    device: Device, fresh_station: Station, clock: FakeClock
) -> None:
    body = device.bundle()

    assert install_bundle(fresh_station, body) == body["version"]
    with read_transaction(fresh_station.engine) as conn:
        today = orders_for_day(conn, SITE, TODAY)
        item = find_inventory(conn, "DART-1000-00001")
        installed = {r.id: r for r in conn.execute(select(User.__table__))}
    assert [fresh_station.cipher.decrypt(o.patient_label_enc) for o in today] == ["Cohen, Miriam"]
    assert item is not None and item.seeds == 10 and item.bundle_version == body["version"]
    assert set(installed) == {"u-nurse", "u-expired", "u-alpha", "u-admin"}
    assert installed["u-nurse"].pin_hash == "$argon2id$nurse" and installed["u-nurse"].sites == [SITE]
    # The station works offline from it: today's order starts a treatment, its applicator scans valid.
    clock.now = NOW
    treatment = start_insertion(
        fresh_station, NURSE, site=SITE, day=TODAY, surgeon="Dr. Gold", order_names=["SO-1"]
    )
    assert scan(fresh_station, treatment.record["id"], "DART-1000-00001")["seed_quantity"] == 10


def test_a_damaged_bundle_is_refused_by_the_station(device: Device, fresh_station: Station) -> None:
    body = device.bundle()
    body["inventory"][0]["seeds"] = 99  # changed on the way

    with pytest.raises(BundleRejected, match="checksum"):
        install_bundle(fresh_station, body)


def test_only_the_devices_sites_and_the_coming_week(device: Device) -> None:
    body = device.bundle()

    assert body["checksum"] == bundle_checksum(body)
    assert {(o["order_name"], o["day"]) for o in body["schedule"]} == {
        ("SO-0", (TODAY - timedelta(days=1)).isoformat()),
        ("SO-1", TODAY.isoformat()),
        ("SO-6", (TODAY + timedelta(days=6)).isoformat()),
    }
    assert {i["serial"] for i in body["inventory"]} == {"DART-1000-00001", "DART-2000-00001"}
    by_id = {u["id"]: u for u in body["users"]}
    assert "u-haifa" not in by_id and "u-gone" not in by_id
    assert by_id["u-expired"]["pin_hash"] is None  # a PIN past its grace period is not sent
    valid_until = datetime.fromisoformat(body["valid_until"].replace("Z", "+00:00"))
    assert timedelta(hours=23) < valid_until - datetime.now(UTC) <= timedelta(hours=24)


def test_the_same_data_gives_the_same_version(device: Device, cloud: Cloud) -> None:
    first, second = device.bundle(), device.bundle()
    with cloud.owner.begin() as conn:
        conn.execute(priority_applicators.update().values(data={"seeds": 20, "usage": "Full use"}))
    third = device.bundle()

    assert first["version"] == second["version"] != third["version"]


def test_before_any_priority_refresh_the_bundle_is_empty_but_valid(
    cloud: Cloud, fresh_station: Station
) -> None:
    body = cloud.enrol().bundle()

    assert body["schedule"] == [] and body["inventory"] == []
    install_bundle(fresh_station, body)


# --- what the Priority refresh stores (docs/sync-protocol.md, "Bundle") --------------------------
def _seed(cloud: Cloud) -> None:
    seal = cloud.cipher.encrypt
    with cloud.owner.begin() as conn:
        conn.execute(insert(users), [_user(*u) for u in _USERS])
        conn.execute(
            insert(priority_orders),
            [
                _order("SO-0", SITE, -1, seal("Levi, Amir")),
                _order("SO-1", SITE, 0, seal("Cohen, Miriam")),
                _order("SO-6", SECOND_SITE, 6, seal("Peretz, Ruth")),
                _order("SO-7", SITE, 7, seal("Too Late")),  # beyond the week
                _order("SO-H", OTHER_HOSPITAL_SITE, 0, seal("Someone Else")),  # another hospital
            ],
        )
        conn.execute(
            insert(priority_applicators),
            [
                _applicator("DART-1000-00001", SITE, "SO-1"),
                _applicator("DART-2000-00001", SECOND_SITE, "SO-6"),
                _applicator("DART-3000-00001", OTHER_HOSPITAL_SITE, "SO-H"),
            ],
        )


_USERS: list[tuple[str, str, list[str], bool, str | None, int]] = [
    ("u-nurse", "hospital", [SITE, OTHER_HOSPITAL_SITE], True, "$argon2id$nurse", 3),
    ("u-expired", "hospital", [SECOND_SITE], True, "$argon2id$old", -1),
    ("u-haifa", "hospital", [OTHER_HOSPITAL_SITE], True, None, 0),
    ("u-gone", "hospital", [SITE], False, None, 0),
    ("u-alpha", "alphatau", [], True, None, 0),
    ("u-admin", "admin", [], True, None, 0),
]


def _user(
    user_id: str, role: str, sites: list[str], active: bool, pin: str | None, days: int
) -> dict[str, Any]:
    return {
        "id": user_id,
        "email": f"{user_id}@example.org",
        "name": user_id,
        "role": role,
        "sites": sites,
        "is_active": active,
        "pin_hash": pin,
        "pin_valid_until": NOW + timedelta(days=days) if pin else None,
    }


def _order(name: str, site: str, offset: int, label: str | None) -> dict[str, Any]:
    day: date = TODAY + timedelta(days=offset)
    data = {
        "order_name": name,
        "patient_label_enc": label,
        "site": site,
        "day": day.isoformat(),
        "indication": "pancreas",
        "seeds": 40,
        "activity_per_seed": 2.5,
        "seed_length": 10.0,
    }
    return {"site": site, "order_name": name, "day": day, "data": data, "refreshed_at": NOW}


def _applicator(serial: str, site: str, order: str) -> dict[str, Any]:
    data = {
        "serial": serial,
        "order_name": order,
        "site": site,
        "catalogue_number": "DART-PAN-10",
        "applicator_type": "Pancreas applicator",
        "seeds": 10,
        "seed_length": 10.0,
        "expiry": (TODAY + timedelta(days=200)).isoformat(),
        "lot": "L1",
        "usage": None,
    }
    return {"site": site, "serial": serial, "order_name": order, "data": data, "refreshed_at": NOW}
