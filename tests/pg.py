"""PostgreSQL for tests: a fresh, uniquely named database per test, dropped afterwards.

The cloud runs on PostgreSQL and the migrations must run there too, so the tests use the machine's
real server (style.md: `pg_ctl` refuses root, CI runs as root, so the running cluster is used).
Every test gets its own database: tests never see each other's rows and may run in any order.

Off CI an unreachable server skips the test (a laptop without PostgreSQL can still run the suite);
on CI (`CI=true`) it fails, because a silently skipped safety test is a test that does not exist.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import psycopg
import pytest
from psycopg import sql

SERVER_URL = os.environ.get("DART_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
DATABASE_PREFIX = "dart_test_"
CONNECT_TIMEOUT_S = 3


def _libpq_url(database: str) -> str:
    # psycopg speaks plain libpq URLs; SQLAlchemy wants the "+psycopg" driver name.
    return f"{SERVER_URL.replace('postgresql+psycopg://', 'postgresql://', 1)}/{database}"


def _maintenance_connection() -> psycopg.Connection:
    # CREATE/DROP DATABASE cannot run inside a transaction block, hence autocommit.
    return psycopg.connect(_libpq_url("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def require_postgres() -> None:
    """Skip (or, on CI, fail) the calling test when the server cannot be reached."""
    try:
        with _maintenance_connection() as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {SERVER_URL} is not reachable: {exc}".strip()
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: PostgreSQL tests must run on CI)", pytrace=False)
        pytest.skip(message)


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create `dart_test_<uuid>`, yield its SQLAlchemy URL, then drop that database and only that one."""
    require_postgres()
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex}"
    with _maintenance_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{SERVER_URL}/{name}"
    finally:
        drop_database(name)


def drop_database(name: str) -> None:
    """Drop one test database, first ending any connection a test left open (a leaked pool would
    otherwise make DROP DATABASE fail and leave the database behind)."""
    if not name.startswith(DATABASE_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    with _maintenance_connection() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def database_exists(name: str) -> bool:
    with _maintenance_connection() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The SQLAlchemy URL of an empty database that exists for this test only."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """For tests that need several fresh databases: each call makes one; all are dropped at teardown."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(fresh_database())
