"""Row-level security by site, the service role, and the append-only audit trail.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The service connects as a role that owns no table and is not a superuser, so it is subject to
every policy; FORCE ROW LEVEL SECURITY also binds the owner, so a migration or an operator
session does not read across hospitals by accident. A transaction sees the sites named in
`dart.sites` (set with set_config(..., true), which ends with the transaction and so never leaks
into the next request on a pooled connection), or every site when `dart.all_sites` is 'on'
(alphatau and admin). With no context at all, nothing is visible and nothing can be written.
"""

import os
from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = os.environ.get("DART_APP_ROLE", "dart_app")
HOSPITAL_TABLES = (
    "treatments",
    "applicators",
    "applicator_packages",
    "removed_seeds",
    "change_log",
    "op_ledger",
    "conflicts",
    "incidents",
    "audit_events",
    "priority_orders",
    "priority_applicators",
    "writeback_queue",
)
IDENTITY_TABLES = (
    "sites",
    "users",
    "login_codes",
    "devices",
    "enrolment_codes",
    "sessions",
    "priority_refresh",
)
VISIBLE = (
    "(current_setting('dart.all_sites', true) = 'on'"
    " OR site = ANY (string_to_array(NULLIF(current_setting('dart.sites', true), ''), ',')))"
)


def upgrade() -> None:
    op.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') "
        f"THEN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS; END IF; END $$"
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    for table in (*HOSPITAL_TABLES, *IDENTITY_TABLES):
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}")
    # No sequence privilege: identity columns need none, and reading a sequence would tell any
    # caller every hospital's activity volume. No temporary tables: one created in a request would
    # shadow a real table for the next request on the same pooled connection.
    op.execute(
        "DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); "
        "END $$"
    )
    for table in HOSPITAL_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {table}_by_site ON {table} USING {VISIBLE} WITH CHECK {VISIBLE}")
    # The audit trail and the ledger are append-only for the service.
    op.execute(f"REVOKE UPDATE, DELETE ON audit_events FROM {APP_ROLE}")
    op.execute(f"REVOKE DELETE ON op_ledger, change_log FROM {APP_ROLE}")
    # Pull history is never rewritten (invariant 4); the ledger's result is written once, by the push.
    op.execute(f"REVOKE UPDATE ON change_log FROM {APP_ROLE}")
    # The ledger row is claimed with no result and the result is written once: a retry however
    # late must get the original answer, so nothing may rewrite it afterwards.
    op.execute(
        "CREATE FUNCTION op_ledger_result_once() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN IF COALESCE(OLD.result, 'null'::jsonb) <> 'null'::jsonb "
        "OR NEW.device_id <> OLD.device_id OR NEW.op_id <> OLD.op_id "
        "OR NEW.site <> OLD.site THEN RAISE EXCEPTION 'op_ledger results are written once' "
        "USING ERRCODE = 'insufficient_privilege'; END IF; "
        "RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER op_ledger_result_once BEFORE UPDATE ON op_ledger "
        "FOR EACH ROW EXECUTE FUNCTION op_ledger_result_once()"
    )
    op.execute(
        "CREATE FUNCTION forbid_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION forbid_audit_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION forbid_audit_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
    op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
    op.execute("DROP FUNCTION forbid_audit_change()")
    op.execute("DROP TRIGGER op_ledger_result_once ON op_ledger")
    op.execute("DROP FUNCTION op_ledger_result_once()")
    for table in HOSPITAL_TABLES:
        op.execute(f"DROP POLICY {table}_by_site ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    # The role is shared by every database of the cluster: only this database's grants go.
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    op.execute(
        "DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()); END $$"
    )
