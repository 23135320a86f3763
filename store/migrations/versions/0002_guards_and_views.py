"""Guards the database keeps itself: append-only audit, updated_at, derived progress.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

from store.migrations.guards import TOUCHED_TABLES, sqlite_guard_statements

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "SEALED",
    "OPENED",
    "LOADED",
    "INSERTED",
    "FAULTY",
    "DISPOSED",
    "DISCHARGED",
    "DEPLOYMENT_FAILURE",
)

PROGRESS_VIEW = f"""
CREATE VIEW treatment_progress AS
SELECT t.id AS treatment_id,
       t.planned_seeds AS planned_seeds,
       t.activity_per_seed AS activity_per_seed,
       COUNT(a.id) AS applicator_count,
       COALESCE(SUM(a.deployed_seeds), 0) AS deployed_seeds,
       COALESCE(SUM(a.deployed_seeds), 0) * t.activity_per_seed AS total_activity,
       CASE WHEN t.planned_seeds > 0
            THEN 100.0 * COALESCE(SUM(a.deployed_seeds), 0) / t.planned_seeds END AS percent_deployed,
       {", ".join(f"COALESCE(SUM(CASE WHEN a.status = '{s}' THEN 1 ELSE 0 END), 0) AS n_{s.lower()}" for s in STATUSES)}
FROM treatments t
LEFT JOIN applicators a ON a.treatment_id = t.id AND a.deleted_at IS NULL
WHERE t.deleted_at IS NULL
GROUP BY t.id, t.planned_seeds, t.activity_per_seed
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_triggers()
    else:
        _postgresql_triggers()
    op.execute(PROGRESS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW treatment_progress")
    if op.get_bind().dialect.name == "sqlite":
        for table in TOUCHED_TABLES:
            op.execute(f"DROP TRIGGER {table}_touch_updated_at")
        op.execute("DROP TRIGGER audit_logs_no_update")
        op.execute("DROP TRIGGER audit_logs_no_delete")
    else:
        for table in TOUCHED_TABLES:
            op.execute(f"DROP TRIGGER {table}_touch_updated_at ON {table}")
        op.execute("DROP TRIGGER audit_logs_append_only ON audit_logs")
        op.execute("DROP TRIGGER audit_logs_no_truncate ON audit_logs")
        op.execute("DROP FUNCTION touch_updated_at()")
        op.execute("DROP FUNCTION forbid_audit_change()")


def _sqlite_triggers() -> None:
    for statement in sqlite_guard_statements():
        op.execute(statement)


def _postgresql_triggers() -> None:
    op.execute(
        "CREATE FUNCTION forbid_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'audit_logs is append-only'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON audit_logs "
        "FOR EACH ROW EXECUTE FUNCTION forbid_audit_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs "
        "FOR EACH STATEMENT EXECUTE FUNCTION forbid_audit_change()"
    )
    op.execute(
        "CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN NEW.updated_at = now(); END IF; "
        "RETURN NEW; END $$"
    )
    for table in TOUCHED_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_touch_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION touch_updated_at()"
        )
