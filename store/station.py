"""The station as the commands see it: its database, its key, its clock, its settings, and who acts."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, insert, select

from store.clock import utcnow
from store.crypto import PatientCipher
from store.engine import make_engine, write_transaction, writer
from store.enums import Role
from store.migrate import migrate
from store.models import DeviceState

GENESIS_HASH = "0" * 64
DB_FILE = "station.db"
KEY_FILE = "data.key"


@dataclass(frozen=True)
class Settings:
    """Per-deployment rules; the defaults are domain.md's."""

    timezone: str = "UTC"  # the hospital's zone: times are shown in it and stored in UTC
    expiry_warning_days: int = 30
    group_separator: str = "\x1d"  # what the scanners send between GS1 fields (configurable per model)
    wrong_treatment_days: int = 1  # an order this close to the treatment's date is "wrong treatment"
    removal_window_days: tuple[int, int] = (13, 21)
    edit_lock_days: int = 21
    continuation_hours: int = 24
    supervisor_roles: frozenset[Role] = frozenset({Role.ALPHATAU, Role.ADMIN})

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Actor:
    """The signed-in user a command acts for."""

    user_id: str
    name: str
    role: Role
    sites: frozenset[str] = frozenset()
    position: str | None = None

    def may_access(self, site: str) -> bool:
        return self.role in (Role.ALPHATAU, Role.ADMIN) or site in self.sites


@dataclass
class Station:
    engine: Engine
    device_id: str
    cipher: PatientCipher
    data_dir: Path
    settings: Settings = field(default_factory=Settings)
    clock: Callable[[], datetime] = utcnow
    writer: Engine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.writer = writer(self.engine)

    def now(self) -> datetime:
        return self.clock()

    def local_today(self) -> date:
        return self.now().astimezone(self.settings.zone).date()

    def local_date(self, moment: datetime) -> date:
        return moment.astimezone(self.settings.zone).date()

    def days_ago(self, days: int) -> datetime:
        return self.now() - timedelta(days=days)

    def close(self) -> None:
        self.engine.dispose()


def open_station(
    data_dir: Path,
    *,
    settings: Settings | None = None,
    clock: Callable[[], datetime] = utcnow,
    key_file: Path | None = None,
) -> Station:
    """Open (creating and migrating if needed) the station's database in `data_dir`.

    The data key lives beside the database by default only for the demo; a hospital install points
    `key_file` elsewhere (docs/operations.md) so that a copied database file is useless alone.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    cipher = PatientCipher.load_or_create(key_file or data_dir / KEY_FILE)
    db_path = data_dir / DB_FILE
    migrate(db_path)
    engine = make_engine(db_path)
    device_id = _ensure_device(engine, clock())
    return Station(
        engine=engine,
        device_id=device_id,
        cipher=cipher,
        data_dir=data_dir,
        settings=settings or Settings(),
        clock=clock,
    )


def _ensure_device(engine: Engine, now: datetime) -> str:
    table = DeviceState.__table__
    with write_transaction(engine) as conn:
        device_id = conn.execute(select(table.c.device_id)).scalar()
        if device_id is None:
            device_id = f"st-{uuid.uuid4().hex[:12]}"
            conn.execute(
                insert(table).values(id=1, device_id=device_id, last_audit_hash=GENESIS_HASH, created_at=now)
            )
    return device_id
