"""What a push batch reads: fetched up front in two statements, then kept up to date with the
batch's own decisions, so that each operation is decided as if the ones before it had already
been written (cloud/push.py).

Anything not fetched up front is read when first asked for, so fetching ahead is only ever an
optimisation: the one-operation-at-a-time path uses the same view on each operation alone.

The two statements, in this order (the order matters):
1. `lock`: the records to update or delete, `FOR UPDATE` (in key order, so that two batches lock
   in one order), and the advisory lock of every applicator serial to be inserted (sorted);
2. `read`, a new statement and so a new snapshot: each locked serial's live rows, the ledger, the
   records that must or must not exist, Priority's inventory. A second laptop's insert of a serial
   waits for the serial's lock, and its read then sees the first laptop's row (invariant 9).
Each part of a statement is one JSON array (`json_agg`), so one round trip carries them all.
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from cloud.db import SiteScope

Key = tuple[str, str, str]  # (table, site, record id)

SERIAL_LOCK_CLASS = 0x4441  # with hashtext(serial): one applicator serial checked at a time
CLINICAL_TABLES = ("treatments", "applicators", "applicator_packages", "removed_seeds")
# The columns a clinical table keeps beside `data`, equal to the record's fields (for queries).
COLUMNS: dict[str, tuple[str, ...]] = {
    "treatments": (),
    "applicators": ("treatment_id", "serial_number"),
    "applicator_packages": ("treatment_id",),
    "removed_seeds": ("treatment_id",),
}


@dataclass(frozen=True)
class Row:
    """A clinical record: as read, or as an operation of this batch left it."""

    table: str
    site: str
    id: str
    version: int
    data: dict[str, Any]  # as stored: patient fields sealed
    field_hlc: dict[str, Any]
    deleted: bool
    columns: Mapping[str, str]  # the query columns (COLUMNS) as stored
    inserted: bool = False  # inserted by this batch: written with INSERT, not UPDATE
    last_op_id: str | None = None  # the op of this batch that wrote it last

    @property
    def key(self) -> Key:
        return (self.table, self.site, self.id)

    def text(self, name: str) -> str | None:
        """`data->>name`, as PostgreSQL would say it."""
        return json_text(self.data.get(name))


@dataclass(frozen=True)
class SerialUse:
    """A live applicator row of a serial, with what its treatment says (cloud/push.py `_clash`)."""

    site: str
    id: str
    treatment_id: str
    status: str | None
    treatment_deleted: bool | None
    treatment_complete: str | None


@dataclass(frozen=True)
class Inventory:
    """Priority's inventory as last refreshed, for one serial at one site."""

    loaded: bool  # any inventory loaded for the site
    listed: bool
    usage: str | None  # data->>'usage'
    line: dict[str, Any] | None  # the row's data (the order line a write-back names)


