"""The audit upload on the wire: a station's hash-chained audit entries, for the cloud to verify.

Station (`sync/audit_upload.py`) and cloud (`cloud/station_audit.py`) share these models and ONE
hash function, the station's own (`store.journal.audit_hash`): the cloud recomputes every entry's
hash exactly as the station computed it when the entry was written, so a field changed afterwards,
on the station's file or on the way, no longer matches (docs/sync-protocol.md, "Audit upload").

An entry carries every field the hash covers (`HASHED_FIELDS`, taken from the station's table so a
column added there cannot be forgotten here) plus `site`, which the hash does not cover: the site
whose auditors should see the entry, or None for an event of the station as a whole.
"""

from collections.abc import Mapping
from datetime import UTC
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from store.journal import AUDIT, audit_hash
from sync.protocol import PROTOCOL_VERSION, require_protocol

MAX_AUDIT_BATCH = 500
MAX_AUDIT_BYTES = 16 * 1024 * 1024  # one request body; the station cuts its batches well below this
MAX_SEQ = 2**63 - 1  # PostgreSQL bigint
GENESIS_HASH = "0" * 64  # the previous hash of a chain's first entry (store.station.GENESIS_HASH)

# Every column of the station's audit_logs but its local row id and the hash itself.
HASHED_FIELDS: tuple[str, ...] = tuple(c.name for c in AUDIT.columns if c.name not in ("id", "hash"))

_HASH = r"^[0-9a-f]{64}$"


class AuditEntry(BaseModel):
    """One entry of a station's audit chain (the station's `audit_logs` row, without its local id)."""

    model_config = ConfigDict(extra="forbid")  # an unknown field might be one the hash covers

    event_id: str = Field(min_length=1, max_length=36)
    device_id: str = Field(min_length=1, max_length=64)  # the id the station had when it wrote it
    device_seq: int = Field(ge=1, le=MAX_SEQ)  # position in the station's chain
    user_id: str | None = Field(default=None, max_length=64)
    action: str = Field(min_length=1, max_length=48)
    table_name: str | None = Field(default=None, max_length=32)
    record_id: str | None = Field(default=None, max_length=64)
    op_id: str | None = Field(default=None, max_length=36)
    old_values: dict[str, Any] | None = None
    new_values: dict[str, Any] | None = None
    reason: str | None = Field(default=None, max_length=10_000)
    created_at: AwareDatetime
    prev_hash: str = Field(pattern=_HASH)
    hash: str = Field(pattern=_HASH)
    site: str | None = Field(default=None, min_length=1, max_length=64)  # not hashed: see the module

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL stores no NUL character in text or JSON; refused here with a clear message.
        if _has_nul(value):
            raise ValueError("contains a NUL character")
        return value

    def hashed(self) -> dict[str, Any]:
        """The fields the hash covers, with the values the station hashed."""
        body = {name: getattr(self, name) for name in HASHED_FIELDS}
        body["created_at"] = self.created_at.astimezone(UTC)  # the station stamps UTC
        return body


class AuditUpload(BaseModel):
    """A batch of one station's entries, oldest first, continuing from what the cloud holds."""

    model_config = ConfigDict(extra="forbid")

    protocol: int = Field(strict=True)
    # The last entry the station believes the cloud holds (the cloud's last answer; 0: none).
    acknowledged_seq: int = Field(ge=0, le=MAX_SEQ, strict=True)
    entries: list[AuditEntry] = Field(min_length=1, max_length=MAX_AUDIT_BATCH)

    @field_validator("protocol")
    @classmethod
    def _spoken(cls, value: int) -> int:
        return require_protocol(value)


class AuditReply(BaseModel):
    """Where the device's chain stands in the cloud after the upload (the same answer for a resend)."""

    protocol: int = PROTOCOL_VERSION
    acknowledged_seq: int  # the last entry the cloud holds for this device (0: none)
    acknowledged_hash: str  # its hash (the genesis hash when none)


class AuditRefusal(BaseModel):
    """409: the batch does not continue the chain the cloud holds; nothing of it was stored."""

    detail: str
    code: Literal["audit_chain_broken"] = "audit_chain_broken"
    device_seq: int  # the first entry that breaks the chain
    acknowledged_seq: int  # the last entry the cloud holds for this device


def entry_hash(entry: AuditEntry | Mapping[str, Any]) -> str:
    """The hash the station computed for this entry (store.journal.audit_hash, the one function)."""
    body = entry.hashed() if isinstance(entry, AuditEntry) else {k: entry[k] for k in HASHED_FIELDS}
    return audit_hash(body)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
