"""The database itself refuses rows the design forbids (store/models.py), whoever writes them.

Rows are written with plain SQL around the ORM and the commands: a bug in Python, a hand-edited
database or a future migration must meet the same wall. The tables are data: a valid row per table,
then one bad mutation per CHECK. Meta-tests enumerate `store.models.metadata` so that a CHECK, a NOT
NULL column or a foreign key added without a test here fails the suite.
"""

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import CheckConstraint, Connection, Engine, ForeignKeyConstraint, Integer, inspect
from sqlalchemy.exc import IntegrityError, OperationalError

from store.engine import make_engine
from store.enums import ApplicatorStatus
from store.migrate import migrate
from store.models import metadata

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
DEVICE = "st-constraints"
HLC = f"{1764147600000:015d}-{0:06d}-{DEVICE}"
INSERTION_ID = "trt-insertion"
REMOVAL_ID = "trt-removal"
APPLICATOR_ID = "app-1"
PACKAGE_ID = "pkg-1"
OP_ID = "op-1"
SERIAL = "DART-9000-00001"


def _synced(row_id: str) -> dict[str, Any]:
    return {
        "id": row_id,
        "device_id": DEVICE,
        "local_version": 1,
        "cloud_version": None,
        "sync_status": "pending",
        "hlc": HLC,
        "created_at": NOW,
        "updated_at": NOW,
        "deleted_at": None,
        "deleted_by": None,
        "deleted_reason": None,
    }


_TREATMENT_BLANKS: dict[str, Any] = {
    "parent_treatment_id": None,
    "insertion_treatment_id": None,
    "signed_by_user_id": None,
    "signer_name": None,
    "signer_position": None,
    "signed_at": None,
    "signature_mode": None,
    "signature_status": None,
    "removal_date": None,
    "removal_all_same_day": None,
    "removal_other_date": None,
    "removal_other_reason": None,
    "gap_lost": None,
    "gap_retrieved": None,
    "gap_in_tissue": None,
    "gap_other": None,
    "gap_other_text": None,
}

