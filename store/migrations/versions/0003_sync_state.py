"""Sync state: the cloud link, the device credential (sealed), the pull cursor, the last rounds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new table, no rebuild of an existing one: no batch mode needed on SQLite.
    op.create_table(
        "sync_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cloud_url", sa.String(), nullable=True),
        sa.Column("cloud_device_id", sa.String(length=64), nullable=True),
        sa.Column("credential_enc", sa.String(), nullable=True),
        sa.Column("pull_cursor", sa.BigInteger(), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("last_bundle_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_state")),
    )
    # The single row exists from here on: the engine only ever updates it (a pull starts at 0).
    op.execute("INSERT INTO sync_state (id, pull_cursor) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("sync_state")
