"""Applying a station's push: every operation exactly once, field by field, atomically one by one.

A batch runs in ONE transaction scoped to the device's sites; an operation that fails is rolled
back alone while the others commit (invariant 6). Most batches apply whole, so a batch is first
run without a savepoint per operation (two round trips each); as soon as one operation is refused
or fails, that run is rolled back and the batch runs again with each operation inside its own
SAVEPOINT: the answer is the one the savepoints alone would give. Per operation:

1. the ledger: the (device, op_id) row is claimed with INSERT ... ON CONFLICT DO NOTHING; when
   it already exists the stored original result is answered as `duplicate` (invariant 3). The
   device is the authenticated one, never the body's: an op naming another device is refused;
2. the site must be one the device syncs (`site_not_allowed`, one message whether or not the
   site exists);
3. depends_on: every operation named must have taken effect earlier in the batch or before;
4. insert / update / delete: an insert is checked for one serial in two treatments (invariant 9)
   and re-checked against Priority's inventory; an update is merged field by field with the
   conflict rules of sync/rules.py; a delete is soft;
5. the result goes into the batch's list for the ledger (written in one executemany before the
   change_log rows), and the change into the batch's list for change_log.

The change_log rows of the whole batch are appended last, under a transaction-level advisory lock
held until commit, so sequence numbers become visible in commit order and a puller paging by seq
never steps over a change that commits later with a smaller number (invariant 4).
"""

import logging
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, exists, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from cloud.cipher import open_record, seal_record, seal_value
from cloud.db import SiteScope, scoped_transaction
from cloud.incidents import record_incident
from cloud.priority.writeback import enqueue_applicator, enqueue_order_status
from cloud.resolutions import settle as settle_resolution
from cloud.schema import (
    applicator_packages,
    applicators,
    change_log,
    conflicts,
    incidents,
    op_ledger,
    priority_applicators,
    removed_seeds,
    treatments,
    users,
)
from store.crypto import PatientCipher
from store.enums import ApplicatorStatus
from sync.protocol import (
    RETRYABLE_CODES,
    Code,
    ConflictInfo,
    Operation,
    OpResult,
    PushEnvelope,
    PushReply,
    is_station_local,
    parse_operation,
    without_station_local,
)
from sync.rules import Action, FieldOutcome, RuleContext, merge

log = logging.getLogger(__name__)

# pg_advisory_xact_lock keys. Every writer of change_log takes CHANGE_LOG_LOCK (use append_changes).
CHANGE_LOG_LOCK = 0x4441_5254_0001  # "DART" + 1
SERIAL_LOCK_CLASS = 0x4441  # with hashtext(serial): one applicator serial checked at a time

TABLES: dict[str, Table] = {
    "treatments": treatments,
    "applicators": applicators,
    "applicator_packages": applicator_packages,
    "removed_seeds": removed_seeds,
}
OFFSETS_KEY = "$offsets"  # inside field_hlc: hlc stamp -> clock offset (ms) of the device that wrote it
USED_IN_PRIORITY = frozenset({"full use", "faulty"})
INCIDENT_STATUSES = frozenset({ApplicatorStatus.INSERTED.value, ApplicatorStatus.FAULTY.value})
TERMINAL = frozenset(s.value for s in ApplicatorStatus if s.is_terminal)
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialisation failure
BATCH_ATTEMPTS = 3
INCIDENT_NAMESPACE = uuid.UUID("6f1c7a52-93b4-4c0e-9a57-2d1f0e4b8c11")

