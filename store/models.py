"""The station's tables (SQLModel), with their constraints kept inside the database.

Every rule that would make a row wrong is a CHECK, NOT NULL or foreign key here, so a bug in
Python, a hand-edited database or a future migration cannot write a row the design forbids.

- Keys are UUID strings generated on the device, so offline laptops never collide.
- Clinical rows ("core rows") carry sync metadata and are soft-deleted, never deleted.
- Patient identifiers are stored encrypted (`*_enc`) with a keyed hash for look-ups (`*_hash`).
- Foreign keys between clinical rows are ON DELETE RESTRICT: clinical records are never removed
  by a cascade (a batch migration with cascades once deleted every child row; style.md).
- Counts and percentages are derived (the `treatment_progress` view), never stored.
"""

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    Float,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from store.enums import (
    TERMINAL_STATUSES,
    ApplicatorStatus,
    CacheType,
    ConflictResolution,
    ConflictStatus,
    Indication,
    OperationKind,
    QueueStatus,
    Role,
    RowSyncStatus,
    SeedRemovalReason,
    SignatureMode,
    SignatureStatus,
    TreatmentType,
    sql_in,
)
from store.types import JSONText, UTCDateTime

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

CORE_TABLES = ("treatments", "applicators", "applicator_packages", "removed_seeds")
# What the sync queue carries: clinical changes, and incidents the cloud must hear of (store/incidents.py).
QUEUED_TABLES = (*CORE_TABLES, "incidents")


def _check(condition: str, name: str) -> CheckConstraint:
    return CheckConstraint(condition, name=name)


def _enum_check(column: str, values: Any, *, nullable: bool = False) -> CheckConstraint:
    condition = f"{column} IN ({sql_in(values)})"
    if nullable:
        condition = f"{column} IS NULL OR {condition}"
    return _check(condition, f"{column}_valid")


def _sync_checks() -> tuple[CheckConstraint, ...]:
    return (
        _enum_check("sync_status", RowSyncStatus),
        _check("local_version >= 1", "local_version_positive"),
        _check(
            "(deleted_at IS NULL AND deleted_by IS NULL AND deleted_reason IS NULL)"
            " OR (deleted_at IS NOT NULL AND deleted_by IS NOT NULL AND deleted_reason IS NOT NULL)",
            "soft_delete_complete",
        ),
    )


def _bool(default: bool = False) -> Any:
    return Field(
        default=default,
        sa_type=Boolean,
        nullable=False,
        sa_column_kwargs={"server_default": text("true" if default else "false")},
    )


class SyncedRow(SQLModel):
    """Sync metadata and soft delete, shared by every clinical table."""

    device_id: str = Field(nullable=False, max_length=64)  # the device that created the row
    local_version: int = Field(default=1, nullable=False)
    cloud_version: int | None = Field(default=None)
    sync_status: str = Field(default=RowSyncStatus.PENDING, nullable=False, max_length=16)
    hlc: str = Field(nullable=False, max_length=64)  # hybrid logical clock of the last change
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    updated_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    deleted_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    deleted_by: str | None = Field(default=None, max_length=64)
    deleted_reason: str | None = Field(default=None)


# --- users: who may work at this station (from the validation bundle)
class User(SQLModel, table=True):
    __tablename__: ClassVar[str] = "users"
    __table_args__ = (
        _enum_check("role", Role),
        _check("failed_attempts >= 0", "failed_attempts_non_negative"),
        _check("pin_hash IS NOT NULL OR pin_valid_until IS NULL", "pin_grace_needs_pin"),
    )

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(nullable=False)
    email: str | None = Field(default=None, index=True)
    phone: str | None = Field(default=None)
    position: str | None = Field(default=None)
    role: str = Field(nullable=False, max_length=16)
    sites: list[str] = Field(default_factory=list, sa_type=JSONText, nullable=False)
    pin_hash: str | None = Field(default=None)  # argon2id; the PIN itself is never stored
    pin_valid_until: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    is_active: bool = _bool(True)
    failed_attempts: int = Field(default=0, nullable=False)
    last_login: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    updated_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)


