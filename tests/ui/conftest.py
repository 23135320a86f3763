"""Fixtures for the station's pages, tested through NiceGUI's simulated `User` (fast, no browser).

- `user`: a simulated browser on a real station (SQLite file in tmp_path, the repo's validation data
  with sign-in details: tests.utils.data's sites, orders and inventory), background sync off, the
  station's clock a `FakeClock` the test moves (`ui_clock`).
- `nurse`: the same, signed in as Dana Shapiro (hospital nurse at TLV-1 and TLV-2) with her PIN.
- `station`: the running app's station, for setting up records with the real store commands.
- `cloud_link` + `linked_user`: a real cloud (PostgreSQL, HTTP on loopback, login codes to an outbox
  file) that the station is enrolled in and linked to, with the background sync running.

`user_simulation` runs tests/ui/station_main.py, which builds the app like `run.py station` does.
"""

import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from nicegui.testing import User
from nicegui.testing.user_simulation import user_simulation
from sqlalchemy import Engine, insert

from cloud.schema import devices
from cloud.tokens import digest, new_token
from store import remote
from store.station import Settings, Station, open_station
from store.validation_cache import bundle_checksum, install_bundle
from tests.cloud.conftest import app_engine, cloud_db, owner_engine  # noqa: F401  (fixtures by name)
from tests.ui import harness
from tests.ui.helpers_pages import by_testid
from tests.utils.data import ALPHATAU, NOW, NURSE, TODAY, FakeClock, make_bundle
from ui import session

MAIN = Path(__file__).with_name("station_main.py")

# Who can sign in (tests.utils.data's people, with the contact details and PINs the cloud would send).
NURSE_EMAIL = "dana.shapiro@hospital.example"
NURSE_PIN = "2580"
ALPHATAU_EMAIL = "noa.alpha@alphatau.example"
ALPHATAU_PIN = "1397"
NO_PIN_EMAIL = "avi.nopin@hospital.example"  # a nurse who never chose a PIN
PIN_GRACE = timedelta(days=7)


@cache
def _pin_hash(pin: str) -> str:
    return PasswordHasher().hash(pin)  # argon2id, as cloud/auth/codes.py makes it


def login_bundle(now: datetime = NOW) -> dict[str, Any]:
    """tests.utils.data's bundle, its users with e-mail addresses and cached PIN hashes; its orders are
    moved to the week around `now` (they are around tests.utils.data's TODAY)."""
    bundle = make_bundle(now)
    for order in bundle["schedule"]:
        order["day"] = (date.fromisoformat(order["day"]) - TODAY + now.date()).isoformat()
    details = {
        NURSE.user_id: (NURSE_EMAIL, NURSE_PIN),
        ALPHATAU.user_id: (ALPHATAU_EMAIL, ALPHATAU_PIN),
    }
    for user in bundle["users"]:
        email, pin = details.get(user["id"], (f"{user['id']}@hospital.example", None))
        user["email"] = email
        if pin:
            user |= {"pin_hash": _pin_hash(pin), "pin_valid_until": (now + PIN_GRACE).isoformat()}
    bundle["users"].append(
        {
            "id": "u-nopin",
            "name": "Avi Nopin",
            "role": "hospital",
            "sites": [NURSE_SITE],
            "email": NO_PIN_EMAIL,
        }
    )
    bundle["checksum"] = bundle_checksum(bundle)
    return bundle


NURSE_SITE = sorted(NURSE.sites)[0]


# --- the station on disk ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def station_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated station with the validation data, copied for each test (migrating is the slow part)."""
    folder = tmp_path_factory.mktemp("ui-station-template") / "station"
    station = open_station(folder, clock=FakeClock())
    install_bundle(station, login_bundle())
    station.close()
    return folder


@pytest.fixture
def ui_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def station_dir(tmp_path: Path, station_template: Path) -> Path:
    target = tmp_path / "station"
    shutil.copytree(station_template, target)  # copy2 keeps data.key at 0600
    return target