# The statements every operation runs, built once: building one per call (and its cache key) cost
# more than PostgreSQL took to run it.
_OTHER = applicators.alias("other")
_PARENT = treatments.alias("parent")
_CLAIM = (
    pg_insert(op_ledger)
    .values(device_id=bindparam("device_id"), op_id=bindparam("op_id"), site=bindparam("site"), result=None)
    .on_conflict_do_nothing(index_elements=["device_id", "op_id"])
    .returning(op_ledger.c.op_id)
)
_STORED = select(op_ledger.c.result).where(
    op_ledger.c.device_id == bindparam("device_id"), op_ledger.c.op_id == bindparam("op_id")
)
_STORE_RESULT = (
    update(op_ledger)
    .where(op_ledger.c.device_id == bindparam("ledger_device"), op_ledger.c.op_id == bindparam("ledger_op"))
    .values(result=bindparam("ledger_result"))
)
_TREATMENT = select(treatments.c.data).where(
    treatments.c.site == bindparam("site"), treatments.c.id == bindparam("id")
)
_SERIAL_LOCK = text("SELECT pg_advisory_xact_lock(:cls, hashtext(:serial))")
_LISTED = select(priority_applicators.c.data["usage"].astext).where(
    priority_applicators.c.site == bindparam("site"), priority_applicators.c.serial == bindparam("serial")
)
# One round trip: was any inventory loaded for the site, is the serial listed, and its usage.
_INVENTORY = select(
    exists().where(priority_applicators.c.site == bindparam("site")).label("loaded"),
    exists(_LISTED).label("listed"),
    _LISTED.scalar_subquery().label("usage"),
)


def _serial_clash_query(scoped: bool) -> Any:
    query = (
        select(
            _OTHER.c.site,
            _OTHER.c.id,
            _OTHER.c.treatment_id,
            _OTHER.c.data["status"].astext.label("status"),
            _PARENT.c.deleted.label("treatment_deleted"),
            _PARENT.c.data["is_complete"].astext.label("treatment_complete"),
        )
        .select_from(
            _OTHER.outerjoin(
                _PARENT, (_PARENT.c.site == _OTHER.c.site) & (_PARENT.c.id == _OTHER.c.treatment_id)
            )
        )
        .where(
            _OTHER.c.serial_number == bindparam("serial"),
            ~_OTHER.c.deleted,
            ~((_OTHER.c.site == bindparam("site")) & (_OTHER.c.id == bindparam("record_id"))),
        )
    )
    if scoped:
        # Row-level security filters too; saying it lets PostgreSQL use (site, serial_number).
        query = query.where(_OTHER.c.site.in_(bindparam("sites", expanding=True)))
    return query


_SERIAL_CLASHES = {scoped: _serial_clash_query(scoped) for scoped in (False, True)}
# Per clinical table: the insert (columns given at execution), the locking read, the write.
_INSERT = {
    name: pg_insert(table).on_conflict_do_nothing(index_elements=["site", "id"]).returning(table.c.id)
    for name, table in TABLES.items()
}
_LOCK_RECORD = {
    name: select(table.c.version, table.c.data, table.c.field_hlc, table.c.deleted)
    .where(table.c.site == bindparam("record_site"), table.c.id == bindparam("record_id"))
    .with_for_update()
    for name, table in TABLES.items()
}
_WRITE = {
    name: update(table)
    .where(table.c.site == bindparam("record_site"), table.c.id == bindparam("record_id"))
    .values(updated_at=text("now()"))
    for name, table in TABLES.items()
}


def push_batch(
    engine: Engine, scope: SiteScope, device_id: str, envelope: PushEnvelope, cipher: PatientCipher
) -> PushReply:
    """Apply a batch; one result per operation, in the order sent."""
    for attempt in range(1, BATCH_ATTEMPTS + 1):
        try:
            return _push_once(engine, scope, device_id, envelope, cipher)
        except DBAPIError as exc:
            # Two batches that lock rows in opposite orders: PostgreSQL aborts one; run it again.
            if not _retryable(exc) or attempt == BATCH_ATTEMPTS:
                raise
            log.warning("push from %s retried after %s (attempt %d)", device_id, _sqlstate(exc), attempt)
    raise AssertionError("unreachable")


