"""Alembic environment: the SQLModel metadata, batch mode on SQLite, foreign keys off around it.

On SQLite a batch rebuild of a parent table with foreign keys on deletes every ON DELETE CASCADE
child row (style.md), and the pragma cannot change inside a transaction, so it is switched off
before the migration's transaction and the foreign keys are checked again after it.
"""

from alembic import context
from sqlalchemy import Connection

from store.migrate import engine_for_url
from store.models import metadata

config = context.config


def run_migrations(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
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
        if connection.in_transaction():
            connection.commit()
    finally:
        if is_sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            if broken:
                raise RuntimeError(f"migration left rows with broken foreign keys: {broken[:5]}")


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
