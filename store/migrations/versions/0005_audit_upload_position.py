"""Sync state: how far the cloud holds this station's audit chain (the audit upload, sync/audit_upload.py).

`sync_state.audit_acked_seq` is the `device_seq` of the last audit entry the cloud acknowledged;
each round uploads the entries above it. NULL (as on every station before this revision) means
none: the whole chain goes up, which the cloud answers as idempotently as any re-sent batch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column: SQLite adds it in place, no rebuild of the table.
    op.add_column("sync_state", sa.Column("audit_acked_seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_column("audit_acked_seq")
