"""One migration tree for the station (SQLite) and the cloud (PostgreSQL): it builds exactly the
schema of the models, comes apart cleanly, and never loses a clinical row on the way.
"""

import os
import re
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CheckConstraint, Connection, Engine, inspect
from sqlalchemy.exc import DBAPIError, IntegrityError

from store.applicators import change_status, create_package
from store.engine import make_engine
from store.enums import ApplicatorStatus, SeedRemovalReason, SignatureMode
from store.migrate import MIGRATIONS_DIR, alembic_config, downgrade, engine_for_url, upgrade
from store.models import metadata
from store.removal import remove_applicator, remove_single_seed
from store.scanning import scan_applicator
from store.station import DB_FILE, Station, open_station
from store.treatments import finalise_treatment, start_insertion, start_removal
from tests.pg import pg_url  # noqa: F401  (the fixture, requested by name below)
from tests.store.test_schema_constraints import (
    APPLICATOR_ID,
    CHECK_CASES,
    INSERTION_ID,
    NOT_NULL_COLUMNS,
    ROW_OF_TABLE,
    SERIAL,
    TEMPLATE_ROWS,
    VALID_ROWS,
    fresh_row,
    insert_row,
    insert_valid_rows,
    key_of,
    update_row,
)
from tests.utils.data import NURSE, SITE, TODAY, FakeClock

S = ApplicatorStatus
MODEL_TABLES = set(metadata.tables)
TOUCHED_TABLES = {t.name for t in metadata.sorted_tables if "updated_at" in t.c}
# Tables whose rows the database guards with triggers: updated_at upkeep and the append-only audit.
TRIGGER_TABLES = TOUCHED_TABLES | {"audit_logs"}
VIEWS = {"treatment_progress"}
SCRIPTS = ScriptDirectory.from_config(alembic_config("sqlite://"))

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database: a new SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / DB_FILE}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = engine_for_url(url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:  # noqa: F811
    """A fresh PostgreSQL database migrated to head."""
    engine = engine_for_url(pg_url)
    upgrade(engine)
    yield engine
    engine.dispose()


# --- what the database holds ------------------------------------------------------------------------
def _schema_differences(conn: Connection) -> list[Any]:
    """Alembic's autogenerate comparison: what a new revision would have to change.

    It compares tables, columns (type, nullability, server default), indexes, unique constraints and
    foreign keys. It does not compare CHECK constraints, partial-index predicates, generated-column
    expressions, triggers or views; `_assert_schema_matches_models` checks those separately.
    """
    context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
    with warnings.catch_warnings():
        # A comparison alembic cannot make is a gap in this test, so its warnings fail it.
        warnings.simplefilter("error")
        return compare_metadata(context, metadata)


def _triggers(conn: Connection) -> dict[str, str]:
    """Trigger name -> the table it guards."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")
    else:
        rows = conn.exec_driver_sql(
            "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal"
        )
    return {name: table for name, table in rows}


def _index_sql(conn: Connection, name: str) -> str:
    if conn.dialect.name == "sqlite":
        return conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).scalar_one()
    return conn.exec_driver_sql("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)).scalar_one()


def _is_generated(conn: Connection, table: str, column: str) -> bool:
    if conn.dialect.name == "sqlite":
        # table_xinfo marks a stored generated column with hidden = 3 (a virtual one with 2).
        hidden = {r[1]: r[6] for r in conn.exec_driver_sql(f"PRAGMA table_xinfo({table})")}
        return hidden[column] == 3
    return (
        conn.exec_driver_sql(
            "SELECT is_generated FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
            (table, column),
        ).scalar_one()
        == "ALWAYS"
    )


def _partial_indexes() -> list[tuple[str, str]]:
    found = []
    for table in metadata.sorted_tables:
        for index in table.indexes:
            where = index.dialect_options["postgresql"]["where"]
            if where is not None:
                found.append((str(index.name), str(where)))
    return found


def _assert_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        assert _schema_differences(conn) == []
        inspector = inspect(conn)
        assert set(inspector.get_table_names()) == MODEL_TABLES | {"alembic_version"}
        assert set(inspector.get_view_names()) == VIEWS
        for table in metadata.sorted_tables:
            in_db = {c["name"] for c in inspector.get_check_constraints(table.name)}
            declared = {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
            assert in_db == declared, table.name
        for name, where in _partial_indexes():
            # PostgreSQL wraps the predicate in parentheses; SQLite keeps it as written.
            assert re.search(rf"WHERE \(?{re.escape(where)}\)?$", _index_sql(conn, name)), name
        for table in metadata.sorted_tables:
            for column in table.columns:
                assert _is_generated(conn, table.name, column.name) == (column.computed is not None)
        assert set(_triggers(conn).values()) == TRIGGER_TABLES


def _leftovers(conn: Connection) -> set[tuple[str, str]]:
    """Every schema object besides alembic's own table (and the index of its primary key)."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex_%'"
        )
        return {(kind, name) for kind, name in rows} - {("table", "alembic_version")}
    rows = conn.exec_driver_sql(
        "SELECT c.relkind::text, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' "
        "UNION ALL SELECT 'function', p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public'"
    )
    return {(kind, name) for kind, name in rows} - {("r", "alembic_version"), ("i", "alembic_version_pkc")}