# One valid row per table, named; "insertion" (completed and signed) and "removal" (form filled in,
# linked to the insertion) are both treatments so that both arms of every treatment CHECK are used.
# Parents come before children: this is the insertion order.
VALID_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "users": (
        "users",
        {
            "id": "u-nurse",
            "name": "Dana Shapiro",
            "email": "dana@example.org",
            "phone": None,
            "position": "Nurse",
            "role": "hospital",
            "sites": '["TLV-1"]',
            "pin_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
            "pin_valid_until": NOW + timedelta(days=7),
            "is_active": True,
            "failed_attempts": 0,
            "last_login": NOW,
            "created_at": NOW,
            "updated_at": NOW,
        },
    ),
    "insertion": (
        "treatments",
        {
            **_synced(INSERTION_ID),
            **_TREATMENT_BLANKS,
            "type": "insertion",
            "indication": "pancreas",
            "subject_id_enc": "v1:c3ViamVjdA",
            "subject_hash": "a" * 64,
            "patient_label_enc": "v1:bGFiZWw",
            "order_hashes": f'["{"b" * 64}"]',
            "needs_reconciliation": False,
            "site": "TLV-1",
            "date": date(2026, 11, 26),
            "surgeon": "Dr. Avraham",
            "planned_seeds": 80,
            "activity_per_seed": 2.5,
            "started_by": "u-nurse",
            "started_at": NOW,
            "is_complete": True,
            "completed_by": "u-nurse",
            "completed_at": NOW + timedelta(hours=2),
            "signed_by_user_id": "u-nurse",
            "signer_name": "Dana Shapiro",
            "signer_position": "Nurse",
            "signed_at": NOW + timedelta(hours=2),
            "signature_mode": "self",
            "signature_status": "confirmed",
        },
    ),
    "removal": (
        "treatments",
        {
            **_synced(REMOVAL_ID),
            **_TREATMENT_BLANKS,
            "type": "removal",
            "indication": "pancreas",
            "subject_id_enc": "v1:c3ViamVjdA",
            "subject_hash": "a" * 64,
            "patient_label_enc": "v1:bGFiZWw",
            "order_hashes": "[]",
            "needs_reconciliation": False,
            "site": "TLV-1",
            "date": date(2026, 12, 10),
            "surgeon": "Dr. Avraham",
            "planned_seeds": 80,
            "activity_per_seed": 2.5,
            "started_by": "u-nurse",
            "started_at": NOW + timedelta(days=14),
            "is_complete": False,
            "completed_by": None,
            "completed_at": None,
            "insertion_treatment_id": INSERTION_ID,
            "removal_date": date(2026, 12, 10),
            "removal_all_same_day": False,
            "removal_other_date": date(2026, 12, 11),
            "removal_other_reason": "patient returned the next day",
            "gap_lost": 1,
            "gap_retrieved": 0,
            "gap_in_tissue": 0,
            "gap_other": 1,
            "gap_other_text": "sent to pathology",
        },
    ),
    "applicator_packages": (
        "applicator_packages",
        {
            **_synced(PACKAGE_ID),
            "treatment_id": INSERTION_ID,
            "label": "P1",
            "capacity": 10,
            "created_by": "u-nurse",
        },
    ),
    "applicators": (
        "applicators",
        {
            **_synced(APPLICATOR_ID),
            "treatment_id": INSERTION_ID,
            "serial_number": SERIAL,
            "gtin": "07290012345678",
            "lot": "L2611",
            "expiry_date": date(2027, 6, 30),
            "catalogue_number": "DART-PAN-10",
            "applicator_type": "Pancreas applicator",
            "seed_quantity": 10,
            "seed_length": 10.0,
            "status": "INSERTED",
            "deployed_seeds": 10,
            "comments": None,
            "photo_path": None,
            "status_changed_at": NOW,
            "scanned_at": NOW,
            "scanned_by": "u-nurse",
            "scan_outcome": "valid",
            "scan_warnings": "[]",
            "bundle_version": "b-1",
            "package_id": PACKAGE_ID,
            "reused_from_id": None,
            "is_removed": True,
            "removal_treatment_id": REMOVAL_ID,
            "removal_time": NOW + timedelta(days=14),
            "removed_by": "u-nurse",
            "removal_comment": None,
            "removal_photo_path": None,
            "amended_at": None,
            "amended_by": None,
            "amendment_reason": None,
        },
    ),
    "removed_seeds": (
        "removed_seeds",
        {
            **_synced("seed-1"),
            "treatment_id": REMOVAL_ID,
            "reason": "applicator_rupture",
            "reason_text": None,
            "removed_at": NOW + timedelta(days=14),
            "removed_by": "u-nurse",
        },
    ),
    "sync_queue": (
        "sync_queue",
        {
            "op_id": OP_ID,
            "device_id": DEVICE,
            "device_seq": 1,
            "table_name": "applicators",
            "record_id": APPLICATOR_ID,
            "treatment_id": INSERTION_ID,
            "kind": "insert",
            "payload": '{"id": "app-1"}',
            "changed_fields": '{"status": [null, "SEALED"]}',
            "base_version": None,
            "hlc": HLC,
            "clock_offset_ms": None,
            "priority": 4,
            "depends_on": "[]",
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": None,
            "last_error": None,
            "result": None,
            "server_version": None,
            "created_at": NOW,
            "sent_at": None,
            "acknowledged_at": None,
        },
    ),
    # Resolved by a person: every column is filled, so both conflict CHECKs see their strict arm.
    "sync_conflicts": (
        "sync_conflicts",
        {
            "id": "conf-1",
            "table_name": "applicators",
            "record_id": APPLICATOR_ID,
            "field": "status",
            "local_value": '"INSERTED"',
            "server_value": '"FAULTY"',
            "base_value": '"LOADED"',
            "is_safety": True,
            "rule": "manual",
            "op_id": OP_ID,
            "cloud_conflict_id": "cc-1",
            "status": "resolved",
            "detected_at": NOW,
            "resolved_at": NOW + timedelta(hours=1),
            "resolved_by": "u-admin",
            "resolution": "keep_local",
            "resolved_value": '"INSERTED"',
            "reason": "the surgeon confirmed the insertion",
        },
    ),
    "validation_cache": (
        "validation_cache",
        {
            "cache_type": "inventory",
            "cache_key": SERIAL,
            "site": "TLV-1",
            "day": None,
            "payload": '{"serial": "DART-9000-00001"}',
            "bundle_version": "b-1",
            "valid_until": NOW + timedelta(days=7),
            "fetched_at": NOW,
        },
    ),
    "audit_logs": (
        "audit_logs",
        {
            "event_id": "evt-1",
            "device_id": DEVICE,
            "device_seq": 1,
            "user_id": "u-nurse",
            "action": "applicator_scanned",
            "table_name": "applicators",
            "record_id": APPLICATOR_ID,
            "op_id": OP_ID,
            "old_values": None,
            "new_values": '{"status": "SEALED"}',
            "reason": None,
            "created_at": NOW,
            "prev_hash": "0" * 64,
            "hash": "c" * 64,
        },
    ),
    "device_state": (
        "device_state",
        {
            "id": 1,
            "device_id": DEVICE,
            "last_device_seq": 1,
            "last_audit_seq": 1,
            "last_audit_hash": "c" * 64,
            "hlc_wall_ms": 1764147600000,
            "hlc_counter": 0,
            "clock_offset_ms": None,
            "created_at": NOW,
        },
    ),
}

# device_state holds exactly one row, so it is left out of the shared database and each test that
# needs it inserts it (its "fresh" row is the valid row itself).
TEMPLATE_ROWS = [name for name in VALID_ROWS if name != "device_state"]

# What makes a second copy of a valid row unique: new keys, new values for UNIQUE columns.
_FRESH: dict[str, dict[str, Any]] = {
    "users": {"id": "u-fresh"},
    "insertion": {"id": "trt-fresh-insertion"},
    "removal": {"id": "trt-fresh-removal"},
    "applicator_packages": {"id": "pkg-fresh", "label": "P9"},
    "applicators": {"id": "app-fresh", "serial_number": "DART-9000-99999"},
    "removed_seeds": {"id": "seed-fresh"},
    "sync_queue": {"op_id": "op-fresh", "device_seq": 99},
    "sync_conflicts": {"id": "conf-fresh"},
    "validation_cache": {"cache_key": "DART-9000-99999"},
    "audit_logs": {"event_id": "evt-fresh", "device_seq": 99},
    "device_state": {},
}


def fresh_row(row_name: str, /, **changes: Any) -> dict[str, Any]:
    """A valid row that can be inserted beside the shared ones, with `changes` applied."""
    return {**VALID_ROWS[row_name][1], **_FRESH[row_name], **changes}


@dataclass(frozen=True)
class CheckCase:
    constraint: str  # the full constraint name, as the database reports it
    row: str  # which valid row the mutation starts from
    mutation: dict[str, Any]
    # Constraints this mutation cannot help violating as well (stated, and verified below).
    also: frozenset[str] = field(default_factory=frozenset)

    @property
    def table(self) -> str:
        return VALID_ROWS[self.row][0]

    @property
    def id(self) -> str:
        return f"{self.constraint}-{'-'.join(sorted(self.mutation))}"


