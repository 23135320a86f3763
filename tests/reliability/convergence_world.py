"""The world of the convergence test: one real cloud (PostgreSQL, HTTP on loopback) for the whole
run, two hospitals, and stations made fresh for every example, each behind its own partition proxy
and with its own skewable wall clock.

Hospital A has two sites; its stations A1 and A2 sync both (they share every treatment). Hospital B
has one site and one station, B1 (a device serves one hospital: it must never see A's records).
The cloud's clinical tables are emptied between examples by the owner role, so every example
starts from nothing while the database and the server (the slow parts) are made once.
"""

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, insert, select, text

from cloud.app import create_app
from cloud.cipher import load_cipher, open_record
from cloud.config import CloudSettings
from cloud.db import make_engine
from cloud.migrate import upgrade
from cloud.schema import devices, priority_applicators, sites, users
from cloud.tokens import digest, new_token
from store import remote
from store.crypto import PatientCipher
from store.enums import Role
from store.migrate import migrate
from store.station import DB_FILE, Actor, Station, open_station
from store.validation_cache import bundle_checksum, install_bundle
from sync.wire import TABLES, local_record, typed_record
from tests.cloud.conftest import service_url
from tests.pg import fresh_database
from tests.reliability.convergence_proxy import PartitionProxy
from tests.utils.servers import serve

HOSPITAL_A = ("CA-TLV", "CA-HFA")
HOSPITAL_B = ("CB-JLM",)
ALL_SITES = (*HOSPITAL_A, *HOSPITAL_B)

NURSE_A = Actor("u-conv-nurse-a", "Dana Shapiro", Role.HOSPITAL, frozenset(HOSPITAL_A), "Nurse")
NURSE_B = Actor("u-conv-nurse-b", "Rina Levi", Role.HOSPITAL, frozenset(HOSPITAL_B), "Nurse")

# name -> (sites it syncs, who works there)
STATIONS: dict[str, tuple[tuple[str, ...], Actor]] = {
    "A1": (HOSPITAL_A, NURSE_A),
    "A2": (HOSPITAL_A, NURSE_A),
    "B1": (HOSPITAL_B, NURSE_B),
}
# A few serials per site, so that two stations offline do pick the same one (invariant 9).
SERIALS_PER_SITE = 5
CLINICAL_TABLES = ("treatments", "applicators", "applicator_packages", "removed_seeds")
# Emptied between examples (clinical data and everything derived from it); sites, users, devices
# and Priority's inventory stay.
PER_EXAMPLE_TABLES = (
    *CLINICAL_TABLES,
    "change_log",
    "op_ledger",
    "conflicts",
    "incidents",
    "writeback_queue",
)


def serials(site: str) -> list[str]:
    return [f"{site}-APP-{i:02d}" for i in range(SERIALS_PER_SITE)]


def capacity(serial: str) -> int:
    return 10 if int(serial[-2:]) % 2 == 0 else 20


def inventory() -> list[dict[str, Any]]:
    """Site stock on no order (what an emergency insertion uses), as Priority reports it."""
    return [
        {
            "serial": serial,
            "order_name": None,
            "site": site,
            "catalogue_number": f"DART-{capacity(serial)}",
            "applicator_type": "Pancreas applicator",
            "seeds": capacity(serial),
            "seed_length": 10.0,
            "expiry": None,
            "lot": "L1",
            "usage": None,
        }
        for site in ALL_SITES
        for serial in serials(site)
    ]


# --- time ----------------------------------------------------------------------------------------
@dataclass
class WorldTime:
    """The true time of an example: starts at the real time, moves one second per step, so that
    the stations' hybrid clocks are the same from run to run (a red run replays)."""

    now: datetime

    def step(self) -> None:
        self.now += timedelta(milliseconds=1000)


@dataclass
class SkewedClock:
    """A station's wall clock: the true time plus whatever this laptop's clock is off by."""

    world: WorldTime
    skew: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return self.world.now + self.skew


# --- the cloud -----------------------------------------------------------------------------------
@dataclass
class CloudWorld:
    url: str
    owner: Engine
    cipher: PatientCipher

    def reset(self) -> None:
        """Empty the clinical tables (owner role): the next example starts from nothing."""
        with self.owner.begin() as conn:
            for table in PER_EXAMPLE_TABLES:  # a few rows each: DELETE is faster than TRUNCATE here
                conn.execute(text(f"DELETE FROM {table}"))

    def enrol(self, device_id: str, device_sites: tuple[str, ...]) -> str:
        token = new_token()
        with self.owner.begin() as conn:
            conn.execute(
                insert(devices).values(
                    id=device_id,
                    name="OR laptop",
                    sites=list(device_sites),
                    credential_hash=digest(token),
                    enrolled_by="convergence test",
                )
            )
        return token

    def records(self, table_name: str) -> dict[str, dict[str, dict[str, Any]]]:
        """The cloud's merged records by site, as typed wire records (patient fields opened)."""
        table = _cloud_table(table_name)
        found: dict[str, dict[str, dict[str, Any]]] = {site: {} for site in ALL_SITES}
        with self.owner.connect() as conn:
            for r in conn.execute(select(table.c.site, table.c.id, table.c.data)):
                found.setdefault(r.site, {})[r.id] = typed_record(
                    table_name, open_record(r.data, self.cipher)
                )
        return found

    def all(self, query: Any) -> list[Any]:
        with self.owner.connect() as conn:
            return list(conn.execute(query))