# --- SQLite and PostgreSQL: build, tear down, build again ---------------------------------------------
def test_upgrade_from_empty_builds_the_schema_of_the_models(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    _assert_schema_matches_models(empty_engine)
    with empty_engine.connect() as conn:
        head = SCRIPTS.get_current_head()
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [head]


def test_downgrade_to_base_removes_everything_and_upgrade_builds_it_again(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    downgrade(empty_engine, "base")
    with empty_engine.connect() as conn:
        assert _leftovers(conn) == set()
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar_one() == 0
    upgrade(empty_engine)
    _assert_schema_matches_models(empty_engine)
    # ...and the rebuilt schema takes rows again.
    with empty_engine.begin() as conn:
        insert_valid_rows(conn, TEMPLATE_ROWS)


def test_each_revision_goes_down_and_up_again(empty_engine: Engine) -> None:
    revisions = [r.revision for r in reversed(list(SCRIPTS.walk_revisions()))]
    for revision in revisions:
        upgrade(empty_engine, revision)
    for revision in reversed(revisions[:-1]):
        downgrade(empty_engine, revision)
    downgrade(empty_engine, "base")
    upgrade(empty_engine)
    _assert_schema_matches_models(empty_engine)


# --- PostgreSQL: the database's own guards work there too ----------------------------------------------
def _refused_by(conn: Connection, write: Any) -> tuple[str | None, str | None]:
    """Run `write` in a savepoint; the (constraint, column) PostgreSQL names, or (None, None) if accepted."""
    try:
        with conn.begin_nested():
            write()
    except IntegrityError as exc:
        diag = exc.orig.diag  # type: ignore[union-attr]
        return diag.constraint_name, diag.column_name
    return None, None


# device_state.hlc_wall_ms is a 32-bit INTEGER on PostgreSQL and cannot hold today's epoch milliseconds
# (test_postgres_device_state_holds_the_clock_in_milliseconds); the constraint tests use a small value
# so that they test their constraint and not that bug.
_PG_SAFE = {"device_state": {"hlc_wall_ms": 0}}


def _pg_row(row_name: str, /, **changes: Any) -> dict[str, Any]:
    return fresh_row(row_name, **{**_PG_SAFE.get(row_name, {}), **changes})


@pytest.mark.postgres
def test_postgres_device_state_holds_the_clock_in_milliseconds(pg_engine: Engine) -> None:
    # The station stamps hlc_wall_ms with store.clock.to_ms(now): about 1.8e12 today, past 2**31.
    with pg_engine.begin() as conn:
        insert_row(conn, "device_state", fresh_row("device_state"))
        stored = conn.exec_driver_sql("SELECT hlc_wall_ms FROM device_state").scalar_one()
    assert stored == VALID_ROWS["device_state"][1]["hlc_wall_ms"]


@pytest.mark.postgres
def test_postgres_check_constraints_refuse_every_bad_row(pg_engine: Engine) -> None:
    wrong = []
    with pg_engine.begin() as conn:
        insert_valid_rows(conn, TEMPLATE_ROWS)
        insert_row(conn, "device_state", _pg_row("device_state"))
        for case in CHECK_CASES:
            expected = {case.constraint, *case.also}
            named, _ = _refused_by(
                conn, lambda c=case: insert_row(conn, c.table, _pg_row(c.row, **c.mutation))
            )
            if named not in expected:
                wrong.append(f"insert {case.id}: refused by {named}")
            named, _ = _refused_by(conn, lambda c=case: update_row(conn, c.table, key_of(c.row), c.mutation))
            if named not in expected:
                wrong.append(f"update {case.id}: refused by {named}")
    assert wrong == []


@pytest.mark.postgres
def test_postgres_not_null_columns_refuse_null(pg_engine: Engine) -> None:
    wrong = []
    with pg_engine.begin() as conn:
        insert_valid_rows(conn, TEMPLATE_ROWS)
        for table, column in NOT_NULL_COLUMNS:
            row = _pg_row(ROW_OF_TABLE[table], **{column: None})
            _, named = _refused_by(conn, lambda t=table, r=row: insert_row(conn, t, r))
            if named != column:
                wrong.append(f"{table}.{column}: refused for {named}")
    assert wrong == []


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_logs SET action = 'nothing_happened'",
        "DELETE FROM audit_logs",
        "TRUNCATE audit_logs",
    ],
)
def test_postgres_audit_logs_are_append_only(pg_engine: Engine, statement: str) -> None:
    with pg_engine.begin() as conn:
        insert_valid_rows(conn, ["audit_logs"])
    with pg_engine.connect() as conn:
        with pytest.raises(DBAPIError, match="audit_logs is append-only"):
            conn.exec_driver_sql(statement)
        conn.rollback()
        assert conn.exec_driver_sql("SELECT action FROM audit_logs").scalars().all() == ["applicator_scanned"]
    with pg_engine.begin() as conn:
        insert_row(conn, "audit_logs", fresh_row("audit_logs"))  # appending still works