def _c(constraint: str, row: str, also: tuple[str, ...] = (), **mutation: Any) -> CheckCase:
    return CheckCase(constraint, row, mutation, frozenset(also))


def _sync_cases(row: str, table: str) -> list[CheckCase]:
    return [
        _c(f"ck_{table}_sync_status_valid", row, sync_status="uploaded"),
        _c(f"ck_{table}_local_version_positive", row, local_version=0),
        _c(f"ck_{table}_soft_delete_complete", row, deleted_at=NOW),
        _c(f"ck_{table}_soft_delete_complete", row, deleted_at=NOW, deleted_by="u-admin"),
        _c(f"ck_{table}_soft_delete_complete", row, deleted_reason="duplicate"),
    ]


CHECK_CASES: list[CheckCase] = [
    # users
    _c("ck_users_role_valid", "users", role="root"),
    _c("ck_users_failed_attempts_non_negative", "users", failed_attempts=-1),
    _c("ck_users_pin_grace_needs_pin", "users", pin_hash=None),
    # treatments
    *_sync_cases("insertion", "treatments"),
    *_sync_cases("removal", "treatments"),
    # A type outside the list always breaks one of the two link rules too: a removal must link an
    # insertion and an insertion must not, so no third type can satisfy both.
    _c(
        "ck_treatments_type_valid",
        "removal",
        ("ck_treatments_insertion_has_no_insertion_link",),
        type="biopsy",
    ),
    _c("ck_treatments_type_valid", "insertion", ("ck_treatments_removal_links_insertion",), type="biopsy"),
    _c("ck_treatments_indication_valid", "insertion", indication="liver"),
    _c("ck_treatments_signature_mode_valid", "insertion", signature_mode="fingerprint"),
    _c("ck_treatments_signature_status_valid", "insertion", signature_status="probably"),
    _c("ck_treatments_planned_seeds_non_negative", "insertion", planned_seeds=-1),
    _c("ck_treatments_activity_non_negative", "insertion", activity_per_seed=-0.5),
    _c("ck_treatments_completion_signed", "insertion", signer_name=None),
    _c("ck_treatments_completion_signed", "insertion", signed_at=None),
    _c("ck_treatments_completion_signed", "insertion", signature_mode=None),
    _c("ck_treatments_completion_signed", "insertion", completed_by=None),
    _c("ck_treatments_completion_signed", "insertion", completed_at=None),
    _c("ck_treatments_completion_signed", "removal", is_complete=True),
    _c("ck_treatments_completion_signed", "removal", completed_by="u-nurse"),
    _c("ck_treatments_removal_links_insertion", "removal", insertion_treatment_id=None),
    _c("ck_treatments_insertion_has_no_insertion_link", "insertion", insertion_treatment_id=INSERTION_ID),
    _c("ck_treatments_only_insertions_continue", "removal", parent_treatment_id=INSERTION_ID),
    _c("ck_treatments_gap_amounts_non_negative", "removal", gap_lost=-1),
    _c("ck_treatments_gap_amounts_non_negative", "removal", gap_retrieved=-1),
    _c("ck_treatments_gap_amounts_non_negative", "removal", gap_in_tissue=-1),
    _c("ck_treatments_gap_amounts_non_negative", "removal", gap_other=-1),
    _c("ck_treatments_gap_other_described", "removal", gap_other_text=None),
    _c("ck_treatments_gap_other_described", "removal", gap_other_text=""),
    _c("ck_treatments_removal_other_day_explained", "removal", removal_other_date=None),
    _c("ck_treatments_removal_other_day_explained", "removal", removal_other_reason=None),
    # applicator_packages
    *_sync_cases("applicator_packages", "applicator_packages"),
    _c("ck_applicator_packages_capacity_non_negative", "applicator_packages", capacity=-1),
    # applicators
    *_sync_cases("applicators", "applicators"),
    _c("ck_applicators_status_valid", "applicators", status="BROKEN", deployed_seeds=0),
    # No deployed count fits a negative capacity, so the capacity rule fails with it.
    _c(
        "ck_applicators_seed_quantity_non_negative",
        "applicators",
        ("ck_applicators_deployed_within_capacity",),
        status="SEALED",
        seed_quantity=-1,
        deployed_seeds=0,
    ),
    _c(
        "ck_applicators_deployed_within_capacity",
        "applicators",
        status="FAULTY",
        comments="2 seeds stuck",
        deployed_seeds=11,
    ),
    _c(
        "ck_applicators_deployed_within_capacity",
        "applicators",
        status="FAULTY",
        comments="2 seeds stuck",
        deployed_seeds=-1,
    ),
    _c("ck_applicators_deployed_matches_status", "applicators", deployed_seeds=7),  # INSERTED, partial
    _c("ck_applicators_deployed_matches_status", "applicators", status="LOADED", deployed_seeds=3),
    _c("ck_applicators_deployed_matches_status", "applicators", status="SEALED", deployed_seeds=10),
    *(
        _c("ck_applicators_terminal_comment_present", "applicators", status=s, deployed_seeds=0, comments=c)
        for s in ("DISPOSED", "DISCHARGED", "DEPLOYMENT_FAILURE")
        for c in (None, "")
    ),
    _c("ck_applicators_terminal_comment_present", "applicators", status="FAULTY", deployed_seeds=4),
    _c("ck_applicators_removal_complete", "applicators", removal_time=None),
    _c("ck_applicators_removal_complete", "applicators", removed_by=None),
    _c("ck_applicators_removal_complete", "applicators", removal_treatment_id=None),
    _c("ck_applicators_amendment_reasoned", "applicators", amended_at=NOW, amended_by="u-admin"),
    _c("ck_applicators_amendment_reasoned", "applicators", amended_at=NOW, amendment_reason="typo"),
    _c("ck_applicators_scan_outcome_valid", "applicators", scan_outcome="used_elsewhere"),
    # removed_seeds
    *_sync_cases("removed_seeds", "removed_seeds"),
    _c("ck_removed_seeds_reason_valid", "removed_seeds", reason="curiosity"),
    _c("ck_removed_seeds_other_reason_described", "removed_seeds", reason="other", reason_text=None),
    _c("ck_removed_seeds_other_reason_described", "removed_seeds", reason="other", reason_text=""),
    # sync_queue
    _c("ck_sync_queue_status_valid", "sync_queue", status="lost"),
    _c("ck_sync_queue_kind_valid", "sync_queue", kind="upsert"),
    _c("ck_sync_queue_table_name_valid", "sync_queue", table_name="users"),
    _c("ck_sync_queue_priority_range", "sync_queue", priority=0),
    _c("ck_sync_queue_priority_range", "sync_queue", priority=6),
    _c("ck_sync_queue_device_seq_positive", "sync_queue", device_seq=0),
    _c("ck_sync_queue_attempts_non_negative", "sync_queue", attempts=-1),
    # sync_conflicts
    _c("ck_sync_conflicts_status_valid", "sync_conflicts", status="closed"),
    _c("ck_sync_conflicts_resolution_valid", "sync_conflicts", resolution="coin_flip"),
    _c("ck_sync_conflicts_table_name_valid", "sync_conflicts", table_name="audit_logs"),
    _c("ck_sync_conflicts_closed_has_resolution", "sync_conflicts", rule=None),
    _c(
        "ck_sync_conflicts_closed_has_resolution",
        "sync_conflicts",
        status="auto_resolved",
        resolved_at=None,
        is_safety=False,
    ),
    _c("ck_sync_conflicts_safety_held_for_person", "sync_conflicts", status="auto_resolved"),
    _c("ck_sync_conflicts_resolved_by_person", "sync_conflicts", resolved_by=None),
    _c("ck_sync_conflicts_resolved_by_person", "sync_conflicts", resolution=None),
    # validation_cache
    _c("ck_validation_cache_cache_type_valid", "validation_cache", cache_type="rumour"),
    # device_state
    _c("ck_device_state_single_row", "device_state", id=2),
]


