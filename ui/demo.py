"""The demo (`python run.py`): fake Priority, the cloud and a station on loopback, in one process.

1. Fake Priority (cloud/priority/fake.py) serves generated fixtures around today.
2. The cloud runs on the machine's PostgreSQL (127.0.0.1:5432, trust auth): the `dart_demo`
   database is created when missing and migrated (the migrations create the `dart_app` service
   role, as in the tests); the cloud refreshes its copy of Priority once before anything else.
3. The station (`data/demo/station`) is enrolled with a code the demo issues itself as its own
   administrator, through the same route hospital IT uses (sync/enrol.py), and synced once: the
   hospital's sites, users, the week's orders and the inventory are on it before the page opens.
4. The station's pages start as `run.py station` starts them (ui.station_app), on 127.0.0.1, and
   sync in the background (the station's start-up runs sync.service); login codes go to
   `data/demo/codes.jsonl` and are printed on the console.

Everything is configured by environment variables with local defaults (`DemoConfig.from_env`), so
tests run the demo on free ports, in a temporary directory and a database of their own.
"""

import json
import os
import shutil
import socket
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from psycopg import sql
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url

from cloud.auth import mask
from cloud.auth.enrolment import issue_code
from cloud.cipher import load_cipher
from cloud.config import CloudSettings
from cloud.db import SiteScope, make_engine, scoped_transaction
from cloud.deps import Principal
from cloud.migrate import upgrade
from cloud.priority.adapter import PriorityClient
from cloud.priority.fake import DEFAULT_PASSWORD, SERVICE_ROOT, create_fake_priority
from cloud.priority.fixtures import build_fixtures
from cloud.priority.refresh import refresh
from cloud.schema import devices, users
from cloud.tokens import digest
from store import remote
from store.engine import read_transaction
from store.models import User
from store.station import Station, open_station
from sync.engine import Outcome, SyncEngine
from sync.enrol import EnrolmentError, enrol_station

DEMO_ADMIN_ID = "demo-admin"
DEMO_SITES = ("H1-TLV", "H1-RMG")  # Central Medical Center (fake Priority's first hospital)
APP_ROLE = "dart_app"


class DemoUnavailable(Exception):
    """Something the demo needs is missing; the message says what and how to fix it."""


@dataclass(frozen=True)
class DemoConfig:
    data_dir: Path
    station_port: int
    cloud_port: int
    priority_port: int
    pg_server_url: str  # the PostgreSQL server, as its superuser (creates and migrates the database)
    database: str

    @classmethod
    def from_env(cls) -> "DemoConfig":
        env = os.environ
        return cls(
            data_dir=Path(env.get("DART_DEMO_DIR", "data/demo")),
            station_port=int(env.get("DART_STATION_PORT", "8080")),
            cloud_port=int(env.get("DART_CLOUD_PORT", "8090")),
            priority_port=int(env.get("DART_PRIORITY_PORT", "8091")),
            pg_server_url=env.get("DART_DEMO_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"),
            database=env.get("DART_DEMO_DATABASE", "dart_demo"),
        )

    @property
    def station_dir(self) -> Path:
        return self.data_dir / "station"

    @property
    def codes_file(self) -> Path:
        return self.data_dir / "codes.jsonl"


def run_demo(config: DemoConfig | None = None) -> int:
    """Start everything, serve the station's pages until interrupted, stop everything."""
    from nicegui import app, ui

    from ui.station_app import register_station

    config = config or DemoConfig.from_env()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    backend = Backend(config)
    try:
        backend.start()
        station_lines = prepare_station(config, backend)
    except (DemoUnavailable, EnrolmentError) as exc:
        backend.stop()
        print(f"The demo cannot start: {exc}", file=sys.stderr)
        return 2
    _print_welcome(config, backend, station_lines)

    # The station's own start-up opens the database, finds the link made above and starts its
    # background sync (sync.service.SyncService), exactly as `run.py station` does.
    register_station(config.station_dir)
    app.on_shutdown(backend.stop)
    # The station serves one local kiosk browser: never listen beyond loopback.
    with suppress(KeyboardInterrupt):  # Ctrl+C is how the demo ends; uvicorn re-raises it after shutdown
        ui.run(host="127.0.0.1", port=config.station_port, title="DaRT demo", reload=False, show=False)
    return 0


