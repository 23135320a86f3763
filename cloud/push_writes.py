"""What a push batch writes, in one statement: records, ledger rows, conflicts, incidents, write-backs.

Each kind of row travels as one JSON array parameter, unpacked by PostgreSQL
(`jsonb_array_elements`), and each insert or update is one data-modifying CTE of a single
statement, so a batch of 50 operations costs one round trip instead of a few hundred. The
statement answers how many rows each part wrote: the caller compares them with what it decided
(a concurrent delivery that claimed an op id first, or another device's insert of the same record,
shows as a row not written) and never commits a batch that did not land as decided.

The JSON is made with the standard library, as SQLAlchemy's JSONB binding does, so a value
PostgreSQL refuses (NaN, a NUL character) is refused here in the same words (SQLSTATE 22P02 /
22P05). Conflict values keep JSON `null` as JSON null, as the JSONB column binding did.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from cloud.push_reads import CLINICAL_TABLES, COLUMNS, Row


@dataclass
class Written:
    """Rows each part of the statement wrote (incidents are not counted: a repeat is no error)."""

    ledger: int = 0
    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    write_backs: int = 0


@dataclass
class Planned:
    """What was decided to be written: the counts `Written` must show."""

    ledger: list[dict[str, Any]] = field(default_factory=list)  # {op_id, site, result}
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    write_backs: list[dict[str, Any]] = field(default_factory=list)  # writeback_queue rows


def write_batch(
    conn: Connection, device_id: str, rows: Sequence[Row], planned: Planned
) -> tuple[Written, Written]:
    """Write it all in one statement; return (what was expected, what was written)."""
    if not (rows or planned.ledger or planned.conflicts or planned.incidents or planned.write_backs):
        return Written(), Written()
    # One incident per operation, kind and record (its id): the first stands, as ON CONFLICT DO
    # NOTHING keeps it, however often an operation repeats it.
    incidents = list(reversed({(r["site"], r["id"]): r for r in reversed(planned.incidents)}.values()))
    values: dict[str, list[dict[str, Any]]] = {
        "ledger": sorted(planned.ledger, key=lambda r: r["op_id"]),  # one lock order for every batch
        "conflicts": planned.conflicts,
        "incidents": incidents,
        "write_backs": planned.write_backs,
    }
    expected = Written(ledger=len(planned.ledger), conflicts=len(planned.conflicts))
    expected.write_backs = len(planned.write_backs)
    for table in CLINICAL_TABLES:
        values[f"ins_{table}"] = [_row_values(r) for r in rows if r.table == table and r.inserted]
        updates = [_row_values(r) for r in rows if r.table == table and not r.inserted]
        values[f"upd_{table}"] = sorted(updates, key=_by_key)
        expected.inserted[table] = len(values[f"ins_{table}"])
        expected.updated[table] = len(updates)
    params: dict[str, Any] = {name: json.dumps(v, separators=(",", ":")) for name, v in values.items()}
    for table in CLINICAL_TABLES:
        params[f"upd_{table}_sites"] = [v["site"] for v in values[f"upd_{table}"]]
        params[f"upd_{table}_ids"] = [v["id"] for v in values[f"upd_{table}"]]
    found = conn.execute(_WRITE, {**params, "device": device_id}).one()._mapping
    written = Written(ledger=found["ledger"], conflicts=found["conflicts"], write_backs=found["write_backs"])
    for table in CLINICAL_TABLES:
        written.inserted[table] = found[f"ins_{table}"]
        written.updated[table] = found[f"upd_{table}"]
    return expected, written


def _row_values(row: Row) -> dict[str, Any]:
    return {
        "site": row.site,
        "id": row.id,
        "version": row.version,
        "data": row.data,
        "field_hlc": row.field_hlc,
        "deleted": row.deleted,
        "last_op_id": row.last_op_id,
        **row.columns,
    }


def _by_key(values: dict[str, Any]) -> tuple[str, str]:
    return (values["site"], values["id"])


def _insert_sql(table: str) -> str:
    extra = COLUMNS[table]
    names = "".join(f", {c}" for c in extra)
    values = "".join(f", e->>'{c}'" for c in extra)
    return (
        f"INSERT INTO {table} (site, id, version, data, field_hlc, deleted, device_id, last_op_id{names}) "
        "SELECT e->>'site', e->>'id', (e->>'version')::int, e->'data', e->'field_hlc', "
        f"(e->>'deleted')::boolean, :device, e->>'last_op_id'{values} "
        "FROM jsonb_array_elements(CAST(:{param} AS jsonb)) AS e "
        "ON CONFLICT (site, id) DO NOTHING RETURNING 1"
    )


def _update_sql(table: str) -> str:
    extra = "".join(f", {c} = e->>'{c}'" for c in COLUMNS[table])
    return (
        f"UPDATE {table} AS t SET version = (e->>'version')::int, data = e->'data', "
        "field_hlc = e->'field_hlc', deleted = (e->>'deleted')::boolean, last_op_id = e->>'last_op_id', "
        f"updated_at = now(){extra} "
        "FROM jsonb_array_elements(CAST(:{param} AS jsonb)) AS e "
        "WHERE t.site = e->>'site' AND t.id = e->>'id' "
        # The keys again as arrays: PostgreSQL then finds the rows by primary key; from the JSON
        # alone it read the whole table for every batch (a hash join on an estimate of 100 rows).
        "AND t.site = ANY(CAST(:{param}_sites AS text[])) AND t.id = ANY(CAST(:{param}_ids AS text[])) "
        "RETURNING 1"
    )


_INSERT = {table: _insert_sql(table) for table in CLINICAL_TABLES}
_UPDATE = {table: _update_sql(table) for table in CLINICAL_TABLES}
_LEDGER = (
    "INSERT INTO op_ledger (device_id, op_id, site, result) "
    "SELECT :device, e->>'op_id', e->>'site', e->'result' "
    "FROM jsonb_array_elements(CAST(:{param} AS jsonb)) AS e "
    "ON CONFLICT (device_id, op_id) DO NOTHING RETURNING 1"
)
_CONFLICTS = (
    "INSERT INTO conflicts (id, site, table_name, record_id, field, is_safety, rule, local_value, "
    "server_value, base_value, status, op_id, device_id, resolved_at, resolution) "
    "SELECT e->>'id', e->>'site', e->>'table_name', e->>'record_id', e->>'field', "
    "(e->>'is_safety')::boolean, e->>'rule', e->'local_value', e->'server_value', e->'base_value', "
    "e->>'status', e->>'op_id', :device, CASE WHEN e->>'resolution' IS NOT NULL THEN now() END, "
    "e->>'resolution' "
    "FROM jsonb_array_elements(CAST(:{param} AS jsonb)) AS e RETURNING 1"
)
_WRITE_BACKS = (
    "INSERT INTO writeback_queue (id, site, kind, payload) "
    "SELECT e->>'id', e->>'site', e->>'kind', e->'payload' "
    "FROM jsonb_array_elements(CAST(:{param} AS jsonb)) AS e RETURNING 1"
)
_INCIDENTS = (
    "INSERT INTO incidents (id, site, kind, record_id, details) "
    "SELECT e->>'id', e->>'site', e->>'kind', e->>'record_id', e->'details' "
    "FROM jsonb_array_elements(CAST(:{param} AS jsonb)) AS e "
    "ON CONFLICT (site, id) DO NOTHING RETURNING 1"
)


def _write_statement() -> Any:
    # Every part is always there (an empty array where a batch has nothing of a kind), so the text
    # never changes and the driver prepares it once: planning it costs more than running it.
    parts = {
        "ledger": _LEDGER,
        **{f"ins_{t}": _INSERT[t] for t in CLINICAL_TABLES},
        **{f"upd_{t}": _UPDATE[t] for t in CLINICAL_TABLES},
        "conflicts": _CONFLICTS,
        "write_backs": _WRITE_BACKS,
        "incidents": _INCIDENTS,
    }
    ctes = ", ".join(f"{name} AS ({sql.format(param=name)})" for name, sql in parts.items())
    counts = ", ".join(f"(SELECT count(*) FROM {name}) AS {name}" for name in parts)
    return text(f"WITH {ctes} SELECT {counts}")


_WRITE = _write_statement()