def append_changes(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Append change_log rows; call as the LAST statement before commit (the lock lasts until then)."""
    if not rows:
        return
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHANGE_LOG_LOCK})
    conn.execute(insert(change_log), rows)


def _push_once(
    engine: Engine, scope: SiteScope, device_id: str, envelope: PushEnvelope, cipher: PatientCipher
) -> PushReply:
    for isolated in (False, True):
        try:
            with scoped_transaction(engine, scope) as conn:
                batch = _Batch(conn, scope, device_id, cipher, isolated=isolated)
                results = [batch.apply(raw) for raw in envelope.ops]
                batch.store_results()
                append_changes(conn, batch.changes)
            return PushReply(results=results)
        except _Isolate:
            continue  # rolled back: run the batch again, each operation in its own savepoint
    raise AssertionError("unreachable")


class _Isolate(Exception):
    """An operation of a batch run without savepoints was refused or failed."""


class _Rejected(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Conflict:
    """One conflicts row: a field held for a person (`resolution` None) or decided by a rule."""

    site: str
    table: str
    record_id: str
    field: str
    rule: str
    local: Any
    server: Any
    base: Any = None
    is_safety: bool = False
    resolution: str | None = None  # keep_local | keep_server when a rule decided
    value: Any = None  # what the field holds after a rule decided


@dataclass
class _Outcome:
    result: OpResult
    changes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Batch:
    conn: Connection
    scope: SiteScope
    device_id: str
    cipher: PatientCipher
    isolated: bool = True  # each operation in its own savepoint; False: the first refusal raises _Isolate
    changes: list[dict[str, Any]] = field(default_factory=list)
    effective: set[str] = field(default_factory=set)  # ops of this device that took effect
    failed: dict[str, Code] = field(default_factory=dict)  # ops of this batch rejected, and why
    _roles: dict[str, str | None] = field(default_factory=dict)
    _treatments: set[tuple[str, str]] = field(default_factory=set)  # (site, id) known to exist
    _results: dict[str, dict[str, Any]] = field(default_factory=dict)  # op_id -> result, not yet written

    def apply(self, raw: dict[str, Any]) -> OpResult:
        op, problem = parse_operation(raw)
        if op is None:
            return self._refuse_malformed(raw, problem)
        try:
            self._admit(op)
            with self._savepoint():
                outcome = self._claimed(op)
        except _Rejected as refusal:
            if not self.isolated:
                raise _Isolate from refusal
            return self._refuse(op, refusal)
        except DBAPIError as exc:
            if _retryable(exc):
                raise
            if not self.isolated:
                raise _Isolate from exc
            log.exception("op %s from %s could not be stored", op.op_id, self.device_id)
            refusal = _Rejected(
                Code.STORE_FAILED, f"The cloud could not store this change ({_sqlstate(exc)})."
            )
            return self._refuse(op, refusal)
        self.changes.extend(outcome.changes)
        original = outcome.result.original or outcome.result
        if original.status in ("applied", "conflict"):
            self.effective.add(op.op_id)
        elif original.code is not None:
            self.failed[op.op_id] = original.code
        return outcome.result

    def store_results(self) -> None:
        """Write the results of the operations that took effect into their ledger rows, at once."""
        if self._results:
            rows = [
                {"ledger_device": self.device_id, "ledger_op": op_id, "ledger_result": result}
                for op_id, result in self._results.items()
            ]
            self.conn.execute(_STORE_RESULT, rows)
            self._results.clear()

    def _savepoint(self) -> AbstractContextManager[Any]:
        return self.conn.begin_nested() if self.isolated else nullcontext()

    # --- checks before anything is written ---------------------------------------------------
    def _admit(self, op: Operation) -> None:
        if op.device_id != self.device_id:
            raise _Rejected(
                Code.DEVICE_MISMATCH,
                f"This operation names device {op.device_id}, but the credential is device {self.device_id}. "
                "A copied station database cannot sync; enrol this station.",
            )
        if not self.scope.allows(op.site):
            raise _Rejected(Code.SITE_NOT_ALLOWED, f"This device does not sync site {op.site}.")

    def _claimed(self, op: Operation) -> _Outcome:
        original = self._claim(op)
        if original is not None:
            return _Outcome(
                OpResult(op_id=op.op_id, status="duplicate", version=original.version, original=original)
            )
        self._require_dependencies(op)
        # A person's decision is recorded before its values merge; a second decision is refused
        # (cloud/resolutions.py). An incident a station reports is kept once (cloud/incidents.py).
        refused = settle_resolution(self.conn, self.device_id, op) if op.resolution else None
        if refused is not None or op.table == "incidents":
            outcome = _Outcome(refused or record_incident(self.conn, self.device_id, op))
        else:
            outcome = {"insert": self._insert, "update": self._update, "delete": self._delete}[op.kind](op)
        self._store_result(op, outcome.result)
        return outcome

    def _claim(self, op: Operation) -> OpResult | None:
        """Claim (device, op_id) in the ledger, or return the result stored by the first attempt.

        A concurrent request carrying the same op waits on the claim until this one commits, then
        finds the stored result: two deliveries never both apply.
        """
        key = {"device_id": self.device_id, "op_id": op.op_id}
        claimed = self.conn.execute(_CLAIM, {**key, "site": op.site}).first()
        if claimed is not None:
            return None
        stored = self._results.get(op.op_id)  # the same op earlier in this batch
        if stored is None:
            stored = self.conn.execute(_STORED, key).scalar()
        if stored is None:
            # The id was first used for a site this request cannot see: never apply it a second time.
            raise _Rejected(Code.INVALID_OPERATION, "This operation id was already used for another site.")
        return OpResult.model_validate(stored)

    def _require_dependencies(self, op: Operation) -> None:
        pending = [d for d in op.depends_on if d not in self.effective]
        if not pending:
            return
        failed_here = [d for d in pending if d in self.failed]
        if any(self.failed[d] is Code.DEPENDENCY_MISSING for d in failed_here):
            raise _missing(failed_here)
        if failed_here:
            raise _dependency_rejected(failed_here)
        rows = self.conn.execute(
            select(op_ledger.c.op_id, op_ledger.c.result["status"].astext).where(
                op_ledger.c.device_id == self.device_id, op_ledger.c.op_id.in_(pending)
            )
        ).all()
        found = {op_id: status for op_id, status in rows}
        missing = [d for d in pending if d not in found]
        if missing:
            raise _missing(missing)
        rejected = [d for d, status in found.items() if status == "rejected"]
        if rejected:
            raise _dependency_rejected(rejected)
        # Took effect in an earlier batch: a ledger result never changes, so the next op that
        # depends on them (the rest of a treatment) need not ask again.
        self.effective.update(found)

    # --- insert ------------------------------------------------------------------------------
    def _insert(self, op: Operation) -> _Outcome:
        record = {**without_station_local(op.payload), "id": op.record_id}
        if op.table == "treatments":
            record["site"] = op.site
        if op.table != "treatments" and not self._has_treatment(op.site, record["treatment_id"]):
            raise _Rejected(
                Code.UNKNOWN_TREATMENT,
                f"The cloud has no treatment {record['treatment_id']} at site {op.site} yet; "
                "the station keeps this change and sends it again.",
            )
        if op.table == "applicators":
            record["serial_number"] = str(record["serial_number"]).strip().upper()
            self._lock_serial(record["serial_number"])
        values = {
            "site": op.site,
            "id": op.record_id,
            "version": 1,
            "data": seal_record(record, self.cipher),
            "field_hlc": _clocks({name: op.hlc for name in record}, {op.hlc: op.clock_offset_ms}),
            "deleted": record.get("deleted_at") is not None,
            "device_id": self.device_id,
            "last_op_id": op.op_id,
            **_columns(op.table, record),
        }
        inserted = self.conn.execute(_INSERT[op.table], values).first()
        if inserted is None:
            raise _Rejected(Code.RECORD_EXISTS, f"Record {op.record_id} already exists at site {op.site}.")
        found: list[ConflictInfo] = []
        notes: list[str] = []
        if op.table == "applicators":
            found += self._serial_clashes(op, record)
            found += self._inventory_recheck(op, record, notes)
        self._queue_write_back(op, {}, record)
        return _Outcome(_result(op, 1, found, notes), [self._change(op, 1)])

    def _lock_serial(self, serial: str) -> None:
        # Two laptops' inserts of one serial are checked one after the other: the second sees the first.
        self.conn.execute(_SERIAL_LOCK, {"cls": SERIAL_LOCK_CLASS, "serial": serial})

    def _serial_clashes(self, op: Operation, record: dict[str, Any]) -> list[ConflictInfo]:
        """Invariant 9: one serial live in two treatments is a safety conflict on both records."""
        params: dict[str, Any] = {
            "serial": record["serial_number"],
            "site": op.site,
            "record_id": op.record_id,
        }
        if not self.scope.all_sites:
            params["sites"] = sorted(self.scope.sites)
        query = _SERIAL_CLASHES[not self.scope.all_sites]
        found: list[ConflictInfo] = []
        for row in self.conn.execute(query, params):
            if not _clash(row, op.site, record):
                continue
            rule = (
                "serial_scanned_twice"
                if row.treatment_id == record["treatment_id"]
                else "serial_in_two_treatments"
            )
            found += self._serial_conflict_pair(op, record, row, rule)
        return found

    def _serial_conflict_pair(
        self, op: Operation, record: dict[str, Any], other: Any, rule: str
    ) -> list[ConflictInfo]:
        here = {"site": op.site, "treatment_id": record["treatment_id"], "applicator_id": op.record_id}
        there = {"site": other.site, "treatment_id": other.treatment_id, "applicator_id": other.id}
        serial = record["serial_number"]
        mine = self._conflict(op, _serial_conflict(op.site, op.record_id, rule, serial, server=there))
        theirs = self._conflict(op, _serial_conflict(other.site, other.id, rule, serial, server=here))
        details = {"serial": serial, "here": here, "there": there}
        self._incident(op.op_id, op.site, "serial_in_two_treatments", op.record_id, details)
        return [mine, theirs.model_copy(update={"record_id": other.id, "table": "applicators"})]

    def _inventory_recheck(
        self, op: Operation, record: dict[str, Any], notes: list[str]
    ) -> list[ConflictInfo]:
        """The cloud re-checks every scan against Priority's inventory as last refreshed."""
        serial = record["serial_number"]
        inventory = self.conn.execute(_INVENTORY, {"site": op.site, "serial": serial}).one()
        if not inventory.loaded:
            notes.append(
                f"Not re-checked against Priority: no inventory has been loaded for site {op.site} yet."
            )
            return []
        usage = inventory.usage
        if not inventory.listed:
            rule, message = "not_in_inventory", f"{serial} is not in Priority's inventory of {op.site}."
        elif (usage or "").strip().lower() in USED_IN_PRIORITY:
            rule, message = "used_in_priority", f"Priority records {serial} as used ({usage})."
        else:
            return []
        notes.append(message)
        details = {"serial": serial, "treatment_id": record["treatment_id"], "usage": usage}
        details["bundle_version"] = record.get("bundle_version")  # the cache that let the scan through
        self._incident(op.op_id, op.site, rule, op.record_id, details)
        return [self._conflict(op, _serial_conflict(op.site, op.record_id, rule, serial, server=usage))]

    # --- update and delete -------------------------------------------------------------------
    def _update(self, op: Operation) -> _Outcome:
        row = self._lock_record(op)
        server = open_record(row.data, self.cipher)
        changed = {k: tuple(v) for k, v in op.changed.items() if not is_station_local(k)}
        ctx = self._context(op, row, server, changed)
        outcomes = merge(op.table, changed, server, ctx)
        found = [self._contested(op, o) for o in outcomes if o.contested]
        taken = [o for o in outcomes if o.action is Action.TAKE]
        if not taken:
            return _Outcome(_result(op, row.version, found, []))
        merged = {**server, **{o.field: o.value for o in taken}}
        merged["hlc"] = max(str(server.get("hlc") or ""), op.hlc)
        merged["updated_at"] = _later(server.get("updated_at"), op.payload.get("updated_at"))
        clocks = {**_field_clocks(row.field_hlc), **{o.field: op.hlc for o in taken}}
        offsets = {**_offsets(row.field_hlc), op.hlc: op.clock_offset_ms}
        deleted = merged.get("deleted_at") is not None if "deleted_at" in merged else row.deleted
        version = self._write(op, row.version + 1, merged, _clocks(clocks, offsets), deleted)
        self._queue_write_back(op, server, merged)
        return _Outcome(_result(op, version, found, []), [self._change(op, version)])

    def _queue_write_back(self, op: Operation, before: Mapping[str, Any], after: dict[str, Any]) -> None:
        """What Priority must learn, queued in this transaction (sent later; never blocks the push)."""
        if op.table == "applicators" and after.get("status") != before.get("status"):
            enqueue_applicator(self.conn, op.site, after)  # only a final status is written back
        completed = after.get("is_complete") is True and before.get("is_complete") is not True
        if op.table == "treatments" and completed:
            enqueue_order_status(self.conn, op.site, seal_record(after, self.cipher), self.cipher)

    def _delete(self, op: Operation) -> _Outcome:
        """A soft delete: the record and its history stay; pulls carry `deleted`."""
        row = self._lock_record(op)
        if row.deleted:
            return _Outcome(_result(op, row.version, [], ["Already deleted."]))
        record = open_record(row.data, self.cipher)
        marks = {k: op.payload[k] for k in ("deleted_at", "deleted_by", "deleted_reason") if k in op.payload}
        clocks = {**_field_clocks(row.field_hlc), **{k: op.hlc for k in marks}}
        offsets = {**_offsets(row.field_hlc), op.hlc: op.clock_offset_ms}
        version = self._write(op, row.version + 1, {**record, **marks}, _clocks(clocks, offsets), True)
        return _Outcome(_result(op, version, [], []), [self._change(op, version)])

    def _lock_record(self, op: Operation) -> Any:
        row = self.conn.execute(
            _LOCK_RECORD[op.table], {"record_site": op.site, "record_id": op.record_id}
        ).first()
        if row is None:
            raise _Rejected(
                Code.UNKNOWN_RECORD,
                f"The cloud has no {op.table} record {op.record_id} at site {op.site}; "
                "the station keeps this change in quarantine.",
            )
        return row

    def _context(
        self, op: Operation, row: Any, server: dict[str, Any], changed: Mapping[str, tuple[Any, Any]]
    ) -> RuleContext:
        clocks, offsets = _field_clocks(row.field_hlc), _offsets(row.field_hlc)
        indication = server.get("indication") or "unknown"
        if op.table == "applicators" and "status" in changed:
            parent = self._treatment(op.site, server.get("treatment_id"))
            indication = (parent or {}).get("indication") or "unknown"
        return RuleContext(
            local_hlc=op.hlc,
            local_offset_ms=op.clock_offset_ms,
            server_hlcs=clocks,
            server_offsets={name: offsets.get(stamp) for name, stamp in clocks.items()},
            indication=indication,
            local_record=without_station_local(op.payload),
            server_record=server,
            local_base={name: base for name, (base, _new) in changed.items()},
            role_of=self._role_of,
        )

    def _write(
        self, op: Operation, version: int, record: dict[str, Any], field_hlc: dict[str, Any], deleted: bool
    ) -> int:
        self.conn.execute(
            _WRITE[op.table],
            {
                "record_site": op.site,
                "record_id": op.record_id,
                "version": version,
                "data": seal_record(record, self.cipher),
                "field_hlc": field_hlc,
                "deleted": deleted,
                "last_op_id": op.op_id,
                **_columns(op.table, record),
            },
        )
        return version

    # --- conflicts, incidents, ledger ----------------------------------------------------------
    def _contested(self, op: Operation, outcome: FieldOutcome) -> ConflictInfo:
        held = outcome.action is Action.HOLD
        return self._conflict(
            op,
            _Conflict(
                site=op.site,
                table=op.table,
                record_id=op.record_id,
                field=outcome.field,
                rule=outcome.rule or "",
                local=outcome.local,
                server=outcome.server,
                base=outcome.base,
                is_safety=outcome.is_safety and held,
                resolution=None
                if held
                else ("keep_local" if outcome.action is Action.TAKE else "keep_server"),
                value=outcome.value,
            ),
        )

    def _conflict(self, op: Operation, row: _Conflict) -> ConflictInfo:
        """Write one conflicts row (patient values sealed) and say it to the station (in clear)."""
        conflict_id = str(uuid.uuid4())
        status = "open" if row.resolution is None else "auto_resolved"
        self.conn.execute(
            insert(conflicts).values(
                id=conflict_id,
                site=row.site,
                table_name=row.table,
                record_id=row.record_id,
                field=row.field,
                is_safety=row.is_safety,
                rule=row.rule[:32],
                local_value=seal_value(row.field, row.local, self.cipher),
                server_value=seal_value(row.field, row.server, self.cipher),
                base_value=seal_value(row.field, row.base, self.cipher),
                status=status,
                op_id=op.op_id,
                device_id=self.device_id,
                resolved_at=None if row.resolution is None else text("now()"),
                resolution=row.resolution,
            )
        )
        return ConflictInfo(
            conflict_id=conflict_id,
            field=row.field,
            rule=row.rule,
            server_value=row.server,
            local_value=row.local,
            is_safety=row.is_safety,
            status=status,
            value=row.server if row.resolution is None else row.value,
        )

    def _incident(
        self, op_id: str, site: str, kind: str, record_id: str | None, details: dict[str, Any]
    ) -> None:
        """One incident per operation, kind and record, however often the operation is retried."""
        key = f"{self.device_id}:{op_id}:{kind}:{record_id}"
        self.conn.execute(
            pg_insert(incidents)
            .values(
                id=str(uuid.uuid5(INCIDENT_NAMESPACE, key)),
                site=site,
                kind=kind[:32],
                record_id=record_id,
                details={**details, "op_id": op_id, "device_id": self.device_id},
            )
            .on_conflict_do_nothing(index_elements=["site", "id"])
        )

    def _store_result(self, op: Operation, result: OpResult) -> None:
        # Written with the batch's others by store_results; the claim holds the row until then.
        self._results[op.op_id] = _stored(result)

    def _refuse(self, op: Operation, refusal: _Rejected) -> OpResult:
        result = OpResult(op_id=op.op_id, status="rejected", code=refusal.code, message=refusal.message)
        self.failed[op.op_id] = refusal.code
        if refusal.code not in RETRYABLE_CODES:
            # A final refusal is the op's answer for ever: a retry gets it back as `duplicate`.
            with self.conn.begin_nested():
                self.conn.execute(
                    pg_insert(op_ledger)
                    .values(device_id=self.device_id, op_id=op.op_id, site=op.site, result=_stored(result))
                    .on_conflict_do_nothing(index_elements=["device_id", "op_id"])
                )
        self._incident_for_rejection(op.model_dump(), refusal)
        return result

    def _refuse_malformed(self, raw: dict[str, Any], problem: str) -> OpResult:
        refusal = _Rejected(Code.INVALID_OPERATION, f"This operation is malformed: {problem}")
        self._incident_for_rejection(raw, refusal)
        return OpResult(
            op_id=str(raw.get("op_id") or ""), status="rejected", code=refusal.code, message=refusal.message
        )

    def _incident_for_rejection(self, op: Mapping[str, Any], refusal: _Rejected) -> None:
        """Invariant 6: a rejected INSERTED or FAULTY applicator is an incident, not just a log line."""
        payload = op.get("payload") if isinstance(op.get("payload"), dict) else {}
        if op.get("table") != "applicators" or payload.get("status") not in INCIDENT_STATUSES:
            return
        if refusal.code is Code.DEPENDENCY_MISSING:
            return  # not an error: the station sends it again once its dependency arrived
        site, record_id = op.get("site"), str(op.get("record_id") or "")[:36] or None
        if not isinstance(site, str) or not self.scope.allows(site):
            # The row could not be stored under a site this device does not sync; say it loudly here.
            log.warning(
                "rejected %s applicator %s at unsynced site %s", payload.get("status"), record_id, site
            )
            return
        details = {"code": refusal.code.value, "message": refusal.message, "status": payload.get("status")}
        details["serial"] = payload.get("serial_number")
        try:
            with self.conn.begin_nested():
                self._incident(str(op.get("op_id") or ""), site, "rejected_applicator", record_id, details)
        except DBAPIError as exc:
            if _retryable(exc):
                raise
            # A malformed op must not take the batch down; its refusal still reaches the station.
            log.exception("the incident for rejected applicator %s could not be stored", record_id)

    # --- reads -------------------------------------------------------------------------------
    def _treatment(self, site: str, treatment_id: Any) -> dict[str, Any] | None:
        if not treatment_id:
            return None
        return self.conn.execute(_TREATMENT, {"site": site, "id": str(treatment_id)}).scalar()

    def _has_treatment(self, site: str, treatment_id: Any) -> bool:
        """Whether the cloud has the treatment; asked once per treatment and batch (rows are never
        removed: a deleted treatment is a flag)."""
        key = (site, str(treatment_id))
        if key not in self._treatments:
            if self._treatment(site, treatment_id) is None:
                return False
            self._treatments.add(key)
        return True

    def _role_of(self, user_id: Any) -> str | None:
        if user_id is None:
            return None
        key = str(user_id)
        if key not in self._roles:
            self._roles[key] = self.conn.execute(select(users.c.role).where(users.c.id == key)).scalar()
        return self._roles[key]

    def _change(self, op: Operation, version: int) -> dict[str, Any]:
        return {
            "site": op.site,
            "table_name": op.table,
            "record_id": op.record_id,
            "version": version,
            "op_id": op.op_id,
            "device_id": self.device_id,
        }


# --- helpers -----------------------------------------------------------------------------------
def _result(op: Operation, version: int, found: list[ConflictInfo], notes: list[str]) -> OpResult:
    held = [c for c in found if c.status == "open"]
    message = list(notes)
    if held:
        fields = ", ".join(dict.fromkeys(c.field for c in held))
        message.insert(0, f"Held for review: {fields}. Every other field was applied.")
    return OpResult(
        op_id=op.op_id,
        status="conflict" if held else "applied",
        version=version,
        conflicts=found or None,
        message=" ".join(message) or None,
    )


def _serial_conflict(site: str, record_id: str, rule: str, serial: str, *, server: Any) -> _Conflict:
    return _Conflict(site, "applicators", record_id, "serial_number", rule, serial, server, is_safety=True)


def _clash(row: Any, site: str, record: Mapping[str, Any]) -> bool:
    """Whether another live row of the serial is a real second use (the station's scan rules)."""
    if row.site == site and row.id == record.get("reused_from_id"):
        return False  # a continuation reusing its parent's opened or loaded applicator
    if row.treatment_deleted:
        return False  # a deleted treatment recorded it unused
    complete = (row.treatment_complete or "").lower() == "true"
    # Unused in a finished treatment: "previously no-use", which a person confirmed on the station.
    return not (complete and row.status not in TERMINAL)


def _columns(table_name: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The columns the cloud queries by, kept equal to the record's fields."""
    if table_name == "applicators":
        return {"treatment_id": str(record["treatment_id"]), "serial_number": str(record["serial_number"])}
    if table_name in ("applicator_packages", "removed_seeds"):
        return {"treatment_id": str(record["treatment_id"])}
    return {}


def _clocks(clocks: Mapping[str, str], offsets: Mapping[str, int | None]) -> dict[str, Any]:
    # Keep only the offsets of stamps still in use, so the map does not grow with every edit.
    used = set(clocks.values())
    return {**clocks, OFFSETS_KEY: {stamp: off for stamp, off in offsets.items() if stamp in used}}


def _field_clocks(field_hlc: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in (field_hlc or {}).items() if k != OFFSETS_KEY and isinstance(v, str)}


def _offsets(field_hlc: Mapping[str, Any]) -> dict[str, int | None]:
    return dict((field_hlc or {}).get(OFFSETS_KEY) or {})


def _later(first: Any, second: Any) -> Any:
    if first is None or second is None:
        return first if second is None else second
    return max(str(first), str(second))  # RFC 3339 in UTC from every station: text order is time order


def _stored(result: OpResult) -> dict[str, Any]:
    return result.model_dump(mode="json", exclude_none=True)


def _missing(op_ids: list[str]) -> _Rejected:
    return _Rejected(
        Code.DEPENDENCY_MISSING,
        f"{len(op_ids)} operation(s) this one depends on have not reached the cloud yet "
        f"(first: {op_ids[0]}); it is sent again after them.",
    )


def _dependency_rejected(op_ids: list[str]) -> _Rejected:
    return _Rejected(
        Code.DEPENDENCY_REJECTED,
        f"An operation this one depends on was rejected ({op_ids[0]}); both wait in quarantine for a person.",
    )


def _sqlstate(exc: DBAPIError) -> str:
    return str(getattr(exc.orig, "sqlstate", None) or type(exc.orig).__name__)


def _retryable(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES
