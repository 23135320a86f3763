"""The guards the database keeps itself on SQLite: append-only audit and automatic updated_at.

Revision 0002 creates them, and the migration environment re-creates any that are missing after
every SQLite migration, because Alembic's batch mode rebuilds a table (copy, drop, rename) and
the rebuilt table comes back without its triggers: an audit log rebuilt that way would silently
stop being append-only. Every statement is idempotent.
"""

from sqlalchemy import Connection

TOUCHED_TABLES = ("treatments", "applicators", "applicator_packages", "removed_seeds", "users")


def sqlite_guard_statements() -> list[str]:
    statements = [
        f"CREATE TRIGGER IF NOT EXISTS audit_logs_no_{verb} BEFORE {verb.upper()} ON audit_logs "
        "BEGIN SELECT RAISE(ABORT, 'audit_logs is append-only'); END"
        for verb in ("update", "delete")
    ]
    # Only when the writer did not set it: the application's own value (its injectable clock) wins.
    statements += [
        f"CREATE TRIGGER IF NOT EXISTS {table}_touch_updated_at AFTER UPDATE ON {table} FOR EACH ROW "
        "WHEN NEW.updated_at IS OLD.updated_at "
        f"BEGIN UPDATE {table} SET updated_at = strftime('%Y-%m-%d %H:%M:%f000', 'now') "
        "WHERE id = NEW.id; END"
        for table in TOUCHED_TABLES
    ]
    return statements


def ensure_sqlite_guards(connection: Connection) -> None:
    """Re-create missing guards once revision 0002 (which introduced them) is applied."""
    has_guards = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = 'treatment_progress'"
    ).first()
    if has_guards is None:
        return
    for statement in sqlite_guard_statements():
        connection.exec_driver_sql(statement)