# --- the cloud and fake Priority --------------------------------------------------------------------
class Backend:
    """Fake Priority and the cloud, each a uvicorn server in a thread of this process."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.priority_url = f"http://127.0.0.1:{config.priority_port}"
        self.cloud_url = f"http://127.0.0.1:{config.cloud_port}"
        self.owner_url, self.app_url = database_urls(config.pg_server_url, config.database)
        self.engine: Engine | None = None  # the service role's, as the cloud uses it
        self._servers: list[ThreadServer] = []
        self._codes = CodePrinter(config.codes_file)

    def start(self) -> None:
        _require_free(self.config.priority_port, "fake Priority", "DART_PRIORITY_PORT")
        _require_free(self.config.cloud_port, "the cloud", "DART_CLOUD_PORT")
        _require_free(self.config.station_port, "the station", "DART_STATION_PORT")
        today = datetime.now(UTC).date()
        self._serve(create_fake_priority(build_fixtures(today)), self.config.priority_port)
        create_database(self.config.pg_server_url, self.config.database)
        upgrade(self.owner_url)
        self.engine = make_engine(self.app_url, pool_size=4)
        settings = CloudSettings(
            database_url=self.app_url,
            priority_url=self.priority_url + SERVICE_ROOT,
            priority_password=DEFAULT_PASSWORD,
            code_sender=f"file:{self.config.codes_file.resolve()}",
            data_key_file=self.config.data_dir / "cloud" / "data.key",
        )
        self._refresh_priority(settings, today)
        from cloud.app import create_app

        self._serve(create_app(settings, engine=self.engine, run_jobs=True), self.config.cloud_port)
        self._codes.start()

    def stop(self) -> None:
        self._codes.stop()
        for server in reversed(self._servers):
            server.stop()
        running = bool(self._servers)
        self._servers.clear()
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        if running:
            print("Demo stopped: the cloud and fake Priority are shut down.", flush=True)

    def enrolment_code(self, sites: tuple[str, ...]) -> str:
        """A one-time code from the demo's own administrator (as POST /devices/enrolment-codes does)."""
        assert self.engine is not None
        admin = Principal(
            device_id="demo-console", device_sites=frozenset(), user_id=DEMO_ADMIN_ID, role="admin"
        )
        with scoped_transaction(self.engine, SiteScope.everything()) as conn:
            conn.execute(
                pg_insert(users)
                .values(
                    id=DEMO_ADMIN_ID,
                    email="admin@demo.alphatau.example",
                    name="Demo Administrator",
                    position="Administrator",
                    role="admin",
                    sites=[],
                    source="demo",
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
            code, _expires = issue_code(
                conn,
                admin=admin,
                device_name="Demo OR laptop",
                device_sites=list(sites),
                now=datetime.now(UTC),
            )
        return code

    def holds_credential(self, device_id: str, credential: str) -> bool:
        """Whether the cloud knows this device, not revoked, with this credential."""
        assert self.engine is not None
        with scoped_transaction(self.engine, SiteScope.everything()) as conn:
            row = conn.execute(
                select(devices.c.credential_hash, devices.c.revoked_at).where(devices.c.id == device_id)
            ).first()
        return row is not None and row.revoked_at is None and row.credential_hash == digest(credential)

    def _refresh_priority(self, settings: CloudSettings, today: Any) -> None:
        assert self.engine is not None and settings.priority_url is not None
        with PriorityClient(
            settings.priority_url, username=settings.priority_user, password=settings.priority_password
        ) as client:
            report = refresh(self.engine, client, load_cipher(settings.data_key_file), today=today)
        if not report.ok:
            raise DemoUnavailable(f"the cloud could not read fake Priority: {report.error}")

    def _serve(self, asgi_app: Any, port: int) -> None:
        server = ThreadServer(asgi_app, port)
        server.start()
        self._servers.append(server)


def database_urls(server_url: str, database: str) -> tuple[str, str]:
    """The owner's URL (migrations) and the service role's (requests) of the demo database."""
    owner = make_url(server_url).set(database=database)
    service = owner.set(username=APP_ROLE, password=None)
    return owner.render_as_string(hide_password=False), service.render_as_string(hide_password=False)


def create_database(server_url: str, database: str) -> None:
    maintenance = make_url(server_url).set(drivername="postgresql", database="postgres")
    try:
        with psycopg.connect(
            maintenance.render_as_string(hide_password=False), autocommit=True, connect_timeout=3
        ) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.OperationalError as exc:
        raise DemoUnavailable(
            f"PostgreSQL is not reachable at {make_url(server_url).render_as_string()} ({exc}). The demo "
            "needs the local PostgreSQL server (docs/operations.md, 'The demo'): start it, or point "
            "DART_DEMO_PG_URL at one."
        ) from exc


class ThreadServer(uvicorn.Server):
    """A uvicorn server in a daemon thread; `start` returns once it listens."""

    def __init__(self, asgi_app: Any, port: int) -> None:
        super().__init__(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning"))
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self.run, name=f"demo-server-{port}", daemon=True)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()

    def install_signal_handlers(self) -> None:  # the station's server in the main thread owns them
        pass

    def start(self, timeout_s: float = 60) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        # A server that cannot bind ends its thread without ever listening: do not wait for it.
        while not self.listening.wait(0.2):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DemoUnavailable(f"a demo server did not start on port {self.config.port}")

    def stop(self, timeout_s: float = 20) -> None:
        self.should_exit = True
        self._thread.join(timeout_s)


def _require_free(port: int, what: str, variable: str) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoUnavailable(
                f"port {port} for {what} is taken ({exc.strerror}); stop what uses it or set {variable}"
            ) from exc


# --- the station -------------------------------------------------------------------------------------
def prepare_station(config: DemoConfig, backend: Backend) -> list[str]:
    """Enrol the demo station (unless it already holds a working credential) and sync it once.

    Returns the lines that tell who may sign in."""
    station = open_station(config.station_dir)
    try:
        if not _linked_to(station, backend):
            try:
                enrolled = enrol_station(station, backend.cloud_url, backend.enrolment_code(DEMO_SITES))
            except EnrolmentError:
                # Unconfirmed changes of an earlier demo cloud: keep them aside, start a new station.
                station.close()
                kept = _set_aside(config.station_dir)
                print(f"The previous demo station could not be enrolled again; it was kept in {kept}.")
                station = open_station(config.station_dir)
                enrolled = enrol_station(station, backend.cloud_url, backend.enrolment_code(DEMO_SITES))
            print(f"Demo station enrolled as device {enrolled.device_id} for {', '.join(enrolled.sites)}.")
        report = SyncEngine(station).run_round()
        if report.outcome is not Outcome.OK:
            raise DemoUnavailable(f"the station's first sync ended {report.outcome.value}: {report.error}")
        print(
            f"Demo station synced: validation data {report.bundle or 'already current'}, "
            f"{report.pulled} change(s) received, {report.sent} sent."
        )
        return _sign_in_lines(station)
    finally:
        station.close()


def _linked_to(station: Station, backend: Backend) -> bool:
    state = remote.load_state(station)
    return (
        state.linked
        and state.cloud_url == backend.cloud_url
        and state.cloud_device_id == station.device_id
        and state.credential is not None
        and backend.holds_credential(station.device_id, state.credential)
    )


def _set_aside(directory: Path) -> Path:
    target = directory.with_name(f"{directory.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}")
    shutil.move(directory, target)
    return target


def _sign_in_lines(station: Station, limit: int = 8) -> list[str]:
    table = User.__table__
    with read_transaction(station.engine) as conn:
        rows = conn.execute(
            select(table.c.name, table.c.email, table.c.role, table.c.sites)
            .where(table.c.is_active, table.c.email.is_not(None))
            .order_by(table.c.role.desc(), table.c.name)
            .limit(limit)
        ).all()
    return [f"  {r.email:<45} {r.name:<22} {r.role:<9} {', '.join(r.sites) or 'all sites'}" for r in rows]


def _print_welcome(config: DemoConfig, backend: Backend, sign_in: list[str]) -> None:
    lines = [
        "",
        "DaRT demo",
        f"  station   http://127.0.0.1:{config.station_port}   (open this one)",
        f"  cloud     {backend.cloud_url}   (API docs at /docs)",
        f"  Priority  {backend.priority_url}{SERVICE_ROOT}   (fake; user priority, {DEFAULT_PASSWORD})",
        f"  data      {config.data_dir}   database {config.database}",
        "Sign in with one of these (the verification code is printed here and appended to "
        f"{config.codes_file}):",
        *sign_in,
        "",
    ]
    print("\n".join(lines), flush=True)


# --- login codes on the console --------------------------------------------------------------------------
class CodePrinter:
    """Prints each login code the cloud's file sender appends to the outbox, as it arrives.

    The cloud's senders are "console" or "file:"; the demo wants both, so the cloud writes the file
    (which the operator can read again later) and this thread echoes new lines to the console."""

    POLL_S = 0.5

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="demo-code-printer", daemon=True)
        self._start_at = 0

    def start(self) -> None:
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        self.outbox.touch()
        self._start_at = self.outbox.stat().st_size  # codes of earlier runs are not printed again
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _follow(self) -> None:
        with self.outbox.open(encoding="utf-8") as outbox:
            outbox.seek(self._start_at)
            pending = ""
            while not self._stop.is_set():
                chunk = outbox.readline()
                if not chunk:
                    self._stop.wait(self.POLL_S)  # a file has no "line written" event to wait on
                    continue
                pending += chunk
                if pending.endswith("\n"):
                    _print_code(pending)
                    pending = ""


def _print_code(line: str) -> None:
    with suppress(ValueError, KeyError, TypeError):
        message = json.loads(line)
        # As the cloud's console sender does: the destination masked (consoles end up in logs).
        print(f"Login code for {mask(message['destination'])}: {message['text']}", flush=True)