def _cloud_table(name: str) -> Any:
    from cloud.push import TABLES as CLOUD_TABLES

    return CLOUD_TABLES[name]


@contextmanager
def running_cloud(work_dir: Path) -> Iterator[CloudWorld]:
    """A migrated database, the sites, users and Priority inventory, and the app over HTTP."""
    with fresh_database() as owner_url:
        upgrade(owner_url)
        owner = make_engine(owner_url, pool_size=2)
        app_engine = make_engine(service_url(owner_url), pool_size=4)
        try:
            _seed(owner)
            settings = CloudSettings(
                database_url=service_url(owner_url), data_key_file=work_dir / "cloud-data.key"
            )
            with serve(create_app(settings, engine=app_engine)) as url:
                yield CloudWorld(url, owner, load_cipher(settings.data_key_file))
        finally:
            app_engine.dispose()
            owner.dispose()


def _seed(owner: Engine) -> None:
    now = datetime.now(UTC)
    with owner.begin() as conn:
        conn.execute(insert(sites), [{"code": s, "name": s, "hospital": s[1]} for s in ALL_SITES])
        conn.execute(
            insert(users),
            [
                {
                    "id": a.user_id,
                    "email": f"{a.user_id}@hospital.example",
                    "name": a.name,
                    "role": a.role.value,
                    "sites": sorted(a.sites),
                    "position": a.position,
                }
                for a in (NURSE_A, NURSE_B)
            ],
        )
        conn.execute(
            insert(priority_applicators),
            [
                {"site": i["site"], "serial": i["serial"], "order_name": None, "data": i, "refreshed_at": now}
                for i in inventory()
            ],
        )


# --- stations ------------------------------------------------------------------------------------
def station_template(work_dir: Path) -> Path:
    """A migrated, empty station database (no device yet): copied for each station, because
    migrating hundreds of fresh files would cost more than the whole test."""
    template = work_dir / "template"
    template.mkdir(parents=True, exist_ok=True)
    migrate(template / DB_FILE)
    return template


@dataclass
class Laptop:
    name: str
    station: Station
    actor: Actor
    sites: tuple[str, ...]
    clock: SkewedClock
    proxy: PartitionProxy
    device_token: str
    ops_seen: int = 0  # queue entries already read into the oracle
    rounds_ok: int = 0
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.station.close()
        self.proxy.close()

    def records(self, table_name: str) -> dict[str, dict[str, dict[str, Any]]]:
        """Every record of a clinical table by site, as typed wire records (patient fields decrypted)."""
        with self.station.engine.connect() as conn:
            sites = dict(conn.exec_driver_sql("SELECT id, site FROM treatments").all())
            rows = conn.execute(select(TABLES[table_name])).mappings().all()
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for row in rows:
            site = row["site"] if table_name == "treatments" else sites.get(row["treatment_id"])
            record = local_record(self.station.cipher, table_name, row)
            found.setdefault(str(site), {})[row["id"]] = record
        return found

    def query(self, sql: str, *params: Any) -> list[Any]:
        with self.station.engine.connect() as conn:
            return list(conn.exec_driver_sql(sql, params).all())


def make_laptop(name: str, cloud: CloudWorld, template: Path, example_dir: Path, world: WorldTime) -> Laptop:
    site_codes, actor = STATIONS[name]
    data_dir = example_dir / name
    data_dir.mkdir(parents=True)
    shutil.copy(template / DB_FILE, data_dir / DB_FILE)
    clock = SkewedClock(world)
    station = open_station(data_dir, clock=clock)
    install_bundle(station, bundle(site_codes, actor, clock()))
    token = cloud.enrol(station.device_id, site_codes)
    upstream = urlsplit(cloud.url)
    proxy = PartitionProxy(upstream.hostname or "127.0.0.1", upstream.port or 80)
    remote.link_cloud(station, cloud_url=proxy.url, credential=token, device_id=station.device_id)
    return Laptop(name, station, actor, site_codes, clock, proxy, token)


def bundle(site_codes: tuple[str, ...], actor: Actor, now: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": f"conv-{uuid.uuid4().hex[:8]}",
        "valid_until": (now + timedelta(days=7)).isoformat(),
        "users": [
            {
                "id": actor.user_id,
                "name": actor.name,
                "role": actor.role.value,
                "sites": sorted(actor.sites),
                "position": actor.position,
            }
        ],
        "schedule": [],
        "inventory": [i for i in inventory() if i["site"] in site_codes],
    }
    body["checksum"] = bundle_checksum(body)
    return body
