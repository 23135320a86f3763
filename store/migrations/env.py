"""Alembic environment: the SQLModel metadata, batch mode on SQLite, foreign keys off around it.

On SQLite a batch rebuild of a parent table with foreign keys on either fails (RESTRICT) or
deletes every ON DELETE CASCADE child row (style.md). The pragma is ignored inside a transaction,
so it is set on the driver connection with no transaction open, read back, and the foreign keys
are checked again after the migration. `legacy_alter_table` keeps SQLite from rewriting (and
refusing) the views that name a table while batch mode renames the rebuilt copy into place.
Rebuilt tables lose their triggers, so the guards are re-created afterwards.
"""

from typing import Any

from alembic import context
from sqlalchemy import Connection

from store.migrate import engine_for_url
from store.migrations.guards import ensure_sqlite_guards
from store.models import metadata

config = context.config


def run_migrations(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        _sqlite_pragmas(connection, foreign_keys="OFF", legacy_alter_table="ON")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=is_sqlite,
        compare_type=True,
        transactional_ddl=True,
    )
    try:
        with context.begin_transaction():
            context.run_migrations()
            if is_sqlite:
                ensure_sqlite_guards(connection)
        if connection.in_transaction():
            connection.commit()
    finally:
        if is_sqlite:
            if connection.in_transaction():
                connection.rollback()
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            connection.rollback()
            _sqlite_pragmas(connection, foreign_keys="ON", legacy_alter_table="OFF")
            if broken:
                raise RuntimeError(f"migration left rows with broken foreign keys: {broken[:5]}")


def _sqlite_pragmas(connection: Connection, **pragmas: str) -> None:
    if connection.in_transaction():
        connection.commit()
    raw: Any = connection.connection.driver_connection
    for name, value in pragmas.items():
        raw.execute(f"PRAGMA {name}={value}")
    expected = 1 if pragmas["foreign_keys"] == "ON" else 0
    actual = raw.execute("PRAGMA foreign_keys").fetchone()[0]
    if actual != expected:
        raise RuntimeError(f"could not set PRAGMA foreign_keys={pragmas['foreign_keys']} for the migration")


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = engine_for_url(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        run_migrations(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run against a database")
main()
