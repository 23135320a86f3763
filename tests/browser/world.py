"""Everything a browser test (or benchmarks/scan_latency.py) talks to, started as it runs in a hospital.

- fake Priority (the only fake: an outside system) served by uvicorn in a thread of this process;
- the cloud as its own process, `python run.py cloud`, on a fresh PostgreSQL database, with the login
  codes going to an outbox file (the cloud's `file:` sender); it can be stopped and started again on
  the same database and port, which is what "the network went away" looks like to the station;
- the station as its own process, `python run.py station --cloud URL --enrol CODE`, enrolled with a
  code the hospital's administrator issued.

Processes get the environment without pytest's variables (NiceGUI enters its test mode when it sees
them) and write their output to a log file, whose tail goes into every failure message. NiceGUI says
"ready to go" before uvicorn binds, so readiness is a `/health` probe with a deadline.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cloud.auth.enrolment import issue_code
from cloud.cipher import load_cipher
from cloud.db import SiteScope, scoped_transaction
from cloud.deps import Principal
from cloud.priority.adapter import PriorityClient
from cloud.priority.fake import DEFAULT_PASSWORD, SERVICE_ROOT
from cloud.priority.fixtures import PriorityData
from cloud.priority.orders import PATIENT_PREFIX
from cloud.priority.refresh import refresh
from cloud.schema import users
from store.engine import read_transaction
from store.enums import CacheType, Role
from store.models import User, ValidationCacheEntry
from store.station import Actor, Station

ROOT = Path(__file__).resolve().parents[2]
HOSPITAL_SITES = ("H1-TLV", "H1-RMG")  # fake Priority's first hospital (as the demo enrols)
ADMIN_ID = "browser-admin"
START_TIMEOUT_S = 90.0  # two shared cores, several engineers: a cold Python start can take a while
CODE = re.compile(r"\b(\d{6})\b")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without pytest's variables, unbuffered, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


class Child:
    """A Python process (`python run.py ...`, `python benchmarks/...`) with its output in a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.args = args  # after `python`
        self.env = dict(env)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *self.args], cwd=ROOT, env=self.env, stdout=out, stderr=out
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM, as a service manager stops it; killed if it does not end in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no output)"

    def wait_healthy(self, url: str, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Poll `url`/health until it answers 200 (a real process's socket: a probe with a deadline)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5) as client:
            while True:
                if not self.running:
                    name = " ".join(self.args[:2])
                    raise AssertionError(f"{name} ended before it answered:\n{self.tail()}")
                try:
                    answer = client.get(f"{url}/health")
                    if answer.status_code == 200:
                        return answer.json()
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url}/health never answered; it said:\n{self.tail()}")
                time.sleep(0.2)


# --- the cloud -------------------------------------------------------------------------------------
@dataclass
class CloudConfig:
    owner_url: str  # migrations and test set-up
    app_url: str  # the service role the cloud connects as
    port: int
    key_file: Path  # patient fields are encrypted with it (the refresh and the process share it)
    outbox: Path  # login codes, one JSON line each


class Cloud:
    """`python run.py cloud` on a fixed port: stop() takes it off the network, start() brings it back."""

    def __init__(self, config: CloudConfig, log: Path) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{config.port}"
        env = child_env(
            DATABASE_URL=config.app_url,
            CODE_SENDER=f"file:{config.outbox}",
            CLOUD_DATA_KEY_FILE=str(config.key_file),
            DART_RUN_JOBS="0",  # Priority is read once by the fixture; no write-back during a test
        )
        env.pop("MIGRATION_DATABASE_URL", None)
        env.pop("PRIORITY_URL", None)
        self.child = Child(["run.py", "cloud", "--host", "127.0.0.1", "--port", str(config.port)], env, log)

    def start(self) -> None:
        self.child.start()
        self.child.wait_healthy(self.url)

    def stop(self) -> None:
        self.child.stop()

    @property
    def running(self) -> bool:
        return self.child.running


def load_priority(app_engine: Engine, priority_url: str, key_file: Path, today: date) -> None:
    """The cloud's copy of Priority (staff, orders, inventory), as its refresh job makes it."""
    with PriorityClient(
        priority_url + SERVICE_ROOT, username="priority", password=DEFAULT_PASSWORD
    ) as client:
        report = refresh(app_engine, client, load_cipher(key_file), today=today)
    if not report.ok:
        raise AssertionError(f"the cloud could not read fake Priority: {report.error}")


def enrolment_code(app_engine: Engine, sites: tuple[str, ...] = HOSPITAL_SITES) -> str:
    """A one-time code from the hospital's administrator (what POST /devices/enrolment-codes gives)."""
    admin = Principal(device_id="admin-console", device_sites=frozenset(), user_id=ADMIN_ID, role="admin")
    with scoped_transaction(app_engine, SiteScope.everything()) as conn:
        conn.execute(
            pg_insert(users)
            .values(
                id=ADMIN_ID,
                email="admin@browser.example",
                name="Test Administrator",
                position="Administrator",
                role="admin",
                sites=[],
                source="test",
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        code, _expires = issue_code(
            conn, admin=admin, device_name="OR laptop", device_sites=list(sites), now=datetime.now(UTC)
        )
    return code


def login_code(outbox: Path, destination: str) -> str:
    """The newest verification code the cloud sent to `destination` (the message a nurse reads)."""
    lines = outbox.read_text(encoding="utf-8").splitlines() if outbox.exists() else []
    for line in reversed(lines):
        message = json.loads(line)
        if message["destination"] == destination:
            found = CODE.search(message["text"])
            assert found, f"no 6-digit code in {message['text']!r}"
            return found.group(1)
    raise AssertionError(f"the cloud sent no code to {destination}; the outbox holds {len(lines)} message(s)")


# --- the station -----------------------------------------------------------------------------------
class StationProcess:
    """`python run.py station`, enrolled at its first start; `url` is what the kiosk browser opens."""

    def __init__(self, data_dir: Path, port: int, log: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.env = child_env(**env)
        self.child: Child | None = None

    def start(self, *, cloud_url: str | None = None, code: str | None = None) -> dict[str, Any]:
        args = ["run.py", "station", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        if cloud_url is not None and code is not None:
            args += ["--cloud", cloud_url, "--enrol", code]
        self.child = Child(args, self.env, self.log)
        self.child.start()
        return self.child.wait_healthy(self.url)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def tail(self) -> str:
        return self.child.tail() if self.child else "(not started)"


def wait_for_validation_data(station: Station, process: StationProcess, timeout_s: float = 60) -> None:
    """Wait until the station's first sync round installed the cloud's bundle (its users and orders).

    The round runs in the station's process; its committed rows are the only sign of it, so this polls
    the database file with a deadline."""
    cache = ValidationCacheEntry.__table__
    deadline = time.monotonic() + timeout_s
    while True:
        with read_transaction(station.engine) as conn:
            orders = conn.execute(
                select(cache.c.id).where(cache.c.cache_type == CacheType.SCHEDULE.value).limit(1)
            ).first()
            people = conn.execute(select(User.__table__.c.id).limit(1)).first()
        if orders is not None and people is not None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the station never received its validation data:\n{process.tail()}")
        time.sleep(0.3)


def station_actor(station: Station, email: str) -> Actor:
    """The clinician with this e-mail as the station knows them (from the cloud's validation data)."""
    table = User.__table__
    with read_transaction(station.engine) as conn:
        row = conn.execute(select(table).where(table.c.email == email)).first()
    assert row is not None, f"{email} is not among the station's users"
    return Actor(row.id, row.name, Role(row.role), frozenset(row.sites), row.position)


# --- fake Priority's rows, as the tests use them -----------------------------------------------------
@dataclass(frozen=True)
class Nurse:
    email: str
    name: str
    site: str  # a nurse of one site: the station fixes her site (domain.md)


@dataclass(frozen=True)
class Applicator:
    serial: str
    seeds: int
    catalogue: str
    kind: str
    lot: str
    expiry: date


@dataclass(frozen=True)
class Order:
    name: str
    site: str
    day: date
    indication: str
    patient: str  # the patient label (DETAILS) the patient bar shows
    planned_seeds: int
    activity_per_seed: float  # µCi
    applicators: tuple[Applicator, ...]


def single_site_nurse(data: PriorityData, site: str = HOSPITAL_SITES[0]) -> Nurse:
    sites: dict[str, set[str]] = {}
    for row in data.phonebook:
        sites.setdefault(row["EMAIL"], set()).add(row["CUSTNAME"])
    for row in data.phonebook:
        if row["POSITIONDES"] == "Nurse" and sites[row["EMAIL"]] == {site}:
            return Nurse(row["EMAIL"], row["NAME"], site)
    raise AssertionError(f"fake Priority has no nurse of {site} alone")


def plain_orders(data: PriorityData, site: str, days: set[date]) -> list[Order]:
    """Open orders at `site` on `days` that stand alone: one patient's only order, none of the awkward
    cases (chains, loops, combined pancreas orders), with at least three applicators whose seed count is
    known (only those are listed)."""
    referenced = {o["REFERENCE"] for o in data.orders}
    awkward = {name for names in data.cases.values() for name in names}
    rows_by_name = {o["ORDNAME"]: o for o in data.orders}
    found = []
    for o in data.orders:
        day = date.fromisoformat(o["SIBD_TREATDAY"][:10])
        if (
            o["CUSTNAME"] != site
            or day not in days
            or o["ORDSTATUSDES"] != "Open"
            or o["ORDNAME"] in referenced | awkward
            or not _is_patient_row(rows_by_name.get(o["REFERENCE"]))
            or o["SIBD_INDICATION"] not in ("pancreas", "prostate", "skin")
        ):
            continue
        # An applicator whose seed count Priority does not know is refused at the scan: not used here.
        rows = [r for r in data.applicators[o["ORDNAME"]] if r["INTDATA2"]]
        if len(rows) < 3:
            continue
        found.append(
            Order(
                name=o["ORDNAME"],
                site=site,
                day=day,
                indication=o["SIBD_INDICATION"],
                patient=o["DETAILS"],
                planned_seeds=o["SBD_SEEDQTY"],
                activity_per_seed=o["SBD_PREFACTIV"],
                applicators=tuple(_applicator(r) for r in rows),
            )
        )
    # Insertions first of the workflows with the most steps (pancreas/prostate before skin).
    return sorted(found, key=lambda o: (o.indication == "skin", o.day, o.name))


def _is_patient_row(row: dict[str, Any] | None) -> bool:
    """A patient is an ORDERS row whose REFERENCE is the patient id (cloud/priority/fixtures.py)."""
    return row is not None and str(row["REFERENCE"] or "").startswith(PATIENT_PREFIX)


def _applicator(row: dict[str, Any]) -> Applicator:
    from cloud.priority.adapter import EXPIRY_FIELD, LOT_FIELD

    return Applicator(
        serial=row["SERNUMTEXT"],
        seeds=row["INTDATA2"],
        catalogue=row["PARTNAMETEXT"],
        kind=row["PARTDESTEXT"],
        lot=row[LOT_FIELD],
        expiry=date.fromisoformat(row[EXPIRY_FIELD][:10]),
    )
