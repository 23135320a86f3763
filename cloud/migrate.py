"""Migrations of the cloud database, run by the owner role (never by the service role)."""

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from store import migrate as station_migrate

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    return station_migrate.alembic_config(url, MIGRATIONS_DIR)


def upgrade(owner_url: str, revision: str = "head") -> None:
    _run(command.upgrade, owner_url, revision)


def downgrade(owner_url: str, revision: str) -> None:
    _run(command.downgrade, owner_url, revision)


def _run(step: Callable[[Config, str], None], owner_url: str, revision: str) -> None:
    engine = create_engine(owner_url)
    try:
        with engine.begin() as conn:
            config = alembic_config(owner_url)
            config.attributes["connection"] = conn
            step(config, revision)
    finally:
        engine.dispose()