def _integer_key(table: str, column: str) -> bool:
    col = metadata.tables[table].c[column]
    return col.primary_key and isinstance(col.type, Integer)


# Every NOT NULL column, from the models. An INTEGER PRIMARY KEY is SQLite's rowid, where NULL means
# "assign the next one", so those are left out (device_state's single row is held by its CHECK).
NOT_NULL_COLUMNS = [
    (table.name, column.name)
    for table in metadata.sorted_tables
    for column in table.columns
    if not column.nullable and not _integer_key(table.name, column.name)
]
# Any valid row of the table will do to start from.
ROW_OF_TABLE = {table: name for name, (table, _row) in reversed(VALID_ROWS.items())}

# The foreign-key columns, and which valid row to break each one in: a treatment's link to its
# insertion is only legal on a removal.
FOREIGN_KEYS = [
    (table.name, fk.parent.name)
    for table in metadata.sorted_tables
    for constraint in table.constraints
    if isinstance(constraint, ForeignKeyConstraint)
    for fk in constraint.elements
]
FK_ROW = {("treatments", "insertion_treatment_id"): "removal"}


# --- helpers ------------------------------------------------------------------------------------
def driver_value(value: Any, dialect: str) -> Any:
    """What the DBAPI driver gets: SQLite stores UTC datetimes as text the way SQLAlchemy does."""
    if dialect == "sqlite":
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, bool):
            return int(value)
    return value


def _marker(name: str, dialect: str) -> str:
    return f":{name}" if dialect == "sqlite" else f"%({name})s"


def insert_row(conn: Connection, table: str, row: dict[str, Any]) -> None:
    """INSERT with plain SQL through the DBAPI driver: no ORM, no column types, no defaults."""
    dialect = conn.dialect.name
    columns = ", ".join(row)
    markers = ", ".join(_marker(c, dialect) for c in row)
    conn.exec_driver_sql(
        f"INSERT INTO {table} ({columns}) VALUES ({markers})",
        {c: driver_value(v, dialect) for c, v in row.items()},
    )


def update_row(conn: Connection, table: str, key: dict[str, Any], changes: dict[str, Any]) -> None:
    dialect = conn.dialect.name
    # The new values are bound as new_<column> so a changed key column does not clash with the WHERE.
    sets = ", ".join(f"{c} = {_marker('new_' + c, dialect)}" for c in changes)
    where = " AND ".join(f"{c} = {_marker('key_' + c, dialect)}" for c in key)
    params = {f"new_{c}": driver_value(v, dialect) for c, v in changes.items()}
    params |= {f"key_{c}": driver_value(v, dialect) for c, v in key.items()}
    conn.exec_driver_sql(f"UPDATE {table} SET {sets} WHERE {where}", params)


def key_of(name: str) -> dict[str, Any]:
    table, row = VALID_ROWS[name]
    if table == "validation_cache":
        return {"cache_type": row["cache_type"], "cache_key": row["cache_key"]}
    if table == "audit_logs":
        return {"event_id": row["event_id"]}
    pk = "op_id" if table == "sync_queue" else "id"
    return {pk: row[pk]}


