"""The station's rows and queue entries in the wire's shape, and back (docs/sync-protocol.md).

Two directions:

- out: a `sync_queue` entry becomes an `Operation`: patient fields decrypted for the wire (TLS),
  the station's own ciphertext, keyed hashes and bookkeeping left out, the record's site added;
- in: a pulled record becomes the station's column values: patient fields sealed again with the
  station's key (with the keyed hashes the look-ups need), text turned back into dates and times.

In between, the engine compares and merges records as "typed wire records": wire field names
(`subject_id` in clear, no `_enc`/`_hash`, no bookkeeping) with Python values (datetimes, dates),
so that a local row and a pulled one compare field by field whatever their storage.
"""

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Boolean, Date, Float, Table

from store.crypto import PatientCipher
from store.models import CORE_TABLES, metadata
from store.types import UTCDateTime
from sync.protocol import PATIENT_FIELDS, is_station_local

TABLES: dict[str, Table] = {name: metadata.tables[name] for name in CORE_TABLES}
SEALED = {name: f"{name}_enc" for name in PATIENT_FIELDS}  # wire field -> the station's column
CLEAR = {column: name for name, column in SEALED.items()}


# --- out: a queue entry as an operation ------------------------------------------------------------
def operation(cipher: PatientCipher, entry: Mapping[str, Any], site: str) -> dict[str, Any]:
    """One `sync_queue` row as the wire's Operation (a dict: the caller validates it)."""
    return {
        "op_id": entry["op_id"],
        "device_id": entry["device_id"],
        "device_seq": entry["device_seq"],
        "site": site,
        "table": entry["table_name"],
        "record_id": entry["record_id"],
        "kind": entry["kind"],
        "payload": clear_record(cipher, entry["payload"]),
        "changed": _clear_changes(cipher, entry["changed_fields"]),
        "base_version": entry["base_version"],
        "hlc": entry["hlc"],
        # As measured when the change was made: None (never measured) is the truth, and the
        # cloud then holds a contested "latest wins" field for a person (invariant 8).
        "clock_offset_ms": entry["clock_offset_ms"],
        "priority": entry["priority"],
        "depends_on": list(entry["depends_on"]),
        # A person's decision on a conflict (store/resolution.py); left out when there is none.
        "resolution": entry.get("resolution"),
    }


def clear_record(cipher: PatientCipher, record: Mapping[str, Any]) -> dict[str, Any]:
    """A station record (column names) with its patient fields in clear and nothing station-local."""
    cleared = {k: v for k, v in record.items() if not is_station_local(k)}
    for column, name in CLEAR.items():
        if column in record:
            cleared[name] = cipher.decrypt(record[column])
    return cleared


def _clear_changes(cipher: PatientCipher, changed: Mapping[str, Any]) -> dict[str, list[Any]]:
    cleared = {k: list(v) for k, v in changed.items() if not is_station_local(k)}
    for column, name in CLEAR.items():
        if column in changed:
            cleared[name] = [cipher.decrypt(v) for v in changed[column]]
    return cleared


def site_of(entry: Mapping[str, Any], treatment_sites: Mapping[str, str]) -> str | None:
    """The record's site: a treatment's own, a child row's treatment's (None: not known here)."""
    payload = entry["payload"]
    if entry["table_name"] in ("treatments", "incidents"):
        return payload.get("site")
    return treatment_sites.get(str(payload.get("treatment_id")))


# --- in and between: typed wire records ------------------------------------------------------------
def typed_record(table_name: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A pulled record (JSON) as a typed wire record; fields this station does not know are dropped."""
    table = TABLES[table_name]
    typed: dict[str, Any] = {}
    for name, value in record.items():
        if name in SEALED and SEALED[name] in table.c:
            typed[name] = value
        elif name in table.c and not is_station_local(name):
            typed[name] = typed_value(table, name, value)
    return typed


def local_record(cipher: PatientCipher, table_name: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A station row as a typed wire record (patient fields decrypted, bookkeeping left out)."""
    return clear_record(cipher, {c.name: row[c.name] for c in TABLES[table_name].columns if c.name in row})


def typed_value(table: Table, column: str, value: Any) -> Any:
    """A JSON value as the column's Python value (dates and times arrive as text)."""
    if value is None:
        return None
    kind = table.c[column].type
    if isinstance(kind, UTCDateTime):
        return value if isinstance(value, datetime) else _instant(str(value))
    if isinstance(kind, Date):
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    if isinstance(kind, Boolean):
        return bool(value)
    if isinstance(kind, Float):
        return float(value)
    return value


def typed_changes(
    cipher: PatientCipher, table_name: str, changed: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """A queue entry's `changed_fields` as typed wire fields: {field: (base, new)}."""
    table = TABLES[table_name]
    typed: dict[str, tuple[Any, Any]] = {}
    for name, (base, new) in _clear_changes(cipher, changed).items():
        if name in SEALED:
            typed[name] = (base, new)
        elif name in table.c:
            typed[name] = (typed_value(table, name, base), typed_value(table, name, new))
    return typed


def station_values(
    cipher: PatientCipher, table_name: str, values: Mapping[str, Any], *, row: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Typed wire values as the station's columns: patient fields sealed with this station's key.

    `row` (the whole typed record these values belong to) says whether a subject is a list of
    Priority orders, whose keyed hashes the scan checks look up.
    """
    stored = {k: v for k, v in values.items() if k not in SEALED}
    if "patient_label" in values:
        stored["patient_label_enc"] = cipher.encrypt(values["patient_label"])
    if "subject_id" in values:
        subject = values["subject_id"]
        stored["subject_id_enc"] = cipher.encrypt(subject)
        stored["subject_hash"] = cipher.lookup_hash(subject or "")
        emergency = (row or values).get("needs_reconciliation", False)
        # An order-based subject is the order names joined by "+" (store/treatments.py).
        stored["order_hashes"] = [] if emergency or not subject else order_hashes(cipher, subject)
    return stored


def order_hashes(cipher: PatientCipher, subject: str) -> list[str]:
    return [cipher.lookup_hash(name) for name in subject.split("+") if name.strip()]


def station_field(name: str) -> str:
    """The station's column for a wire field (a patient field is kept sealed)."""
    return SEALED.get(name, name)


def sealed_value(cipher: PatientCipher, name: str, value: Any) -> Any:
    """A value bound for a station table outside its record (a conflict row): sealed if a patient's."""
    if name in SEALED and value is not None:
        return cipher.encrypt(str(value))
    return value


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        # Never guess a zone: a local time read as UTC would reorder the record's history.
        raise ValueError(f"a time without a zone arrived from the cloud: {text!r}")
    return moment.astimezone(UTC)