@pytest.mark.postgres
@pytest.mark.parametrize("table", sorted(TOUCHED_TABLES))
def test_postgres_updated_at_is_refreshed_unless_set(pg_engine: Engine, table: str) -> None:
    name = ROW_OF_TABLE[table]
    row_id = VALID_ROWS[name][1]["id"]
    change = {"users": {"phone": "+972-3-555-0101"}}.get(table, {"hlc": "h-2"})
    with pg_engine.begin() as conn:
        insert_valid_rows(conn, TEMPLATE_ROWS)
    with pg_engine.begin() as conn:
        update_row(conn, table, {"id": row_id}, change)
        # now() is the transaction's start time, so the trigger's stamp is known exactly.
        refreshed, now = conn.exec_driver_sql(
            f"SELECT updated_at, now() FROM {table} WHERE id = %s", (row_id,)
        ).one()
    assert refreshed == now
    chosen = VALID_ROWS[name][1]["updated_at"].replace(year=2027)
    with pg_engine.begin() as conn:
        update_row(conn, table, {"id": row_id}, {**change, "updated_at": chosen})
        kept = conn.exec_driver_sql(f"SELECT updated_at FROM {table} WHERE id = %s", (row_id,)).scalar_one()
    assert kept == chosen


@pytest.mark.postgres
def test_postgres_keeps_the_other_guards(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        insert_valid_rows(conn, TEMPLATE_ROWS)
        # usage is generated and cannot be written
        assert conn.exec_driver_sql("SELECT usage FROM applicators").scalar_one() == "full"
    with pg_engine.connect() as conn, pytest.raises(DBAPIError, match="generated column"):
        update_row(conn, "applicators", {"id": APPLICATOR_ID}, {"usage": "none"})
    with pg_engine.begin() as conn:
        # one live serial per treatment; a soft-deleted one makes room
        named, _ = _refused_by(
            conn, lambda: insert_row(conn, "applicators", fresh_row("applicators", serial_number=SERIAL))
        )
        assert named == "uq_applicators_treatment_serial_live"
        update_row(
            conn,
            "applicators",
            {"id": APPLICATOR_ID},
            {
                "deleted_at": VALID_ROWS["applicators"][1]["created_at"],
                "deleted_by": "u-admin",
                "deleted_reason": "dup",
            },
        )
        insert_row(conn, "applicators", fresh_row("applicators", serial_number=SERIAL))
        # ON DELETE RESTRICT
        named, _ = _refused_by(
            conn, lambda: conn.exec_driver_sql("DELETE FROM treatments WHERE id = %s", (INSERTION_ID,))
        )
        assert named is not None and named.startswith("fk_")
        # the progress view counts live applicators only: the fresh one, still INSERTED with 10 seeds
        progress = conn.exec_driver_sql(
            "SELECT applicator_count, deployed_seeds, percent_deployed, n_inserted FROM treatment_progress "
            "WHERE treatment_id = %s",
            (INSERTION_ID,),
        ).one()
        assert tuple(progress) == (1, 10, 12.5, 1)


# --- SQLite: a station with data keeps every row through migrations ------------------------------------
def _populate(station: Station, clock: FakeClock) -> None:
    """A finished insertion with applicators in every terminal status, a package, and a removal under way,
    all written by the real commands (so queue, audit, cache, users and device state hold rows too)."""
    treatment_id = start_insertion(
        station, NURSE, site=SITE, day=TODAY, surgeon="Dr. Gold", order_names=["SO2611001"]
    ).record["id"]
    ids = []
    for n in range(6):
        result = scan_applicator(station, NURSE, treatment_id=treatment_id, raw=f"DART-9000-{n:05d}")
        assert result.saved and result.applicator is not None, result.message
        ids.append(result.applicator["id"])
    for applicator_id in ids:
        change_status(station, NURSE, applicator_id=applicator_id, status=S.OPENED)
    create_package(station, NURSE, treatment_id=treatment_id, applicator_ids=ids[:4])
    for applicator_id, status, deployed in [
        (ids[0], S.INSERTED, None),
        (ids[1], S.INSERTED, None),
        (ids[2], S.DISCHARGED, None),
        (ids[3], S.DEPLOYMENT_FAILURE, None),
        (ids[4], S.FAULTY, 3),
        (ids[5], S.DISPOSED, None),
    ]:
        change_status(
            station,
            NURSE,
            applicator_id=applicator_id,
            status=status,
            comment=None if status is S.INSERTED else "noted in the operating room",
            deployed_seeds=deployed,
            confirm_permanent=True,
        )
    finalise_treatment(station, NURSE, treatment_id=treatment_id, mode=SignatureMode.SELF)
    clock.advance(days=14)
    removal_id = start_removal(station, NURSE, insertion_id=treatment_id).record["id"]
    remove_applicator(station, NURSE, removal_id=removal_id, applicator_id=ids[0])
    remove_single_seed(station, NURSE, removal_id=removal_id, reason=SeedRemovalReason.APPLICATOR_RUPTURE)
    with station.engine.begin() as conn:
        # No command writes conflicts yet (the sync engine will); one row so that every table has data.
        op_id = conn.exec_driver_sql("SELECT op_id FROM sync_queue ORDER BY device_seq LIMIT 1").scalar_one()
        insert_row(conn, "sync_conflicts", fresh_row("sync_conflicts", op_id=op_id, record_id=ids[0]))


def _snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every model table (the models' columns only), in key order; a table or a column
    a later revision than the database's adds is left out."""
    with engine.connect() as conn:
        snapshot = {}
        inspector = inspect(conn)
        present = set(inspector.get_table_names())
        for table in metadata.sorted_tables:
            if table.name not in present:
                continue
            there = {c["name"] for c in inspector.get_columns(table.name)}
            columns = ", ".join(c.name for c in table.columns if c.name in there)
            keys = ", ".join(c.name for c in table.primary_key.columns)
            snapshot[table.name] = [
                dict(row)
                for row in conn.exec_driver_sql(
                    f"SELECT {columns} FROM {table.name} ORDER BY {keys}"
                ).mappings()
            ]
        return snapshot


def _as_at(before: dict[str, list[dict[str, Any]]], older: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """`before` with only the tables and columns an older revision's snapshot has."""
    return {
        name: [{k: row[k] for k in (older[name][0] if older[name] else row)} for row in rows]
        for name, rows in before.items()
        if name in older
    }


def _assert_foreign_keys_on_and_intact(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []


@pytest.fixture
def populated_station(station: Station, clock: FakeClock) -> Path:
    """The station's database file, full of rows and closed."""
    _populate(station, clock)
    with station.engine.connect() as conn:
        for table in metadata.sorted_tables:
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table.name}").scalar_one() > 0, table.name
    station.close()
    return station.data_dir / DB_FILE


def test_rows_survive_head_to_0001_and_back(populated_station: Path, clock: FakeClock) -> None:
    # pool_size=1: the connection that ran the migration is the one checked for its pragmas after.
    engine = make_engine(populated_station, pool_size=1)
    try:
        before = _snapshot(engine)
        with engine.connect() as conn:
            progress_before = conn.exec_driver_sql("SELECT * FROM treatment_progress ORDER BY 1").all()
        downgrade(engine, "0001")
        at_0001 = _snapshot(engine)
        assert at_0001 == _as_at(before, at_0001)
        assert "treatments" in at_0001 and "sync_state" not in at_0001  # 0003 added it
        _assert_foreign_keys_on_and_intact(engine)
        upgrade(engine, "head")
        assert _snapshot(engine) == before
        _assert_foreign_keys_on_and_intact(engine)
        with engine.connect() as conn:
            assert (
                conn.exec_driver_sql("SELECT * FROM treatment_progress ORDER BY 1").all() == progress_before
            )
    finally:
        engine.dispose()
    # The station opens on the migrated file and its commands still work.
    station = open_station(populated_station.parent, clock=clock)
    try:
        with station.engine.connect() as conn:
            removal_id = conn.exec_driver_sql("SELECT id FROM treatments WHERE type = 'removal'").scalar_one()
        remove_single_seed(station, NURSE, removal_id=removal_id, reason=SeedRemovalReason.PATIENT_FROM_HOME)
    finally:
        station.close()


_REBUILD_REVISION = '''
    """Test-only: rebuild {table} the way a batch migration does on SQLite (copy, drop, rename).

    Revision ID: {revision}
    Revises: {down}
    """
    import sqlalchemy as sa
    from alembic import op

    revision = "{revision}"
    down_revision = "{down}"
    branch_labels = None
    depends_on = None


    def upgrade() -> None:
        with op.batch_alter_table("{table}", recreate="always") as batch_op:
            batch_op.add_column(sa.Column("rebuild_probe", sa.String(), nullable=True)){generated}


    def downgrade() -> None:
        with op.batch_alter_table("{table}", recreate="always") as batch_op:
            batch_op.drop_column("rebuild_probe"){generated}
'''

# Batch mode copies every column, and SQLite refuses to write a generated one: a migration that
# rebuilds such a table drops the generated column and adds it back in the same batch
# (docs/architecture.md, "Writing migrations").
_GENERATED = {
    "applicators": (
        '\n        batch_op.drop_column("usage")'
        '\n        batch_op.add_column(sa.Column("usage", sa.String(8), sa.Computed('
        "\"CASE status WHEN 'INSERTED' THEN 'full' WHEN 'FAULTY' THEN 'faulty' ELSE 'none' END\","
        " persisted=True)))"
    ),
}

# Parent tables other rows point at: rebuilding one drops the old table while children reference it.
PARENT_TABLES = sorted({fk.column.table.name for t in metadata.sorted_tables for fk in t.foreign_keys})


@pytest.mark.parametrize("table", PARENT_TABLES)
def test_a_batch_rebuild_of_a_parent_table_keeps_every_row(
    populated_station: Path, tmp_path: Path, table: str
) -> None:
    # The next real migration that alters a parent table on SQLite is a batch rebuild. env.py must turn
    # foreign keys off around it (style.md): with them on, dropping the old table either fails
    # (RESTRICT) or deletes every child row (CASCADE). A test-only revision stands in for it.
    versions = tmp_path / "versions"
    versions.mkdir()
    url = f"sqlite:///{populated_station}"
    head = SCRIPTS.get_current_head()
    (versions / "9999_rebuild_probe.py").write_text(
        textwrap.dedent(_REBUILD_REVISION).format(
            table=table, revision="9999", down=head, generated=_GENERATED.get(table, "")
        )
    )
    config = alembic_config(url)
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", os.pathsep.join([str(MIGRATIONS_DIR / "versions"), str(versions)])
    )

    engine = make_engine(populated_station, pool_size=1)
    try:
        before = _snapshot(engine)
        for target in ("9999", head):
            with engine.connect() as conn:
                config.attributes["connection"] = conn
                (command.upgrade if target == "9999" else command.downgrade)(config, target)
            assert _snapshot(engine) == before
            _assert_foreign_keys_on_and_intact(engine)
    finally:
        engine.dispose()
