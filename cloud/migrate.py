"""Migrations of the cloud database, run by the owner role (never by the service role)."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(owner_url: str, revision: str = "head") -> None:
    engine = create_engine(owner_url)
    try:
        with engine.begin() as conn:
            config = alembic_config(owner_url)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def downgrade(owner_url: str, revision: str) -> None:
    engine = create_engine(owner_url)
    try:
        with engine.begin() as conn:
            config = alembic_config(owner_url)
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
    finally:
        engine.dispose()
