"""Sync queue: a person's conflict resolution travels with its change; incidents are queued too.

- `sync_queue.resolution`: the decision (which conflicts, how, why, by whom) that a resolution
  command's queue entry carries to the cloud (store/resolution.py, docs/sync-protocol.md);
- `sync_queue.table_name` may be `incidents`: an INSERTED or FAULTY applicator whose entry is stuck
  is reported to the cloud as a queued record of its own (store/incidents.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CORE = "'applicator_packages', 'applicators', 'removed_seeds', 'treatments'"
QUEUED = "'applicator_packages', 'applicators', 'incidents', 'removed_seeds', 'treatments'"


def upgrade() -> None:
    # A CHECK cannot be altered on SQLite: batch mode rebuilds the table (sync_conflicts points at it;
    # the environment turns foreign keys off around the rebuild and checks them afterwards).
    with op.batch_alter_table("sync_queue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolution", sa.Text(), nullable=True))
        batch_op.drop_constraint(op.f("ck_sync_queue_table_name_valid"), type_="check")
        batch_op.create_check_constraint(op.f("ck_sync_queue_table_name_valid"), f"table_name IN ({QUEUED})")


def downgrade() -> None:
    # Entries that cannot exist below this revision are dropped with it: incidents not yet sent
    # would be raised again by the engine for entries still stuck.
    op.execute("DELETE FROM sync_queue WHERE table_name = 'incidents'")
    with op.batch_alter_table("sync_queue", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_sync_queue_table_name_valid"), type_="check")
        batch_op.create_check_constraint(op.f("ck_sync_queue_table_name_valid"), f"table_name IN ({CORE})")
        batch_op.drop_column("resolution")