class BatchView:
    """The database as one batch sees it: read once, overlaid by the batch's own writes."""

    def __init__(self, conn: Connection, scope: SiteScope, device_id: str) -> None:
        self.conn = conn
        self.scope = scope
        self.device_id = device_id
        self._rows: dict[Key, Row | None] = {}  # None: no such record
        self._locked: set[Key] = set()
        self._touched: dict[Key, Row] = {}  # written by this batch, in order of first write
        self._by_serial: dict[str, dict[Key, Row]] = {}  # the applicators of _touched, by serial
        self._ledger: dict[str, dict[str, Any] | None] = {}  # op id -> stored result; None: not there
        self._locked_serials: set[str] = set()
        self._serials: dict[str, list[SerialUse]] = {}  # locked serial -> its live rows as read
        self._inventory: dict[tuple[str, str], Inventory] = {}
        self._roles: dict[str, str | None] = {}
        # (site, treatment id) -> the (signer, requester) pairs of its USED signing codes
        self._signed: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}

    # --- reading (ahead, or when first asked) ------------------------------------------------
    def lock(self, rows: Iterable[Key] = (), serials: Iterable[str] = ()) -> None:
        """ONE statement: lock (FOR UPDATE) and read the records not yet locked nor written by this
        batch, and take the advisory lock of each serial not yet locked."""
        keys = sorted({k for k in rows if k not in self._locked and k not in self._touched})
        wanted = sorted({s for s in serials if s not in self._locked_serials})
        if not keys and not wanted:
            return
        params: dict[str, Any] = {"cls": SERIAL_LOCK_CLASS, "serials": wanted, **_keys(keys, "")}
        *found, _serials_locked = self.conn.execute(_LOCK, params).one()
        for table, locked in zip(CLINICAL_TABLES, found, strict=True):
            self._take_rows(table, [k for k in keys if k[0] == table], locked or [])
        self._locked.update(keys)
        self._locked_serials.update(wanted)

    def read(
        self,
        *,
        rows: Iterable[Key] = (),
        ledger: Iterable[str] = (),
        inventory: Iterable[tuple[str, str]] = (),
        serials: Iterable[str] = (),
        signed: Iterable[tuple[str, str]] = (),
    ) -> None:
        """ONE statement: what is not known yet of records (without a lock: existence, a
        treatment's fields), this device's ledger, the inventory of (site, serial) pairs, the
        live rows of serials (locked first: see the module docstring), and the used signing codes
        of (site, treatment id) pairs."""
        row_keys = sorted({k for k in rows if k not in self._rows})
        op_ids = sorted({i for i in ledger if i not in self._ledger})
        pairs = sorted({p for p in inventory if p not in self._inventory})
        serial_list = sorted({s for s in serials if s not in self._serials})
        signed_list = sorted({t for t in signed if t not in self._signed})
        if not (row_keys or op_ids or pairs or serial_list or signed_list):
            return
        self.lock(serials=serial_list)
        params: dict[str, Any] = {
            **_keys(row_keys, "read_"),
            "device": self.device_id,
            "op_ids": op_ids,
            "inventory_sites": [p[0] for p in pairs],
            "inventory_serials": [p[1] for p in pairs],
            "use_serials": serial_list,
            "use_sites": sorted(self.scope.sites),
            "signed_sites": [t[0] for t in signed_list],
            "signed_treatments": [t[1] for t in signed_list],
        }
        *found_rows, stored, inventory, uses, codes = self.conn.execute(
            _READ[not self.scope.all_sites], params
        ).one()
        for table, found in zip(CLINICAL_TABLES, found_rows, strict=True):
            self._take_rows(table, [k for k in row_keys if k[0] == table], found or [])
        found_ledger = dict(stored or [])
        for op_id in op_ids:
            self._ledger[op_id] = found_ledger.get(op_id)
        for site, serial, loaded, listed, usage, line in inventory or []:
            self._inventory[(site, serial)] = Inventory(loaded, listed, usage, line)
        by_serial: dict[str, list[SerialUse]] = {s: [] for s in serial_list}
        for serial, *use in uses or []:
            by_serial[serial].append(SerialUse(*use))
        self._serials.update(by_serial)
        by_treatment: dict[tuple[str, str], set[tuple[str, str]]] = {t: set() for t in signed_list}
        for site, treatment_id, signer_id, requested_by in codes or []:
            by_treatment[(site, treatment_id)].add((signer_id, requested_by))
        self._signed.update({t: frozenset(pairs) for t, pairs in by_treatment.items()})

    # --- asking ------------------------------------------------------------------------------
    def row(self, table: str, site: str, record_id: str) -> Row | None:
        key = (table, site, record_id)
        if key not in self._rows:
            self.read(rows=[key])
        return self._rows[key]

    def locked_row(self, table: str, site: str, record_id: str) -> Row | None:
        """The record to change: locked until commit (or written by this batch)."""
        key = (table, site, record_id)
        if key not in self._locked and key not in self._touched:
            self.lock(rows=[key])
        return self._rows[key]

    def stored_result(self, op_id: str) -> dict[str, Any] | None:
        """The ledger's result for an op of this device (this batch's included), if any."""
        if op_id not in self._ledger:
            self.read(ledger=[op_id])
        return self._ledger[op_id]

    def stored_statuses(self, op_ids: list[str]) -> dict[str, str | None]:
        """The stored status of each op id that is in the ledger."""
        self.read(ledger=op_ids)
        return {i: (self._ledger[i] or {}).get("status") for i in op_ids if self._ledger[i] is not None}

    def serial_uses(self, serial: str) -> list[SerialUse]:
        """The live rows of a serial now: as read after its lock, with this batch's writes over them."""
        if serial not in self._serials:
            self.read(serials=[serial])
        uses: dict[Key, SerialUse] = {}
        for use in self._serials[serial]:
            key = ("applicators", use.site, use.id)
            if key in self._touched:
                continue  # as this batch left it: below, if it still has the serial
            parent = self._touched.get(("treatments", use.site, use.treatment_id))
            uses[key] = use if parent is None else _with_parent(use, parent)
        for key, row in self._by_serial.get(serial, {}).items():
            if not row.deleted:
                uses[key] = self._use_of(row)
        return [uses[k] for k in sorted(uses)]

    def inventory(self, site: str, serial: str) -> Inventory:
        if (site, serial) not in self._inventory:
            self.read(inventory=[(site, serial)])
        return self._inventory[(site, serial)]

    def code_signatures(self, site: str, treatment_id: str) -> frozenset[tuple[str, str]]:
        """The (signer, requester) of every signing code of the treatment that was used: each one
        a signature the cloud verified (cloud/auth/signing.py)."""
        if (site, treatment_id) not in self._signed:
            self.read(signed=[(site, treatment_id)])
        return self._signed[(site, treatment_id)]

    def role(self, user_id: str) -> str | None:
        if user_id not in self._roles:
            self._roles[user_id] = self.conn.execute(_ROLE, {"id": user_id}).scalar()
        return self._roles[user_id]

    # --- what the batch decided --------------------------------------------------------------
    def write(self, row: Row) -> None:
        before = self._touched.get(row.key)
        if before is not None and before.table == "applicators":
            self._by_serial[before.columns["serial_number"]].pop(row.key, None)
        self._rows[row.key] = row
        self._touched[row.key] = row
        if row.table == "applicators":
            self._by_serial.setdefault(row.columns["serial_number"], {})[row.key] = row

    def remember(self, op_id: str, result: dict[str, Any]) -> None:
        self._ledger[op_id] = result

    @property
    def written(self) -> list[Row]:
        return list(self._touched.values())

    # --- helpers -----------------------------------------------------------------------------
    def _take_rows(self, table: str, keys: list[Key], found: list[Any]) -> None:
        """Keep what was read of `keys`: (site, id, version, data, field_hlc, deleted, *COLUMNS)."""
        rows: dict[Key, Row] = {}
        for site, record_id, version, data, field_hlc, deleted, *columns in found:
            named = dict(zip(COLUMNS[table], columns, strict=True))
            row = Row(table, site, record_id, version, data, field_hlc, deleted, named)
            rows[row.key] = row
        for key in keys:
            self._rows[key] = rows.get(key)

    def _use_of(self, row: Row) -> SerialUse:
        treatment_id = row.columns["treatment_id"]
        parent = self.row("treatments", row.site, treatment_id)
        return SerialUse(
            row.site,
            row.id,
            treatment_id,
            row.text("status"),
            None if parent is None else parent.deleted,
            None if parent is None else parent.text("is_complete"),
        )