# --- treatments: one insertion or removal procedure for one patient at one site
class Treatment(SyncedRow, table=True):
    __tablename__: ClassVar[str] = "treatments"
    __table_args__ = (
        *_sync_checks(),
        _enum_check("type", TreatmentType),
        _enum_check("indication", Indication),
        _enum_check("signature_mode", SignatureMode, nullable=True),
        _enum_check("signature_status", SignatureStatus, nullable=True),
        _check("planned_seeds IS NULL OR planned_seeds >= 0", "planned_seeds_non_negative"),
        _check("activity_per_seed IS NULL OR activity_per_seed >= 0", "activity_non_negative"),
        _check(
            "(NOT is_complete AND completed_by IS NULL AND completed_at IS NULL)"
            " OR (is_complete AND completed_by IS NOT NULL AND completed_at IS NOT NULL"
            " AND signer_name IS NOT NULL AND signed_at IS NOT NULL AND signature_mode IS NOT NULL"
            " AND signature_status IS NOT NULL)",
            "completion_signed",
        ),
        _check("type = 'insertion' OR insertion_treatment_id IS NOT NULL", "removal_links_insertion"),
        _check("type = 'removal' OR insertion_treatment_id IS NULL", "insertion_has_no_insertion_link"),
        _check("parent_treatment_id IS NULL OR type = 'insertion'", "only_insertions_continue"),
        _check(
            "(gap_lost IS NULL OR gap_lost >= 0) AND (gap_retrieved IS NULL OR gap_retrieved >= 0)"
            " AND (gap_in_tissue IS NULL OR gap_in_tissue >= 0) AND (gap_other IS NULL OR gap_other >= 0)",
            "gap_amounts_non_negative",
        ),
        _check(
            "gap_other IS NULL OR gap_other = 0 OR (gap_other_text IS NOT NULL AND gap_other_text <> '')",
            "gap_other_described",
        ),
        _check(
            "removal_all_same_day IS NULL OR removal_all_same_day"
            " OR (removal_other_date IS NOT NULL AND removal_other_reason IS NOT NULL)",
            "removal_other_day_explained",
        ),
        Index("ix_treatments_subject_hash_date", "subject_hash", "date"),
        Index("ix_treatments_type", "type"),
        Index("ix_treatments_started_at", "started_at"),
        Index(
            "ix_treatments_incomplete",
            "site",
            "date",
            sqlite_where=text("NOT is_complete"),
            postgresql_where=text("NOT is_complete"),
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    type: str = Field(nullable=False, max_length=16)
    indication: str = Field(default=Indication.UNKNOWN, nullable=False, max_length=16)
    subject_id_enc: str = Field(nullable=False)  # Priority order name(s), encrypted
    subject_hash: str = Field(nullable=False, max_length=64)  # keyed hash for look-ups
    patient_label_enc: str | None = Field(default=None)
    order_hashes: list[str] = Field(default_factory=list, sa_type=JSONText, nullable=False)
    needs_reconciliation: bool = _bool()  # started without a Priority order (emergency)
    site: str = Field(nullable=False, max_length=64)
    date: dt.date = Field(sa_type=Date, nullable=False)
    surgeon: str | None = Field(default=None)
    planned_seeds: int | None = Field(default=None)
    activity_per_seed: float | None = Field(default=None, sa_type=Float)  # µCi
    started_by: str = Field(nullable=False, max_length=64)
    started_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    is_complete: bool = _bool()
    completed_by: str | None = Field(default=None, max_length=64)
    completed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    parent_treatment_id: str | None = Field(default=None, foreign_key="treatments.id", ondelete="RESTRICT")
    insertion_treatment_id: str | None = Field(default=None, foreign_key="treatments.id", ondelete="RESTRICT")
    # signature
    signed_by_user_id: str | None = Field(default=None, max_length=64)
    signer_name: str | None = Field(default=None)
    signer_position: str | None = Field(default=None)
    signed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    signature_mode: str | None = Field(default=None, max_length=16)
    signature_status: str | None = Field(default=None, max_length=16)
    # removal form (removal treatments only)
    removal_date: dt.date | None = Field(default=None, sa_type=Date)
    removal_all_same_day: bool | None = Field(default=None, sa_type=Boolean)
    removal_other_date: dt.date | None = Field(default=None, sa_type=Date)
    removal_other_reason: str | None = Field(default=None)
    gap_lost: int | None = Field(default=None)
    gap_retrieved: int | None = Field(default=None)
    gap_in_tissue: int | None = Field(default=None)
    gap_other: int | None = Field(default=None)
    gap_other_text: str | None = Field(default=None)


# --- applicator_packages: four OPENED applicators of one capacity loaded together (P1, P2, ...)
class ApplicatorPackage(SyncedRow, table=True):
    __tablename__: ClassVar[str] = "applicator_packages"
    __table_args__ = (
        *_sync_checks(),
        _check("capacity >= 0", "capacity_non_negative"),
        UniqueConstraint("treatment_id", "label"),
    )

    id: str = Field(primary_key=True, max_length=36)
    treatment_id: str = Field(foreign_key="treatments.id", ondelete="RESTRICT", nullable=False, index=True)
    label: str = Field(nullable=False, max_length=16)
    capacity: int = Field(nullable=False)
    created_by: str = Field(nullable=False, max_length=64)


_DEPLOYED_MATCHES_STATUS = (
    "(status = 'INSERTED' AND deployed_seeds = seed_quantity)"
    " OR status = 'FAULTY'"
    " OR (status NOT IN ('INSERTED', 'FAULTY') AND deployed_seeds = 0)"
)
_USAGE_EXPR = "CASE status WHEN 'INSERTED' THEN 'full' WHEN 'FAULTY' THEN 'faulty' ELSE 'none' END"


# --- applicators: one scanned applicator in one treatment
class Applicator(SyncedRow, table=True):
    __tablename__: ClassVar[str] = "applicators"
    __table_args__ = (
        *_sync_checks(),
        _enum_check("status", ApplicatorStatus),
        _check("seed_quantity >= 0", "seed_quantity_non_negative"),
        _check("deployed_seeds >= 0 AND deployed_seeds <= seed_quantity", "deployed_within_capacity"),
        _check(_DEPLOYED_MATCHES_STATUS, "deployed_matches_status"),
        _check(
            f"status NOT IN ({sql_in(TERMINAL_STATUSES - {ApplicatorStatus.INSERTED})})"
            " OR (comments IS NOT NULL AND comments <> '')",
            "terminal_comment_present",
        ),
        _check(
            "NOT is_removed OR (removal_time IS NOT NULL AND removed_by IS NOT NULL"
            " AND removal_treatment_id IS NOT NULL)",
            "removal_complete",
        ),
        _check(
            "amended_at IS NULL OR (amended_by IS NOT NULL AND amendment_reason IS NOT NULL)",
            "amendment_reasoned",
        ),
        _check(
            "scan_outcome IN ('valid', 'wrong_treatment', 'previously_no_use', 'reused')",
            "scan_outcome_valid",
        ),
        Index("ix_applicators_serial_number", "serial_number"),
        Index("ix_applicators_treatment_id", "treatment_id"),
        Index(
            "uq_applicators_treatment_serial_live",
            "treatment_id",
            "serial_number",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    treatment_id: str = Field(foreign_key="treatments.id", ondelete="RESTRICT", nullable=False)
    serial_number: str = Field(nullable=False, max_length=128)
    gtin: str | None = Field(default=None, max_length=14)
    lot: str | None = Field(default=None, max_length=64)
    expiry_date: dt.date | None = Field(default=None, sa_type=Date)
    catalogue_number: str | None = Field(default=None)
    applicator_type: str | None = Field(default=None)
    seed_quantity: int = Field(nullable=False)  # capacity: seeds in the applicator
    seed_length: float | None = Field(default=None, sa_type=Float)
    status: str = Field(default=ApplicatorStatus.SEALED, nullable=False, max_length=24)
    # usage is derived from status by the database itself, so the two can never disagree
    usage: str | None = Field(
        default=None, sa_column=Column("usage", String(8), Computed(_USAGE_EXPR, persisted=True))
    )
    deployed_seeds: int = Field(default=0, nullable=False)
    comments: str | None = Field(default=None)
    photo_path: str | None = Field(default=None)
    status_changed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    scanned_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    scanned_by: str = Field(nullable=False, max_length=64)
    scan_outcome: str = Field(nullable=False, max_length=24)  # valid, or what the user confirmed
    scan_warnings: list[str] = Field(default_factory=list, sa_type=JSONText, nullable=False)
    bundle_version: str | None = Field(default=None, max_length=64)  # the cache that validated it
    package_id: str | None = Field(default=None, foreign_key="applicator_packages.id", ondelete="RESTRICT")
    reused_from_id: str | None = Field(default=None, foreign_key="applicators.id", ondelete="RESTRICT")
    is_removed: bool = _bool()
    removal_treatment_id: str | None = Field(default=None, foreign_key="treatments.id", ondelete="RESTRICT")
    removal_time: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    removed_by: str | None = Field(default=None, max_length=64)
    removal_comment: str | None = Field(default=None)
    removal_photo_path: str | None = Field(default=None)
    amended_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    amended_by: str | None = Field(default=None, max_length=64)
    amendment_reason: str | None = Field(default=None)


# --- removed_seeds: single seeds taken out during a removal, each with a reason
class RemovedSeed(SyncedRow, table=True):
    __tablename__: ClassVar[str] = "removed_seeds"
    __table_args__ = (
        *_sync_checks(),
        _enum_check("reason", SeedRemovalReason),
        _check(
            "reason <> 'other' OR (reason_text IS NOT NULL AND reason_text <> '')", "other_reason_described"
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    treatment_id: str = Field(foreign_key="treatments.id", ondelete="RESTRICT", nullable=False, index=True)
    reason: str = Field(nullable=False, max_length=24)
    reason_text: str | None = Field(default=None)
    removed_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    removed_by: str = Field(nullable=False, max_length=64)


# --- sync_queue: every local change waiting for (or confirmed by) the cloud
class SyncQueueEntry(SQLModel, table=True):
    __tablename__: ClassVar[str] = "sync_queue"
    __table_args__ = (
        _enum_check("status", QueueStatus),
        _enum_check("kind", OperationKind),
        _enum_check("table_name", list(QUEUED_TABLES)),
        _check("priority BETWEEN 1 AND 5", "priority_range"),
        _check("device_seq >= 1", "device_seq_positive"),
        _check("attempts >= 0", "attempts_non_negative"),
        UniqueConstraint("device_id", "device_seq"),
        Index("ix_sync_queue_status_priority_created_at", "status", "priority", "created_at"),
        Index("ix_sync_queue_record", "table_name", "record_id", "status"),
        Index("ix_sync_queue_treatment", "treatment_id", "status"),
    )

    op_id: str = Field(primary_key=True, max_length=36)
    device_id: str = Field(nullable=False, max_length=64)
    device_seq: int = Field(nullable=False)
    table_name: str = Field(nullable=False, max_length=32)
    record_id: str = Field(nullable=False, max_length=36)
    treatment_id: str | None = Field(default=None, max_length=36)  # for ordering behind a finalise
    kind: str = Field(nullable=False, max_length=8)
    payload: dict = Field(sa_type=JSONText, nullable=False)  # the full record after the change
    changed_fields: dict = Field(sa_type=JSONText, nullable=False)  # field -> [base, new]
    base_version: int | None = Field(default=None)  # the cloud version the change was made on
    hlc: str = Field(nullable=False, max_length=64)
    clock_offset_ms: int | None = Field(default=None)
    priority: int = Field(nullable=False)
    depends_on: list[str] = Field(default_factory=list, sa_type=JSONText, nullable=False)
    status: str = Field(default=QueueStatus.PENDING, nullable=False, max_length=16)
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None)
    result: dict | None = Field(default=None, sa_type=JSONText)
    server_version: int | None = Field(default=None)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    sent_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    # A person's decision on a conflict that this change carries to the cloud (store/resolution.py).
    resolution: dict | None = Field(default=None, sa_type=JSONText)


# --- sync_conflicts: a field both sides changed, resolved by a rule or held for a person
class SyncConflict(SQLModel, table=True):
    __tablename__: ClassVar[str] = "sync_conflicts"
    __table_args__ = (
        _enum_check("status", ConflictStatus),
        _enum_check("resolution", ConflictResolution, nullable=True),
        _enum_check("table_name", list(CORE_TABLES)),
        _check("status = 'open' OR (resolved_at IS NOT NULL AND rule IS NOT NULL)", "closed_has_resolution"),
        _check(
            "status <> 'resolved' OR (resolved_by IS NOT NULL AND resolution IS NOT NULL)",
            "resolved_by_person",
        ),
        # Invariant 5: a safety conflict is held for a person, never resolved by a rule.
        _check("NOT is_safety OR status <> 'auto_resolved'", "safety_held_for_person"),
        Index("ix_sync_conflicts_status", "status"),
        Index("ix_sync_conflicts_record", "table_name", "record_id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    table_name: str = Field(nullable=False, max_length=32)
    record_id: str = Field(nullable=False, max_length=36)
    field: str = Field(nullable=False, max_length=64)
    local_value: Any = Field(default=None, sa_type=JSONText, nullable=True)
    server_value: Any = Field(default=None, sa_type=JSONText, nullable=True)
    base_value: Any = Field(default=None, sa_type=JSONText, nullable=True)
    is_safety: bool = _bool()
    rule: str | None = Field(default=None, max_length=32)
    op_id: str | None = Field(default=None, foreign_key="sync_queue.op_id", ondelete="RESTRICT")
    cloud_conflict_id: str | None = Field(default=None, max_length=64)
    status: str = Field(default=ConflictStatus.OPEN, nullable=False, max_length=16)
    detected_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    resolved_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_by: str | None = Field(default=None, max_length=64)
    resolution: str | None = Field(default=None, max_length=16)
    resolved_value: Any = Field(default=None, sa_type=JSONText, nullable=True)
    reason: str | None = Field(default=None)


# --- validation_cache: the downloaded bundle that lets scans be checked offline
class ValidationCacheEntry(SQLModel, table=True):
    __tablename__: ClassVar[str] = "validation_cache"
    __table_args__ = (
        _enum_check("cache_type", CacheType),
        Index("ix_validation_cache_cache_type_cache_key", "cache_type", "cache_key", unique=True),
        Index("ix_validation_cache_valid_until", "valid_until"),
        Index("ix_validation_cache_site_day", "cache_type", "site", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    cache_type: str = Field(nullable=False, max_length=16)
    cache_key: str = Field(nullable=False, max_length=128)
    site: str | None = Field(default=None, max_length=64)
    day: dt.date | None = Field(default=None, sa_type=Date)
    payload: dict = Field(sa_type=JSONText, nullable=False)  # patient fields inside are encrypted
    bundle_version: str = Field(nullable=False, max_length=64)
    valid_until: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    fetched_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)


# --- audit_logs: append-only and hash-chained; the database refuses UPDATE and DELETE
class AuditLog(SQLModel, table=True):
    __tablename__: ClassVar[str] = "audit_logs"
    __table_args__ = (
        UniqueConstraint("device_id", "device_seq"),
        Index("ix_audit_logs_record", "table_name", "record_id"),
        Index("ix_audit_logs_created_at", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(nullable=False, unique=True, max_length=36)
    device_id: str = Field(nullable=False, max_length=64)
    device_seq: int = Field(nullable=False)  # position in this device's chain
    user_id: str | None = Field(default=None, max_length=64)
    action: str = Field(nullable=False, max_length=48)
    table_name: str | None = Field(default=None, max_length=32)
    record_id: str | None = Field(default=None, max_length=64)
    op_id: str | None = Field(default=None, max_length=36)
    old_values: dict | None = Field(default=None, sa_type=JSONText)
    new_values: dict | None = Field(default=None, sa_type=JSONText)
    reason: str | None = Field(default=None)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    prev_hash: str = Field(nullable=False, max_length=64)
    hash: str = Field(nullable=False, max_length=64)


# --- device_state: this station's identity and counters (exactly one row)
class DeviceState(SQLModel, table=True):
    __tablename__: ClassVar[str] = "device_state"
    __table_args__ = (_check("id = 1", "single_row"),)

    id: int = Field(default=1, primary_key=True)
    device_id: str = Field(nullable=False, max_length=64)
    last_device_seq: int = Field(default=0, nullable=False)  # sync_queue numbering
    last_audit_seq: int = Field(default=0, nullable=False)
    last_audit_hash: str = Field(nullable=False, max_length=64)
    hlc_wall_ms: int = Field(default=0, nullable=False, sa_type=BigInteger)  # milliseconds: past 32 bits
    hlc_counter: int = Field(default=0, nullable=False)
    clock_offset_ms: int | None = Field(default=None)  # measured against the cloud's clock
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)


# --- sync_state: where this station stands with the cloud (exactly one row, made by revision 0003)
# All columns are nullable and the row exists from the migration on, so a station that was never
# linked to a cloud simply has nothing filled in; only the sync engine (store/remote.py) writes it.
class SyncState(SQLModel, table=True):
    __tablename__: ClassVar[str] = "sync_state"

    id: int = Field(default=1, primary_key=True)
    cloud_url: str | None = Field(default=None)
    cloud_device_id: str | None = Field(default=None, max_length=64)  # the device the credential names
    credential_enc: str | None = Field(default=None)  # the device credential, sealed with the data key
    pull_cursor: int | None = Field(default=None, sa_type=BigInteger)  # last change_log seq committed here
    last_attempt_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_sync_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)  # last round that completed
    last_error: str | None = Field(default=None)  # why the last round did not complete (None: it did)
    last_bundle_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)  # last bundle installed
    audit_acked_seq: int | None = Field(default=None, sa_type=BigInteger)  # last audit entry the cloud holds


metadata = SQLModel.metadata
