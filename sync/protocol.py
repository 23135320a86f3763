"""The wire between station and cloud: versioned message schemas (docs/sync-protocol.md).

Three exchanges: push (a batch of operations, one result each), pull (changes above a cursor, in
pages) and the validation bundle. Every message names `PROTOCOL_VERSION`; a cloud refuses a
version it does not speak instead of guessing.

The cloud validates a push in two layers. The envelope (`PushEnvelope`) is checked as a whole:
protocol version and batch size. Each operation is then checked on its own (`parse_operation`),
so that one malformed operation is answered `rejected` alone and never blocks the rest of the
queue (invariant 6). Stations build `PushRequest`, whose operations are the strict model.
"""

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

PROTOCOL_VERSION = 1

MAX_OPS_PER_PUSH = 500
MAX_PAYLOAD_BYTES = 32 * 1024  # one record; a treatment with every field filled is about 2 KiB
MAX_PUSH_BYTES = 8 * 1024 * 1024  # a whole request body
MAX_DEPENDENCIES = 2000  # a finalise depends on every open operation of its treatment
PULL_DEFAULT_LIMIT = 500
PULL_MAX_LIMIT = 5000

TableName = Literal["treatments", "applicators", "applicator_packages", "removed_seeds"]
# Pushed only: an incident the station raises for a stuck entry (never pulled, not a clinical record).
OpTable = Literal["treatments", "applicators", "applicator_packages", "removed_seeds", "incidents"]
OpKind = Literal["insert", "update", "delete"]
OpStatus = Literal["applied", "duplicate", "conflict", "rejected"]

# Patient identifiers travel in clear inside TLS; the station's encrypted copies and keyed hashes
# are made with the station's own key, so they mean nothing anywhere else and are dropped.
PATIENT_FIELDS = ("subject_id", "patient_label")
STATION_LOCAL_SUFFIXES = ("_enc", "_hash")
STATION_LOCAL_FIELDS = frozenset({"order_hashes", "usage", "sync_status", "cloud_version", "local_version"})
IMMUTABLE_FIELDS = frozenset({"id", "site", "device_id", "created_at"})
REQUIRED_ON_INSERT: dict[str, tuple[str, ...]] = {
    "treatments": ("subject_id", "type"),
    "applicators": ("treatment_id", "serial_number", "status"),
    "applicator_packages": ("treatment_id",),
    "removed_seeds": ("treatment_id",),
    "incidents": ("kind", "op_id", "record_id"),
}

_HLC_PATTERN = r"^\d{15}-\d{6}-[^\s]{1,64}$"


class Code(StrEnum):
    """Why an operation was rejected (OpResult.code)."""

    INVALID_OPERATION = "invalid_operation"  # malformed; fix the station, the op is quarantined
    DEVICE_MISMATCH = "device_mismatch"  # the op names another device than the credential
    SITE_NOT_ALLOWED = "site_not_allowed"  # the site is not one this device syncs
    DEPENDENCY_MISSING = "dependency_missing"  # an op it depends on has not arrived yet: retry later
    DEPENDENCY_REJECTED = "dependency_rejected"  # an op it depends on was rejected
    UNKNOWN_RECORD = "unknown_record"  # update/delete of a record the cloud does not have
    UNKNOWN_TREATMENT = "unknown_treatment"  # a child row of a treatment the cloud does not have
    RECORD_EXISTS = "record_exists"  # insert of an id that already exists at the site
    STORE_FAILED = "store_failed"  # the database refused the change; nothing was applied
    ALREADY_RESOLVED = "already_resolved"  # another person resolved the conflict first; nothing applied
    SIGNATURE_UNVERIFIED = "signature_unverified"  # signed by code, but the cloud verified no such code


# Rejections that may succeed later without any change on the station: never written to the
# ledger, so a retry is evaluated afresh instead of being answered with the old rejection.
RETRYABLE_CODES = frozenset(
    {
        Code.DEVICE_MISMATCH,
        Code.SITE_NOT_ALLOWED,
        Code.DEPENDENCY_MISSING,
        Code.DEPENDENCY_REJECTED,
        Code.UNKNOWN_RECORD,
        Code.UNKNOWN_TREATMENT,
        Code.STORE_FAILED,
    }
)


