"""Alembic, run by the station on start and by tests; one migration tree for SQLite and PostgreSQL."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine

from store.engine import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str, migrations_dir: Path = MIGRATIONS_DIR) -> Config:
    """Alembic's configuration for one migration tree (the station's by default, or the cloud's)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(db_path: Path, revision: str = "head") -> None:
    """Bring the station's SQLite file to `revision` (creating it when it does not exist)."""
    engine = make_engine(db_path, pool_size=1)
    try:
        upgrade(engine, revision)
    finally:
        engine.dispose()


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def engine_for_url(url: str) -> Engine:
    """SQLite URLs get the station's pragmas; others (PostgreSQL) a plain engine."""
    if url.startswith("sqlite:///"):
        return make_engine(url.removeprefix("sqlite:///"), pool_size=1)
    return create_engine(url)
