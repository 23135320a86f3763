"""The cloud's configuration, from the environment (a deployment sets these; the demo has defaults)."""

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CloudSettings:
    database_url: str  # the service role's connection (owns no table, subject to row-level security)
    owner_database_url: str | None = None  # for migrations only; never used to serve requests
    priority_url: str | None = None
    priority_user: str = "priority"
    priority_password: str = ""
    code_sender: str = "console"  # console | file:<path>; SMS and e-mail gateways plug in here
    data_key_file: Path = Path("data/cloud/data.key")
    session_hours: int = 12
    bundle_days: int = 7
    pin_grace_days: int = 7  # how long a PIN set at an online login opens the station offline

    @classmethod
    def from_env(cls) -> "CloudSettings":
        env = os.environ
        url = env.get("DATABASE_URL")
        if not url:
            raise SystemExit(
                "DATABASE_URL is not set: the cloud needs PostgreSQL, connecting as its service role "
                "(e.g. postgresql+psycopg://dart_app@127.0.0.1:5432/dart)"
            )
        return cls(
            database_url=url,
            owner_database_url=env.get("MIGRATION_DATABASE_URL"),
            priority_url=env.get("PRIORITY_URL"),
            priority_user=env.get("PRIORITY_USER", "priority"),
            priority_password=env.get("PRIORITY_PASSWORD", ""),
            code_sender=env.get("CODE_SENDER", "console"),
            data_key_file=Path(env.get("CLOUD_DATA_KEY_FILE", "data/cloud/data.key")),
            pin_grace_days=int(env.get("PIN_GRACE_DAYS", "7")),
        )