# --- the simulated browser ------------------------------------------------------------------------
@asynccontextmanager
async def simulated_station(
    config: harness.StationConfig, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[User]:
    harness.CONFIG = config
    try:
        async with user_simulation(main_file=MAIN) as user:
            yield user
    finally:
        harness.CONFIG = None
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    if errors:
        pytest.fail(f"unexpected ERROR logs: {[r.getMessage() for r in errors]}", pytrace=False)


@pytest.fixture
def station_settings() -> Settings | None:
    """The station's settings (None: the defaults); a test module overrides this fixture to change them."""
    return None


@pytest.fixture
def station_sync() -> bool:
    """Whether the station runs its background sync (a test module overrides this fixture to turn it on)."""
    return False


@pytest.fixture
async def user(
    station_dir: Path,
    ui_clock: FakeClock,
    station_settings: Settings | None,
    station_sync: bool,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[User]:
    config = harness.StationConfig(station_dir, ui_clock, settings=station_settings, start_sync=station_sync)
    async with simulated_station(config, caplog) as simulated:
        yield simulated


@pytest.fixture
def station(user: User) -> Station:
    """The station the running app opened (its clock is `ui_clock`)."""
    return session.current_station()


async def sign_in_with_pin(user: User, email: str = NURSE_EMAIL, pin: str = NURSE_PIN) -> None:
    await user.open("/login")
    by_testid(user, "login-identifier").type(email)
    by_testid(user, "login-use-pin").click()
    by_testid(user, "login-pin").type(pin)
    by_testid(user, "login-pin-submit").click()


@pytest.fixture
async def nurse(user: User) -> User:
    """The simulated browser, signed in as the nurse with her PIN, on the Today page."""
    await sign_in_with_pin(user)
    await user.should_see("Dana Shapiro", retries=50)
    return user


# --- a real cloud -----------------------------------------------------------------------------------
@dataclass
class CloudLink:
    url: str
    outbox: Path  # the login codes the cloud "sends" (FileSender)
    owner: Engine
    device_id: str

    def link(self, station: Station) -> None:
        """Enrol another station (a second laptop at the nurse's sites) and link it to this cloud."""
        token = new_token()
        with self.owner.begin() as conn:
            conn.execute(
                insert(devices).values(
                    id=station.device_id,
                    name="second OR laptop",
                    sites=sorted(NURSE.sites),
                    credential_hash=digest(token),
                    enrolled_by="test",
                )
            )
        remote.link_cloud(station, cloud_url=self.url, credential=token, device_id=station.device_id)


@pytest.fixture
def real_clock() -> FakeClock:
    """A station clock at the real time (frozen): the cloud's clock is real, and an offset of hours
    would make the station's clock "unreliable" (invariant 8)."""
    return FakeClock(now=datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def cloud_link(
    station_dir: Path,
    real_clock: FakeClock,
    cloud_db: Any,  # noqa: F811
    app_engine: Engine,  # noqa: F811
    owner_engine: Engine,  # noqa: F811
    tmp_path: Path,
) -> Iterator[CloudLink]:
    """The cloud on loopback with the nurse as a user, the station enrolled in it and linked to it."""
    from cloud.app import create_app
    from cloud.config import CloudSettings
    from cloud.schema import sites, users
    from tests.utils.servers import serve

    with owner_engine.begin() as conn:
        conn.execute(insert(sites), [{"code": s, "name": s, "hospital": "A"} for s in sorted(NURSE.sites)])
        conn.execute(
            insert(users).values(
                id=NURSE.user_id,
                email=NURSE_EMAIL,
                name=NURSE.name,
                position=NURSE.position,
                role=NURSE.role.value,
                sites=sorted(NURSE.sites),
            )
        )
    station = open_station(station_dir, clock=real_clock)
    token = new_token()
    with owner_engine.begin() as conn:
        conn.execute(
            insert(devices).values(
                id=station.device_id,
                name="OR laptop",
                sites=sorted(NURSE.sites),
                credential_hash=digest(token),
                enrolled_by="test",
            )
        )
    outbox = tmp_path / f"codes-{uuid.uuid4().hex[:6]}.jsonl"
    settings = CloudSettings(
        database_url=cloud_db.app_url, code_sender=f"file:{outbox}", data_key_file=tmp_path / "cloud.key"
    )
    # This week's validation data, fetched "now": the sync engine will not replace it for an hour.
    install_bundle(station, login_bundle(real_clock.now))
    with serve(create_app(settings, engine=app_engine, run_jobs=False)) as url:
        remote.link_cloud(station, cloud_url=url, credential=token, device_id=station.device_id)
        device_id = station.device_id
        station.close()
        yield CloudLink(url, outbox, owner_engine, device_id)


@pytest.fixture
async def linked_user(
    cloud_link: CloudLink,
    station_dir: Path,
    real_clock: FakeClock,
    station_settings: Settings | None,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[User]:
    """A simulated browser on the linked station, its background sync running."""
    config = harness.StationConfig(station_dir, real_clock, settings=station_settings, start_sync=True)
    async with simulated_station(config, caplog) as simulated:
        yield simulated
