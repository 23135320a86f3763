"""The SQLite engine: durability pragmas on every pooled connection, explicit transactions.

Invariant 1 (a confirmed save survives kill -9 and power loss) rests on WAL with
synchronous=FULL; invariant 2 rests on every command being one transaction. The pragmas are set in
a `connect` listener because a pragma set once on one connection does not reach the next one the
pool opens (style.md).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

BUSY_TIMEOUT_MS = 5000
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
)


def make_engine(path: Path | str, *, pool_size: int = 5) -> Engine:
    """An engine on the station's database file with the durability pragmas on every connection."""
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False},
        pool_size=pool_size,
        max_overflow=5,
        pool_pre_ping=False,
    )
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)
    return engine


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module so that we decide how each one begins.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _on_begin(connection: Connection) -> None:
    # Writers take the write lock at BEGIN: two writers that both began deferred and then try to
    # upgrade deadlock and one gets SQLITE_BUSY at once, which the busy timeout cannot cure.
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    # Straight to the driver: this runs once per transaction, on the scan path.
    connection.connection.driver_connection.execute(f"BEGIN {mode}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One atomic write: everything inside commits together or not at all."""
    with writer(engine).begin() as conn:
        yield conn


def writer(engine: Engine) -> Engine:
    """A view of `engine` (same pool) whose transactions begin IMMEDIATE; keep it, it is not free."""
    return engine.execution_options(sqlite_begin="IMMEDIATE")


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A consistent snapshot for reading (WAL readers never wait for the writer)."""
    with engine.connect() as conn, conn.begin():
        yield conn


def pragma_values(conn: Connection) -> dict[str, Any]:
    """The durability settings as this connection sees them (for checks and health pages)."""
    return {
        name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
        for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
    }
