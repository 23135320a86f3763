"""Signing codes: an Alpha Tau user's chosen signer confirms a treatment with a code.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

`signing_codes` is a hospital table like every other (site in the key, FORCE ROW LEVEL SECURITY,
the site policy of 0002): a code belongs to one treatment at one site. The service holds the same
privileges as on the other hospital tables; it updates a row for a try, a use or a void, and keeps
old rows as the record of who was asked to sign what.
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = os.environ.get("DART_APP_ROLE", "dart_app")
VISIBLE = (
    "(current_setting('dart.all_sites', true) = 'on'"
    " OR site = ANY (string_to_array(NULLIF(current_setting('dart.sites', true), ''), ',')))"
)


def upgrade() -> None:
    op.create_table(
        "signing_codes",
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("treatment_id", sa.String(length=36), nullable=False),
        sa.Column("signer_id", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("code_hash", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("site", "id", name=op.f("pk_signing_codes")),
    )
    op.create_index("ix_signing_codes_treatment_id", "signing_codes", ["treatment_id"])
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON signing_codes TO {APP_ROLE}")
    op.execute("ALTER TABLE signing_codes ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE signing_codes FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY signing_codes_by_site ON signing_codes USING {VISIBLE} WITH CHECK {VISIBLE}")


def downgrade() -> None:
    op.execute("DROP POLICY signing_codes_by_site ON signing_codes")
    op.execute(f"REVOKE ALL ON signing_codes FROM {APP_ROLE}")
    op.drop_index("ix_signing_codes_treatment_id", table_name="signing_codes")
    op.drop_table("signing_codes")
