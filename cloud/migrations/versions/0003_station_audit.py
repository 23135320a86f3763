"""Each station's audit chain in the cloud: verified on arrival, row-level secured, append-only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

`station_audit` is a hospital table like every other (site in every key, FORCE ROW LEVEL SECURITY,
the site policy of 0002). The service may read and append, never change or remove: UPDATE and
DELETE are not granted, and a trigger refuses them (and TRUNCATE) for every role, the owner too.
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = os.environ.get("DART_APP_ROLE", "dart_app")
VISIBLE = (
    "(current_setting('dart.all_sites', true) = 'on'"
    " OR site = ANY (string_to_array(NULLIF(current_setting('dart.sites', true), ''), ',')))"
)


def upgrade() -> None:
    op.create_table(
        "station_audit",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("device_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("recorded_device_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=48), nullable=False),
        sa.Column("table_name", sa.String(length=32), nullable=True),
        sa.Column("record_id", sa.String(length=64), nullable=True),
        sa.Column("op_id", sa.String(length=36), nullable=True),
        sa.Column("old_values", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("new_values", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_station_audit")),
        sa.UniqueConstraint(
            "site", "device_id", "device_seq", name=op.f("uq_station_audit_site_device_id_device_seq")
        ),
    )
    op.create_index("ix_station_audit_device_id_device_seq", "station_audit", ["device_id", "device_seq"])
    op.create_index("ix_station_audit_site_action", "station_audit", ["site", "action"])

    op.execute(f"GRANT SELECT, INSERT ON station_audit TO {APP_ROLE}")
    op.execute("ALTER TABLE station_audit ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE station_audit FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY station_audit_by_site ON station_audit USING {VISIBLE} WITH CHECK {VISIBLE}")
    op.execute(
        "CREATE FUNCTION forbid_station_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'station_audit is append-only' USING ERRCODE = 'insufficient_privilege'; "
        "END $$"
    )
    op.execute(
        "CREATE TRIGGER station_audit_append_only BEFORE UPDATE OR DELETE ON station_audit "
        "FOR EACH ROW EXECUTE FUNCTION forbid_station_audit_change()"
    )
    op.execute(
        "CREATE TRIGGER station_audit_no_truncate BEFORE TRUNCATE ON station_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION forbid_station_audit_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER station_audit_no_truncate ON station_audit")
    op.execute("DROP TRIGGER station_audit_append_only ON station_audit")
    op.execute("DROP FUNCTION forbid_station_audit_change()")
    op.execute("DROP POLICY station_audit_by_site ON station_audit")
    op.execute(f"REVOKE ALL ON station_audit FROM {APP_ROLE}")
    op.drop_index("ix_station_audit_site_action", table_name="station_audit")
    op.drop_index("ix_station_audit_device_id_device_seq", table_name="station_audit")
    op.drop_table("station_audit")
