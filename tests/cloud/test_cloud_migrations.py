"""The cloud's migrations on PostgreSQL: from an empty database they build exactly `cloud.schema`,
they come apart completely (only Alembic's own table stays, and the service role, which belongs to
the whole cluster, keeps no privilege in this database), and they build it all again.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text

from cloud.migrate import alembic_config, downgrade, upgrade
from cloud.schema import HOSPITAL_TABLES, cloud_metadata
from tests.pg import pg_url  # noqa: F401  (the fixture, requested by name below)

pytestmark = pytest.mark.postgres

APP_ROLE = "dart_app"
SCRIPTS = ScriptDirectory.from_config(alembic_config("postgresql://"))
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]  # base -> head
ALEMBIC_ONLY = {"alembic_version", "alembic_version_pkc"}  # the table and its primary-key index


def test_upgrade_downgrade_upgrade(pg_url: str) -> None:  # noqa: F811
    upgrade(pg_url)
    assert_at_head(pg_url)
    assert app_role_holdings(pg_url), "the detector below must see the service's grants at head"

    downgrade(pg_url, "base")
    with connect(pg_url) as conn:
        assert current_revision(conn) is None
        assert public_objects(conn) == {"relations": ALEMBIC_ONLY, "functions": set(), "policies": set()}
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 0
        # The role is the cluster's, shared by every database: it stays, with nothing left here.
        assert conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE}).scalar_one()
        privileges = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
        assert not any(
            conn.execute(
                text("SELECT has_table_privilege(:r, 'alembic_version', :p)"), {"r": APP_ROLE, "p": p}
            ).scalar_one()
            for p in privileges
        )
    assert app_role_holdings(pg_url) == []

    upgrade(pg_url)
    assert_at_head(pg_url)


def test_every_revision_steps_up_and_down_one_at_a_time(pg_url: str) -> None:  # noqa: F811
    for revision in REVISIONS:
        upgrade(pg_url, revision)
        with connect(pg_url) as conn:
            assert current_revision(conn) == revision
    for expected in [*reversed(REVISIONS[:-1]), None]:
        downgrade(pg_url, "-1")
        with connect(pg_url) as conn:
            assert current_revision(conn) == expected
    with connect(pg_url) as conn:
        assert public_objects(conn)["relations"] == ALEMBIC_ONLY
    upgrade(pg_url)
    assert_at_head(pg_url)


# --- helpers


def assert_at_head(url: str) -> None:
    with connect(url) as conn:
        assert current_revision(conn) == SCRIPTS.get_current_head()
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, cloud_metadata) == []
        security = conn.execute(
            text(
                "SELECT relname FROM pg_class WHERE relname = ANY(:names) "
                "AND relrowsecurity AND relforcerowsecurity"
            ),
            {"names": list(HOSPITAL_TABLES)},
        ).scalars()
        assert set(security) == set(HOSPITAL_TABLES)


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def public_objects(conn: Connection) -> dict[str, set[str]]:
    """Every relation (table, index, sequence, view), function and policy in the public schema."""

    def names(query: str) -> set[str]:
        return set(conn.execute(text(query)).scalars())

    return {
        "relations": names(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public'"
        ),
        "functions": names(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'"
        ),
        "policies": names("SELECT policyname FROM pg_policies WHERE schemaname = 'public'"),
    }


def app_role_holdings(url: str) -> list[Any]:
    """What ties the service role to this database: owned objects, grants (table, sequence, schema,
    function, default privileges) and policies naming it. DROP ROLE reads the same catalogue."""
    with connect(url) as conn:
        return conn.execute(
            text(
                "SELECT classid::regclass::text, objid, deptype FROM pg_shdepend "
                "WHERE refobjid = (SELECT oid FROM pg_roles WHERE rolname = :r) "
                "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"r": APP_ROLE},
        ).all()


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """A short-lived connection of the owner; its engine is disposed afterwards."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()