def json_text(value: Any) -> str | None:
    """A JSON value as PostgreSQL's `->>` gives it: strings bare, null as NULL, the rest as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _with_parent(use: SerialUse, parent: Row) -> SerialUse:
    return SerialUse(
        use.site, use.id, use.treatment_id, use.status, parent.deleted, parent.text("is_complete")
    )


def _keys(keys: list[Key], prefix: str) -> dict[str, list[str]]:
    """The parameters naming `keys`, two arrays per table (empty for a table not named)."""
    params: dict[str, list[str]] = {}
    for table in CLINICAL_TABLES:
        params[f"{prefix}{table}_sites"] = [k[1] for k in keys if k[0] == table]
        params[f"{prefix}{table}_ids"] = [k[2] for k in keys if k[0] == table]
    return params


def _row_json(table: str) -> str:
    columns = ["t.site", "t.id", "t.version", "t.data", "t.field_hlc", "t.deleted"]
    return f"json_build_array({', '.join(columns + [f't.{c}' for c in COLUMNS[table]])})"


def _keys_join(table: str, prefix: str) -> str:
    # The keys as two arrays joined to the primary key: one index lookup each, however large the
    # site (a list of (site, id) pairs would be one OR per pair, checked against every row).
    return (
        f"FROM {table} AS t JOIN unnest(CAST(:{prefix}{table}_sites AS text[]), "
        f"CAST(:{prefix}{table}_ids AS text[])) AS k(site, id) ON t.site = k.site AND t.id = k.id"
    )


def _lock_statement() -> Any:
    # Every part is always there (empty arrays for what a batch does not need), so the text never
    # changes and the driver prepares it once: planning this statement costs more than running it.
    # Records are locked in (site, id) order, so that two batches never wait on each other in a
    # circle; serials in the order given (sorted by the caller).
    ctes = [
        f"locked_{t} AS MATERIALIZED (SELECT {_row_json(t)} AS r {_keys_join(t, '')} "
        "ORDER BY t.site, t.id FOR UPDATE OF t)"
        for t in CLINICAL_TABLES
    ]
    ctes.append(
        "serial_locks AS MATERIALIZED (SELECT count(pg_advisory_xact_lock(:cls, hashtext(s))) AS n "
        "FROM unnest(CAST(:serials AS text[])) AS s)"
    )
    parts = [f"(SELECT json_agg(r) FROM locked_{t})" for t in CLINICAL_TABLES]
    return text(f"WITH {', '.join(ctes)} SELECT {', '.join(parts)}, (SELECT n FROM serial_locks)")


def _read_statement(scoped: bool) -> Any:
    # Each part is one JSON array (json_agg), parsed by the driver; always all of them (see _LOCK).
    rows = [f"(SELECT json_agg({_row_json(t)}) {_keys_join(t, 'read_')})" for t in CLINICAL_TABLES]
    ledger = (
        "(SELECT json_agg(json_build_array(op_id, result)) FROM op_ledger "
        "WHERE device_id = :device AND op_id = ANY(CAST(:op_ids AS text[])))"
    )
    # Per (site, serial): was any inventory loaded for the site, is the serial listed, its usage and
    # line. (`ORDER BY serial LIMIT 1` walks the primary key: a bare EXISTS was planned as a scan of
    # every site's rows, the whole table for a site that has none.)
    inventory = (
        "(SELECT json_agg(json_build_array(k.site, k.serial, "
        "(SELECT s.serial FROM priority_applicators AS s WHERE s.site = k.site ORDER BY s.serial LIMIT 1) "
        "IS NOT NULL, p.serial IS NOT NULL, p.data->>'usage', p.data)) "
        "FROM unnest(CAST(:inventory_sites AS text[]), CAST(:inventory_serials AS text[])) "
        "AS k(site, serial) "
        "LEFT JOIN priority_applicators AS p ON p.site = k.site AND p.serial = k.serial)"
    )
    # Row-level security filters by site too; saying it lets PostgreSQL use (site, serial_number).
    sites = "AND o.site = ANY(CAST(:use_sites AS text[])) " if scoped else ""
    # The treatment by its primary key for each use (LATERAL): a plain join was planned as a scan
    # of every treatment.
    uses = (
        "(SELECT json_agg(json_build_array(o.serial_number, o.site, o.id, o.treatment_id, "
        "o.data->>'status', p.deleted, p.complete) ORDER BY o.site, o.id) FROM applicators AS o "
        "LEFT JOIN LATERAL (SELECT t.deleted, t.data->>'is_complete' AS complete FROM treatments AS t "
        "WHERE t.site = o.site AND t.id = o.treatment_id) AS p ON true "
        f"WHERE o.serial_number = ANY(CAST(:use_serials AS text[])) {sites}AND NOT o.deleted)"
    )
    # The used codes of each (site, treatment): a code-signed finalise must name one of them.
    codes = (
        "(SELECT json_agg(json_build_array(c.site, c.treatment_id, c.signer_id, c.requested_by)) "
        "FROM unnest(CAST(:signed_sites AS text[]), CAST(:signed_treatments AS text[])) "
        "AS k(site, treatment_id) JOIN signing_codes AS c "
        "ON c.treatment_id = k.treatment_id AND c.site = k.site WHERE c.used_at IS NOT NULL)"
    )
    return text(f"SELECT {', '.join([*rows, ledger, inventory, uses, codes])}")


_LOCK = _lock_statement()
_READ = {scoped: _read_statement(scoped) for scoped in (False, True)}
_ROLE = text("SELECT role FROM users WHERE id = :id")