# --- push ------------------------------------------------------------------------------------
class SettledConflict(BaseModel):
    """One conflict a resolution settles: the cloud's id when the station knows it, else its place."""

    model_config = ConfigDict(extra="forbid")

    site: str | None = Field(default=None, max_length=64)  # None: the operation's site
    table: TableName
    record_id: str = Field(min_length=1, max_length=36)
    field: str = Field(min_length=1, max_length=64)
    rule: str = Field(min_length=1, max_length=32)
    conflict_id: str | None = Field(default=None, max_length=64)  # the cloud's, when it reported it


class Resolution(BaseModel):
    """A person's decision on held conflicts, carried by the operation that applies it (optional:
    an operation without one is unchanged; docs/sync-protocol.md, "Manual resolution")."""

    model_config = ConfigDict(extra="forbid")

    how: Literal["keep_local", "keep_server", "merged"]
    reason: str = Field(min_length=1, max_length=2000)
    resolved_by: str = Field(min_length=1, max_length=64)
    resolved_at: datetime
    settles: list[SettledConflict] = Field(min_length=1, max_length=50)
    keep_treatment_id: str | None = Field(default=None, max_length=36)  # a serial clash: who keeps it


class Operation(BaseModel):
    """One journalled change of one record, as the station's sync_queue holds it."""

    model_config = ConfigDict(extra="forbid")

    op_id: str
    device_id: str = Field(min_length=1, max_length=64)
    device_seq: int = Field(ge=1)
    site: str = Field(min_length=1, max_length=64)
    table: OpTable
    record_id: str = Field(min_length=1, max_length=36)
    kind: OpKind
    payload: dict[str, Any]  # the whole record after the change (wire names)
    changed: dict[str, tuple[Any, Any]] = Field(default_factory=dict)  # field -> [base, new]
    base_version: int | None = Field(default=None, ge=1)
    hlc: str = Field(pattern=_HLC_PATTERN)
    clock_offset_ms: int | None = None
    priority: int = Field(ge=1, le=5)
    depends_on: list[str] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)
    resolution: Resolution | None = None  # set on the change that applies a person's decision

    @field_validator("op_id")
    @classmethod
    def _op_id_is_uuid(cls, value: str) -> str:
        return canonical_uuid(value)

    @field_validator("depends_on")
    @classmethod
    def _dependencies_are_uuids(cls, values: list[str]) -> list[str]:
        return [canonical_uuid(v) for v in values]

    @model_validator(mode="after")
    def _consistent(self) -> "Operation":
        if len(orjson.dumps(self.payload)) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes")
        if "id" in self.payload and self.payload["id"] != self.record_id:
            raise ValueError(f"payload id {self.payload['id']!r} is not record_id {self.record_id!r}")
        if self.table == "treatments" and self.payload.get("site", self.site) != self.site:
            raise ValueError(f"payload site {self.payload.get('site')!r} is not the operation's site")
        if self.kind == "update" and not self.changed and self.resolution is None:
            # (a resolution that keeps what the cloud holds changes nothing, and still settles)
            raise ValueError("an update must name its changed fields with their base values")
        if self.table == "incidents" and self.kind != "insert":
            raise ValueError("an incident is only ever inserted")
        frozen = sorted(IMMUTABLE_FIELDS & set(self.changed))
        if frozen:
            raise ValueError(f"{', '.join(frozen)} cannot change after a record is created")
        _require_clear_patient_fields(self)
        return self

    @model_serializer(mode="wrap")
    def _no_empty_resolution(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out when empty, so an operation without one is byte for byte what it always was.
        data = handler(self)
        if data.get("resolution", True) is None:
            del data["resolution"]
        return data


class PushRequest(BaseModel):
    """What a station sends (strict: every operation must be valid before it is sent)."""

    protocol: int = PROTOCOL_VERSION
    device_seq_high: int | None = Field(default=None, ge=0)  # the station's newest device_seq
    ops: list[Operation] = Field(max_length=MAX_OPS_PER_PUSH)


class PushEnvelope(BaseModel):
    """What the cloud accepts: the envelope is checked whole, each operation on its own."""

    protocol: int = Field(strict=True)  # `true` is not version 1
    device_seq_high: int | None = Field(default=None, ge=0, strict=True)
    ops: list[dict[str, Any]] = Field(max_length=MAX_OPS_PER_PUSH)

    @field_validator("protocol")
    @classmethod
    def _spoken(cls, value: int) -> int:
        return require_protocol(value)


class ConflictInfo(BaseModel):
    """A field both sides changed: held for a person (`open`) or decided by a rule."""

    conflict_id: str
    field: str
    rule: str
    server_value: Any = None
    local_value: Any = None
    is_safety: bool = False
    status: Literal["open", "auto_resolved"] = "open"
    value: Any = None  # what the field holds now (for auto_resolved: the winning value)
    record_id: str | None = None  # set when the conflict is on another record (the other side)
    table: str | None = None


class OpResult(BaseModel):
    op_id: str
    status: OpStatus
    version: int | None = None  # the record's server version after the operation
    conflicts: list[ConflictInfo] | None = None
    code: Code | None = None
    message: str | None = None
    original: "OpResult | None" = None  # for `duplicate`: the first answer, unchanged


class PushReply(BaseModel):
    protocol: int = PROTOCOL_VERSION
    results: list[OpResult]


# --- pull ------------------------------------------------------------------------------------
class PullChange(BaseModel):
    seq: int
    table: TableName
    record_id: str
    site: str
    version: int  # the record's current version (the state in `record`)
    deleted: bool
    record: dict[str, Any]  # current state, wire names, patient fields in clear
    field_hlc: dict[str, str] = Field(default_factory=dict)  # field -> clock of its current value


class PullReply(BaseModel):
    protocol: int = PROTOCOL_VERSION
    changes: list[PullChange]
    next_cursor: int  # the last seq returned (the cursor itself when nothing was returned)
    has_more: bool


# --- validation bundle (the station's format: store/validation_cache.py install_bundle) --------
class BundleUser(BaseModel):
    id: str
    name: str
    role: Literal["hospital", "alphatau", "admin"]
    sites: list[str]
    email: str | None = None
    phone: str | None = None
    position: str | None = None
    pin_hash: str | None = None
    pin_valid_until: datetime | None = None
    is_active: bool = True


class BundleOrder(BaseModel):
    order_name: str
    patient_label: str | None
    site: str
    day: date
    indication: str = "unknown"
    seeds: int | None = None
    activity_per_seed: float | None = None
    seed_length: float | None = None


class BundleItem(BaseModel):
    serial: str
    order_name: str | None
    site: str
    catalogue_number: str | None = None
    applicator_type: str | None = None
    seeds: int | None = None
    seed_length: float | None = None
    expiry: date | None = None
    lot: str | None = None
    usage: str | None = None


class Bundle(BaseModel):
    """The checksum is store.validation_cache.bundle_checksum over the JSON as sent (all keys but
    `checksum`): verify it on the received JSON, never on a re-serialised model."""

    version: str
    valid_until: datetime
    checksum: str
    users: list[BundleUser]
    schedule: list[BundleOrder]
    inventory: list[BundleItem]


# --- helpers ---------------------------------------------------------------------------------
def require_protocol(value: int) -> int:
    if value != PROTOCOL_VERSION:
        raise ValueError(
            f"protocol {value} is not spoken by this cloud (it speaks {PROTOCOL_VERSION}); update the station"
        )
    return value


def canonical_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None


def parse_operation(raw: dict[str, Any]) -> tuple[Operation | None, str]:
    """The operation, or None and a readable reason (one line per problem)."""
    try:
        return Operation.model_validate(raw), ""
    except ValidationError as exc:
        problems = [f"{_where(error['loc'])}: {error['msg']}" for error in exc.errors()]
        return None, "; ".join(problems)


def _where(location: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in location) or "operation"


def is_station_local(name: str) -> bool:
    return name in STATION_LOCAL_FIELDS or name.endswith(STATION_LOCAL_SUFFIXES)


def without_station_local(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the cloud keeps it: no station-keyed ciphertext, hash or local bookkeeping."""
    return {k: v for k, v in record.items() if not is_station_local(k)}


def _require_clear_patient_fields(op: Operation) -> None:
    # A station that sent only its own ciphertext would have its patient change dropped silently.
    for name in PATIENT_FIELDS:
        if f"{name}_enc" in op.changed and name not in op.changed:
            raise ValueError(
                f"send {name} in clear (TLS) beside {name}_enc: the cloud cannot read the station's key"
            )
    if op.kind == "insert":
        missing = [f for f in REQUIRED_ON_INSERT[op.table] if op.payload.get(f) in (None, "")]
        if missing:
            raise ValueError(f"an insert into {op.table} needs {', '.join(missing)} in its payload")
