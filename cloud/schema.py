"""The cloud's tables (SQLAlchemy Core on PostgreSQL).

Core rather than SQLModel: the cloud's metadata must stay apart from the station's (both have a
`treatments` table, with different shapes), and the cloud works on batches of rows and JSON
documents, not on objects.

Clinical records are kept as the station sent them (`data`, JSONB) with the columns the cloud
needs to query, order and protect them. Every hospital table carries `site`; row-level security
(migration 0002) lets a transaction see only the sites set for it. Primary keys of hospital tables
include the site, so an identifier used at another hospital never collides, and a unique-key error
cannot tell one hospital that a row exists at another.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

cloud_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

CLINICAL_TABLES = ("treatments", "applicators", "applicator_packages", "removed_seeds")
# Tables whose rows belong to one site: row-level security applies to each of them.
HOSPITAL_TABLES = (
    *CLINICAL_TABLES,
    "change_log",
    "op_ledger",
    "conflicts",
    "incidents",
    "audit_events",
    "station_audit",
    "priority_orders",
    "priority_applicators",
    "writeback_queue",
    "signing_codes",
)


def _now() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()"))


def _clinical(name: str, *extra: Column | Index) -> Table:
    return Table(
        name,
        cloud_metadata,
        Column("site", String(64), nullable=False),
        Column("id", String(36), nullable=False),
        Column("version", Integer, nullable=False),  # the server version, +1 per applied change
        Column("data", JSONB, nullable=False),  # the whole record as last merged
        Column("field_hlc", JSONB, nullable=False, server_default=text("'{}'::jsonb")),  # field -> hlc
        Column("deleted", Boolean, nullable=False, server_default=text("false")),
        Column("device_id", String(64), nullable=False),  # the device that created it
        Column("last_op_id", String(36), nullable=False),
        _now(),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
        PrimaryKeyConstraint("site", "id"),
        CheckConstraint("version >= 1", name="version_positive"),
        *extra,
    )


# --- sites and identity (reached by the login path, before any site context exists)
sites = Table(
    "sites",
    cloud_metadata,
    Column("code", String(64), primary_key=True),  # Priority CUSTNAME
    Column("name", Text, nullable=False),
    Column("hospital", String(64), nullable=False),
)

users = Table(
    "users",
    cloud_metadata,
    Column("id", String(64), primary_key=True),
    Column("email", Text, unique=True),
    Column("phone", Text),
    Column("name", Text, nullable=False),
    Column("position", Text),
    Column("role", String(16), nullable=False),
    Column("sites", ARRAY(String(64)), nullable=False, server_default=text("'{}'")),
    Column("is_active", Boolean, nullable=False, server_default=text("true")),
    Column("failed_attempts", Integer, nullable=False, server_default=text("0")),
    Column("locked_until", DateTime(timezone=True)),
    Column("last_login", DateTime(timezone=True)),
    Column("pin_hash", Text),  # argon2id, set at an online login, cached by stations
    Column("pin_valid_until", DateTime(timezone=True)),
    Column("source", String(16), nullable=False, server_default=text("'priority'")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("role IN ('admin', 'alphatau', 'hospital')", name="role_valid"),
    CheckConstraint("failed_attempts >= 0", name="failed_attempts_non_negative"),
)

login_codes = Table(
    "login_codes",
    cloud_metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("code_hash", Text, nullable=False),  # never the code itself
    Column("channel", String(8), nullable=False),
    Column("device_id", String(64)),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    _now(),
    CheckConstraint("channel IN ('sms', 'email')", name="channel_valid"),
    CheckConstraint("attempts >= 0", name="attempts_non_negative"),
)

devices = Table(
    "devices",
    cloud_metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("sites", ARRAY(String(64)), nullable=False),
    Column("credential_hash", Text, nullable=False),
    Column("enrolled_by", String(64), nullable=False),
    Column("enrolled_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_seen_at", DateTime(timezone=True)),
)

enrolment_codes = Table(
    "enrolment_codes",
    cloud_metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("sites", ARRAY(String(64)), nullable=False),
    Column("device_name", Text, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    Column("device_id", String(64)),
    _now(),
)

sessions = Table(
    "sessions",
    cloud_metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("device_id", String(64), ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    _now(),
)

# --- clinical records (hospital tables)
treatments = _clinical("treatments")
applicators = _clinical(
    "applicators",
    Column("treatment_id", String(36), nullable=False),
    Column("serial_number", String(128), nullable=False),
    Index("ix_applicators_site_serial_number", "site", "serial_number"),
    Index("ix_applicators_site_treatment_id", "site", "treatment_id"),
)
applicator_packages = _clinical("applicator_packages", Column("treatment_id", String(36), nullable=False))
removed_seeds = _clinical("removed_seeds", Column("treatment_id", String(36), nullable=False))

# The global change sequence that pull reads. Rows are appended under a transaction-level
# advisory lock held until commit, so sequence numbers become visible in order and a reader
# paging by `seq` can never step over a change that commits later with a smaller number.
change_log = Table(
    "change_log",
    cloud_metadata,
    Column("seq", BigInteger, Identity(always=True), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("table_name", String(32), nullable=False),
    Column("record_id", String(36), nullable=False),
    Column("version", Integer, nullable=False),
    Column("op_id", String(36)),
    Column("device_id", String(64)),
    Column("changed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("ix_change_log_site_seq", "site", "seq"),
)

# The permanent ledger of applied operations: a retry, however late, gets the original answer.
op_ledger = Table(
    "op_ledger",
    cloud_metadata,
    Column("device_id", String(64), nullable=False),
    Column("op_id", String(36), nullable=False),
    Column("site", String(64), nullable=False),
    Column("result", JSONB),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("device_id", "op_id"),
)

conflicts = Table(
    "conflicts",
    cloud_metadata,
    Column("id", String(36), nullable=False),
    Column("site", String(64), nullable=False),
    Column("table_name", String(32), nullable=False),
    Column("record_id", String(36), nullable=False),
    Column("field", String(64), nullable=False),
    Column("is_safety", Boolean, nullable=False, server_default=text("false")),
    Column("rule", String(32), nullable=False),
    Column("local_value", JSONB),
    Column("server_value", JSONB),
    Column("base_value", JSONB),
    Column("status", String(16), nullable=False, server_default=text("'open'")),
    Column("op_id", String(36)),
    Column("device_id", String(64)),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolved_by", String(64)),
    Column("resolution", String(16)),
    CheckConstraint("status IN ('open', 'resolved', 'auto_resolved')", name="status_valid"),
    CheckConstraint("NOT is_safety OR status <> 'auto_resolved'", name="safety_held_for_person"),
    Index("ix_conflicts_site_status", "site", "status"),
    PrimaryKeyConstraint("site", "id"),
)

incidents = Table(
    "incidents",
    cloud_metadata,
    Column("id", String(36), nullable=False),
    Column("site", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("record_id", String(36)),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _now(),
    PrimaryKeyConstraint("site", "id"),
)

audit_events = Table(
    "audit_events",
    cloud_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("site", String(64), nullable=False),  # '*' for events of no one site (admin only)
    Column("actor", String(64)),
    Column("device_id", String(64)),
    Column("action", String(48), nullable=False),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _now(),
)

# Each station's own audit chain as it uploaded it (cloud/station_audit.py), verified link by link
# on arrival; append-only. `device_id` is the uploading device (the chain), `recorded_device_id` the
# id inside the entry (a station's earlier id, before it was enrolled as this device). An entry of
# no one record is filed at every site of the device, so each site's auditors see it.
station_audit = Table(
    "station_audit",
    cloud_metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("device_seq", BigInteger, nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("recorded_device_id", String(64), nullable=False),
    Column("user_id", String(64)),
    Column("action", String(48), nullable=False),
    Column("table_name", String(32)),
    Column("record_id", String(64)),
    Column("op_id", String(36)),
    Column("old_values", JSONB),
    Column("new_values", JSONB),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),  # the station's time of the event
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    UniqueConstraint("site", "device_id", "device_seq"),
    Index("ix_station_audit_device_id_device_seq", "device_id", "device_seq"),
    Index("ix_station_audit_site_action", "site", "action"),
)

# Signing codes (cloud/auth/signing.py): an Alpha Tau user chose a signer from a site's staff for one
# treatment; the code (hashed, never kept) reached the signer. A hospital table: keyed by site.
signing_codes = Table(
    "signing_codes",
    cloud_metadata,
    Column("site", String(64), nullable=False),
    Column("id", String(36), nullable=False),
    Column("treatment_id", String(36), nullable=False),
    Column("signer_id", String(64), nullable=False),  # a hospital user of the site (users.id)
    Column("requested_by", String(64), nullable=False),  # the alphatau or admin user who asked
    Column("device_id", String(64), nullable=False),  # the station the code is entered on
    Column("code_hash", Text, nullable=False),
    Column("channel", String(8), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("expires_at", DateTime(timezone=True), nullable=False),  # set to "now" when voided
    Column("used_at", DateTime(timezone=True)),
    _now(),
    PrimaryKeyConstraint("site", "id"),
    Index("ix_signing_codes_treatment_id", "treatment_id"),
)

# --- what the cloud last read from Priority (hospital tables too: they name patients)
priority_orders = Table(
    "priority_orders",
    cloud_metadata,
    Column("site", String(64), nullable=False),
    Column("order_name", String(64), nullable=False),
    Column("day", Date, nullable=False),
    Column("data", JSONB, nullable=False),  # patient fields encrypted by the application
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("site", "order_name"),
    Index("ix_priority_orders_site_day", "site", "day"),
)

priority_applicators = Table(
    "priority_applicators",
    cloud_metadata,
    Column("site", String(64), nullable=False),
    Column("serial", String(128), nullable=False),
    Column("order_name", String(64)),
    Column("data", JSONB, nullable=False),
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("site", "serial"),
)

priority_refresh = Table(
    "priority_refresh",
    cloud_metadata,
    Column("id", Integer, primary_key=True),
    Column("last_success_at", DateTime(timezone=True)),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_error", Text),
    CheckConstraint("id = 1", name="single_row"),
)

writeback_queue = Table(
    "writeback_queue",
    cloud_metadata,
    Column("id", String(36), nullable=False),
    Column("site", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("last_error", Text),
    Column("done_at", DateTime(timezone=True)),
    _now(),
    CheckConstraint("kind IN ('applicator', 'order_status')", name="kind_valid"),
    PrimaryKeyConstraint("site", "id"),
)