def insert_valid_rows(conn: Connection, names: list[str]) -> None:
    for name in names:
        table, row = VALID_ROWS[name]
        insert_row(conn, table, row)


def scalar(conn: Connection, sql: str, *params: Any) -> Any:
    return conn.exec_driver_sql(sql, params).scalar()


def violated_checks(conn: Connection, table: str, row: dict[str, Any]) -> set[str]:
    """Evaluate every CHECK of `table`, as the database stores it, against `row` (SQLite)."""
    columns = ", ".join(f":{c} AS {c}" for c in row)
    params = {c: driver_value(v, "sqlite") for c, v in row.items()}
    violated = set()
    for check in inspect(conn).get_check_constraints(table):
        # A CHECK passes when its expression is true or NULL; only false refuses the row.
        result = conn.exec_driver_sql(f"SELECT ({check['sqltext']}) FROM (SELECT {columns})", params).scalar()
        if result is not None and not result:
            violated.add(check["name"])
    return violated


def _refusal(write: Any) -> str:
    """The message of the IntegrityError that `write` must raise."""
    with pytest.raises(IntegrityError) as refused:
        write()
    return str(refused.value.orig)


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrated once with store.migrate and filled with the valid rows; each test works on a copy."""
    path = tmp_path_factory.mktemp("constraints") / "station.db"
    migrate(path)
    engine = make_engine(path, pool_size=1)
    with engine.begin() as conn:
        insert_valid_rows(conn, TEMPLATE_ROWS)
    with engine.connect() as conn:
        # Fold the WAL into the main file so that copying the main file copies every row.
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture
def db(template_db: Path, tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "station.db"
    shutil.copyfile(template_db, path)
    engine = make_engine(path)
    yield engine
    engine.dispose()


# --- meta-tests: the tables below cover the schema ------------------------------------------------
def test_every_check_constraint_has_a_bad_row_case() -> None:
    declared = {
        c.name
        for table in metadata.tables.values()
        for c in table.constraints
        if isinstance(c, CheckConstraint)
    }
    covered = {case.constraint for case in CHECK_CASES}
    assert declared - covered == set(), "CHECK constraints without a bad-row case"
    assert covered - declared == set(), "cases for CHECK constraints that do not exist"


def _same_order_in_lists(sqltext: str) -> str:
    # models.py builds one IN list from a frozenset, whose order changes with the interpreter's hash
    # seed; the order of an IN list means nothing, so it is sorted before comparing.
    return re.sub(r"IN \(([^)]*)\)", lambda m: f"IN ({', '.join(sorted(m[1].split(', ')))})", sqltext)


def test_every_check_constraint_of_the_models_is_in_the_migrated_database(db: Engine) -> None:
    with db.connect() as conn:
        for table in metadata.sorted_tables:
            in_db = {
                c["name"]: _same_order_in_lists(c["sqltext"])
                for c in inspect(conn).get_check_constraints(table.name)
            }
            declared = {
                c.name: _same_order_in_lists(str(c.sqltext))
                for c in table.constraints
                if isinstance(c, CheckConstraint)
            }
            assert in_db == declared, table.name


@pytest.mark.parametrize("case", CHECK_CASES, ids=lambda c: c.id)
def test_each_case_breaks_exactly_the_constraints_it_names(db: Engine, case: CheckCase) -> None:
    # Guards the table itself: a case that broke some other rule would prove nothing about its own.
    with db.connect() as conn:
        row = fresh_row(case.row, **case.mutation)
        assert violated_checks(conn, case.table, row) == {case.constraint, *case.also}
        assert violated_checks(conn, case.table, fresh_row(case.row)) == set()


# --- valid rows -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VALID_ROWS))
def test_a_valid_row_is_accepted(db: Engine, name: str) -> None:
    table, _ = VALID_ROWS[name]
    with db.begin() as conn:
        insert_row(conn, table, fresh_row(name))
    with db.connect() as conn:
        key = {
            "users": "id",
            "sync_queue": "op_id",
            "validation_cache": "cache_key",
            "audit_logs": "event_id",
        }
        column = key.get(table, "id")
        assert scalar(conn, f"SELECT count(*) FROM {table} WHERE {column} = ?", fresh_row(name)[column]) == 1


# --- CHECK constraints --------------------------------------------------------------------------
@pytest.mark.parametrize("case", CHECK_CASES, ids=lambda c: c.id)
def test_check_refuses_a_bad_insert(db: Engine, case: CheckCase) -> None:
    with db.connect() as conn:
        message = _refusal(lambda: insert_row(conn, case.table, fresh_row(case.row, **case.mutation)))
    assert "CHECK constraint failed" in message
    named = message.rsplit(":", 1)[-1].strip()
    assert named in {case.constraint, *case.also}, message


@pytest.mark.parametrize("case", CHECK_CASES, ids=lambda c: c.id)
def test_check_refuses_a_bad_update(db: Engine, case: CheckCase) -> None:
    with db.begin() as conn:
        if case.row == "device_state":
            insert_valid_rows(conn, ["device_state"])
    with db.connect() as conn:
        message = _refusal(lambda: update_row(conn, case.table, key_of(case.row), case.mutation))
        conn.rollback()
        # The refused UPDATE changed nothing.
        columns = ", ".join(case.mutation)
        where = " AND ".join(f"{c} = :{c}" for c in key_of(case.row))
        params = {c: driver_value(v, "sqlite") for c, v in key_of(case.row).items()}
        stored = conn.exec_driver_sql(f"SELECT {columns} FROM {case.table} WHERE {where}", params).one()
    assert "CHECK constraint failed" in message
    assert message.rsplit(":", 1)[-1].strip() in {case.constraint, *case.also}, message
    original = VALID_ROWS[case.row][1]
    assert tuple(stored) == tuple(driver_value(original[c], "sqlite") for c in case.mutation)


# --- NOT NULL -----------------------------------------------------------------------------------
def test_not_null_columns_match_the_design() -> None:
    # A spot check that the enumeration below really reads the models: clinical identity columns are
    # required, and so is every column of the sync metadata a row cannot be synced without.
    for required in [
        ("applicators", "serial_number"),
        ("applicators", "treatment_id"),
        ("applicators", "status"),
        ("treatments", "subject_hash"),
        ("treatments", "site"),
        ("audit_logs", "hash"),
        ("audit_logs", "prev_hash"),
        ("sync_queue", "payload"),
    ]:
        assert required in NOT_NULL_COLUMNS


@pytest.mark.parametrize(("table", "column"), NOT_NULL_COLUMNS, ids=lambda v: v)
def test_not_null_refuses_null(db: Engine, table: str, column: str) -> None:
    with db.connect() as conn:
        row = fresh_row(ROW_OF_TABLE[table], **{column: None})
        message = _refusal(lambda: insert_row(conn, table, row))
    assert message == f"NOT NULL constraint failed: {table}.{column}"


SERVER_DEFAULTS = [
    (table.name, column.name, column.server_default.arg.text)  # type: ignore[union-attr]
    for table in metadata.sorted_tables
    for column in table.columns
    if column.server_default is not None and not column.computed
]


@pytest.mark.parametrize(("table", "column", "default"), SERVER_DEFAULTS, ids=lambda v: v)
def test_a_left_out_column_gets_its_server_default(db: Engine, table: str, column: str, default: str) -> None:
    # A completed treatment must say so: the default (not complete) fits the open removal.
    row = fresh_row("removal" if table == "treatments" else ROW_OF_TABLE[table])
    del row[column]
    key = "op_id" if table == "sync_queue" else "id"
    with db.begin() as conn:
        insert_row(conn, table, row)
        stored = scalar(conn, f"SELECT {column} FROM {table} WHERE {key} = ?", row[key])
    assert stored == {"true": 1, "false": 0}[default]


# --- foreign keys -------------------------------------------------------------------------------
def test_every_foreign_key_is_on_delete_restrict(db: Engine) -> None:
    with db.connect() as conn:
        in_db = {
            (table.name, fk[3]): fk[6]
            for table in metadata.sorted_tables
            for fk in conn.exec_driver_sql(f"PRAGMA foreign_key_list({table.name})").fetchall()
        }
    assert set(in_db) == set(FOREIGN_KEYS)
    assert set(in_db.values()) == {"RESTRICT"}, in_db


@pytest.mark.parametrize(("table", "column"), FOREIGN_KEYS, ids=lambda v: v)
def test_foreign_key_refuses_an_unknown_parent(db: Engine, table: str, column: str) -> None:
    name = FK_ROW.get((table, column), ROW_OF_TABLE[table])
    with db.connect() as conn:
        row = fresh_row(name, **{column: "no-such-row"})
        message = _refusal(lambda: insert_row(conn, table, row))
    assert message == "FOREIGN KEY constraint failed"


def test_an_applicator_of_an_unknown_treatment_is_refused(db: Engine) -> None:
    with db.connect() as conn:
        row = fresh_row("applicators", treatment_id="trt-unknown")
        message = _refusal(lambda: insert_row(conn, "applicators", row))
    assert message == "FOREIGN KEY constraint failed"


def test_a_treatment_with_applicators_cannot_be_deleted(db: Engine) -> None:
    # Its own treatment and applicator, so that nothing but this applicator holds the treatment.
    treatment = fresh_row("insertion", id="trt-held")
    applicator = fresh_row(
        "applicators",
        id="app-held",
        treatment_id="trt-held",
        package_id=None,
        is_removed=False,
        removal_treatment_id=None,
        removal_time=None,
        removed_by=None,
    )
    with db.begin() as conn:
        insert_row(conn, "treatments", treatment)
        insert_row(conn, "applicators", applicator)
    with db.connect() as conn:
        message = _refusal(lambda: conn.exec_driver_sql("DELETE FROM treatments WHERE id = 'trt-held'"))
        conn.rollback()
        # RESTRICT, not CASCADE: the applicator is still there.
        assert scalar(conn, "SELECT count(*) FROM applicators WHERE treatment_id = 'trt-held'") == 1
    assert message == "FOREIGN KEY constraint failed"
    # The applicator was the only thing in the way.
    with db.begin() as conn:
        conn.exec_driver_sql("DELETE FROM applicators WHERE id = 'app-held'")
        conn.exec_driver_sql("DELETE FROM treatments WHERE id = 'trt-held'")
        assert scalar(conn, "SELECT count(*) FROM treatments WHERE id = 'trt-held'") == 0


# --- one live serial per treatment ----------------------------------------------------------------
def test_the_same_serial_twice_live_in_one_treatment_is_refused(db: Engine) -> None:
    with db.connect() as conn:
        duplicate = fresh_row("applicators", serial_number=SERIAL)
        message = _refusal(lambda: insert_row(conn, "applicators", duplicate))
    assert message == "UNIQUE constraint failed: applicators.treatment_id, applicators.serial_number"


def test_the_same_serial_is_allowed_again_once_the_first_is_soft_deleted(db: Engine) -> None:
    with db.begin() as conn:
        update_row(
            conn,
            "applicators",
            {"id": APPLICATOR_ID},
            {"deleted_at": NOW, "deleted_by": "u-admin", "deleted_reason": "scanned by mistake"},
        )
        insert_row(conn, "applicators", fresh_row("applicators", serial_number=SERIAL))
        rows = conn.exec_driver_sql(
            "SELECT deleted_at IS NULL FROM applicators WHERE treatment_id = ? AND serial_number = ?",
            (INSERTION_ID, SERIAL),
        ).scalars()
        assert sorted(rows) == [0, 1]
    # ...but only one of them may be live.
    with db.connect() as conn:
        third = fresh_row("applicators", id="app-third", serial_number=SERIAL)
        message = _refusal(lambda: insert_row(conn, "applicators", third))
    assert message.startswith("UNIQUE constraint failed")


# --- usage is generated from status --------------------------------------------------------------
_STATUS_ROWS: dict[ApplicatorStatus, dict[str, Any]] = {
    ApplicatorStatus.INSERTED: {"deployed_seeds": 10},
    ApplicatorStatus.FAULTY: {"deployed_seeds": 4, "comments": "jammed after 4 seeds"},
}
EXPECTED_USAGE = {ApplicatorStatus.INSERTED: "full", ApplicatorStatus.FAULTY: "faulty"}


@pytest.mark.parametrize("status", list(ApplicatorStatus))
def test_usage_follows_status(db: Engine, status: ApplicatorStatus) -> None:
    extra = _STATUS_ROWS.get(status, {"deployed_seeds": 0, "comments": "package damaged"})
    with db.begin() as conn:
        insert_row(conn, "applicators", fresh_row("applicators", status=status.value, **extra))
        usage = scalar(conn, "SELECT usage FROM applicators WHERE id = 'app-fresh'")
    assert usage == EXPECTED_USAGE.get(status, "none")
    assert usage == status.usage.value  # the database and the Python enum agree


def test_usage_changes_when_status_changes(db: Engine) -> None:
    row = fresh_row("applicators", status="LOADED", deployed_seeds=0)
    with db.begin() as conn:
        insert_row(conn, "applicators", row)
        assert scalar(conn, "SELECT usage FROM applicators WHERE id = 'app-fresh'") == "none"
        update_row(conn, "applicators", {"id": "app-fresh"}, {"status": "INSERTED", "deployed_seeds": 10})
        assert scalar(conn, "SELECT usage FROM applicators WHERE id = 'app-fresh'") == "full"


def test_usage_cannot_be_written(db: Engine) -> None:
    with db.connect() as conn:
        with pytest.raises(OperationalError, match='cannot INSERT into generated column "usage"'):
            insert_row(conn, "applicators", fresh_row("applicators", usage="none"))
        with pytest.raises(OperationalError, match='cannot UPDATE generated column "usage"'):
            update_row(conn, "applicators", {"id": APPLICATOR_ID}, {"usage": "none"})
        conn.rollback()
        assert scalar(conn, "SELECT usage FROM applicators WHERE id = ?", APPLICATOR_ID) == "full"


# --- updated_at is kept by the database ------------------------------------------------------------
TOUCHED_TABLES = [t.name for t in metadata.sorted_tables if "updated_at" in t.c]


def _stored_time(conn: Connection, table: str, row_id: str) -> datetime:
    text = scalar(conn, f"SELECT updated_at FROM {table} WHERE id = ?", row_id)
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("table", TOUCHED_TABLES)
def test_updated_at_is_refreshed_when_an_update_leaves_it_out(db: Engine, table: str) -> None:
    name = ROW_OF_TABLE[table]
    row_id = VALID_ROWS[name][1]["id"]
    # Any column the update can change without breaking a rule.
    change = {"users": {"phone": "+972-3-555-0101"}}.get(table, {"hlc": HLC.replace("-000000-", "-000001-")})
    before = datetime.now(UTC)
    with db.begin() as conn:
        update_row(conn, table, {"id": row_id}, change)
    after = datetime.now(UTC)
    with db.connect() as conn:
        refreshed = _stored_time(conn, table, row_id)
    assert refreshed != NOW
    # The trigger stamps the database's clock with millisecond precision.
    assert before - timedelta(milliseconds=5) <= refreshed <= after + timedelta(milliseconds=5)


@pytest.mark.parametrize("table", TOUCHED_TABLES)
def test_updated_at_set_by_the_writer_is_kept(db: Engine, table: str) -> None:
    row_id = VALID_ROWS[ROW_OF_TABLE[table]][1]["id"]
    chosen = NOW + timedelta(days=3, microseconds=123456)  # the station's injectable clock wins
    with db.begin() as conn:
        update_row(conn, table, {"id": row_id}, {"updated_at": chosen})
    with db.connect() as conn:
        assert _stored_time(conn, table, row_id) == chosen


# --- the audit log is append-only -----------------------------------------------------------------
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_logs SET action = 'nothing_happened' WHERE event_id = 'evt-1'",
        "UPDATE audit_logs SET hash = prev_hash",
        "DELETE FROM audit_logs WHERE event_id = 'evt-1'",
        "DELETE FROM audit_logs",
    ],
)
def test_audit_logs_refuse_update_and_delete(db: Engine, statement: str) -> None:
    with db.connect() as conn:
        message = _refusal(lambda: conn.exec_driver_sql(statement))
        conn.rollback()
        row = conn.exec_driver_sql("SELECT action, hash FROM audit_logs WHERE event_id = 'evt-1'").one()
    assert message == "audit_logs is append-only"
    assert tuple(row) == ("applicator_scanned", "c" * 64)


def test_audit_logs_accept_new_entries(db: Engine) -> None:
    with db.begin() as conn:
        insert_row(conn, "audit_logs", fresh_row("audit_logs"))
        assert scalar(conn, "SELECT count(*) FROM audit_logs") == 2


# --- treatment_progress derives the counts ---------------------------------------------------------
def _applicator(n: int, treatment_id: str, status: str, deployed: int, **extra: Any) -> dict[str, Any]:
    comments = None if status in ("SEALED", "OPENED", "LOADED", "INSERTED") else "see notes"
    return fresh_row(
        "applicators",
        id=f"app-p{n}",
        treatment_id=treatment_id,
        serial_number=f"DART-P-{n:05d}",
        status=status,
        deployed_seeds=deployed,
        comments=comments,
        package_id=None,
        is_removed=False,
        removal_treatment_id=None,
        removal_time=None,
        removed_by=None,
        **extra,
    )


def test_treatment_progress_derives_counts_from_rows(db: Engine) -> None:
    deleted = {"deleted_at": NOW, "deleted_by": "u-admin", "deleted_reason": "duplicate scan"}
    with db.begin() as conn:
        insert_row(
            conn, "treatments", fresh_row("insertion", id="trt-p", planned_seeds=80, activity_per_seed=2.5)
        )
        insert_row(conn, "treatments", fresh_row("insertion", id="trt-empty", planned_seeds=None))
        insert_row(conn, "treatments", fresh_row("insertion", id="trt-gone", **deleted))
        for row in [
            _applicator(1, "trt-p", "INSERTED", 10),
            _applicator(2, "trt-p", "INSERTED", 10),
            _applicator(3, "trt-p", "FAULTY", 3),
            _applicator(4, "trt-p", "SEALED", 0),
            _applicator(5, "trt-p", "DISPOSED", 0),
            _applicator(6, "trt-p", "INSERTED", 10, **deleted),  # soft-deleted: not counted
            _applicator(7, "trt-gone", "INSERTED", 10),
        ]:
            insert_row(conn, "applicators", row)
    with db.connect() as conn:
        rows = {
            r["treatment_id"]: r for r in conn.exec_driver_sql("SELECT * FROM treatment_progress").mappings()
        }
    assert "trt-gone" not in rows  # a soft-deleted treatment has no progress
    progress = rows["trt-p"]
    assert progress["applicator_count"] == 5
    assert progress["deployed_seeds"] == 23
    assert progress["total_activity"] == pytest.approx(57.5)
    assert progress["percent_deployed"] == pytest.approx(100 * 23 / 80)
    counts = {s.value: progress[f"n_{s.value.lower()}"] for s in ApplicatorStatus}
    assert counts == {
        "SEALED": 1,
        "OPENED": 0,
        "LOADED": 0,
        "INSERTED": 2,
        "FAULTY": 1,
        "DISPOSED": 1,
        "DISCHARGED": 0,
        "DEPLOYMENT_FAILURE": 0,
    }
    empty = rows["trt-empty"]
    assert (empty["applicator_count"], empty["deployed_seeds"], empty["percent_deployed"]) == (0, 0, None)
    # The template's insertion: one applicator, inserted, 10 of 80 seeds.
    assert rows[INSERTION_ID]["deployed_seeds"] == 10
    assert rows[INSERTION_ID]["percent_deployed"] == pytest.approx(12.5)


def test_treatment_progress_follows_a_status_change(db: Engine) -> None:
    with db.begin() as conn:
        insert_row(conn, "treatments", fresh_row("insertion", id="trt-p", planned_seeds=20))
        insert_row(conn, "applicators", _applicator(1, "trt-p", "LOADED", 0))
        before = scalar(conn, "SELECT deployed_seeds FROM treatment_progress WHERE treatment_id = 'trt-p'")
        update_row(conn, "applicators", {"id": "app-p1"}, {"status": "INSERTED", "deployed_seeds": 10})
        after = conn.exec_driver_sql(
            "SELECT deployed_seeds, percent_deployed, n_loaded, n_inserted FROM treatment_progress "
            "WHERE treatment_id = 'trt-p'"
        ).one()
    assert before == 0
    assert tuple(after) == (10, pytest.approx(50.0), 0, 1)


# --- conflicts the sync engine must be able to record ------------------------------------------------
def test_an_open_conflict_needs_no_resolved_value_and_may_have_no_base(db: Engine) -> None:
    # An open conflict has not been resolved, and a conflict on a field the base row did not have
    # (an insert) has no base value: the model declares these columns `default=None`, so the rows the
    # sync engine will write must fit the table.
    conflict = fresh_row(
        "sync_conflicts",
        status="open",
        rule=None,
        resolved_at=None,
        resolved_by=None,
        resolution=None,
        resolved_value=None,
        base_value=None,
        is_safety=False,
    )
    with db.begin() as conn:
        insert_row(conn, "sync_conflicts", conflict)
        assert scalar(conn, "SELECT status FROM sync_conflicts WHERE id = 'conf-fresh'") == "open"


def test_a_safety_conflict_is_never_resolved_automatically(db: Engine) -> None:
    # Invariant 5 (architecture.md): safety-critical fields are held for a person and never resolved
    # automatically. Like every other rule that makes a row wrong, the database should refuse it.
    auto_resolved_safety = fresh_row(
        "sync_conflicts", status="auto_resolved", resolved_by=None, is_safety=True
    )
    with db.connect() as conn:
        message = _refusal(lambda: insert_row(conn, "sync_conflicts", auto_resolved_safety))
    assert message.startswith("CHECK constraint failed: ck_sync_conflicts_")
