"""Applying a station's push: every operation exactly once, field by field, atomically one by one.

A batch runs in ONE transaction scoped to the device's sites; a refused operation leaves nothing
behind while the others commit (invariant 6). A batch is applied set-based, in three steps:

1. read: a few statements fetch what the whole batch needs (cloud/push_reads.py): the records it
   changes, locked; each serial it inserts, locked, then the serial's other uses; the ledger rows
   of its op ids and of their dependencies; Priority's inventory of its serials;
2. decide: each operation in turn, in Python, against that view, which each decision updates, so
   that an operation sees the records as the ones before it left them (`_Batch._decide`);
3. write: ONE statement writes every record, ledger row, conflict and incident of the batch
   (cloud/push_writes.py); then the Priority write-backs and, last, the change_log rows.

An operation refused while deciding writes nothing (a final refusal: only its ledger row), so the
batch needs no savepoint. When the writes do not land as decided (a concurrent delivery claimed an
op id first, another device inserted the same record, the database refused a value), the
transaction is rolled back and the batch runs again one operation at a time, each deciding on
fresh reads and writing inside its own SAVEPOINT: a failure rolls back that operation alone, and
the answer is the one the savepoints alone would give. Per operation:

1. the ledger: an op id of this device already there is answered `duplicate` with the result
   stored the first time (invariant 3). The op's ledger row is written with its result; a
   concurrent delivery of the same op waits on that row's key until the first commits, then
   finds it. The device is the authenticated one, never the body's: an op naming another device
   is refused;
2. the site must be one the device syncs (`site_not_allowed`, one message whether or not the
   site exists);
3. depends_on: every operation named must have taken effect earlier in the batch or before;
   a treatment finalised with a signature by code must name a signer and requester whose signing
   code for it the cloud verified (`signature_unverified`: a station cannot forge one);
4. insert / update / delete: an insert is checked for one serial in two treatments (invariant 9)
   and re-checked against Priority's inventory; an update is merged field by field with the
   conflict rules of sync/rules.py; a delete is soft;
5. the change is queued for change_log.

The change_log rows of the whole batch are appended last, under a transaction-level advisory lock
held until commit, so sequence numbers become visible in commit order and a puller paging by seq
never steps over a change that commits later with a smaller number (invariant 4).

To act on an operation's outcome (an incident, a notification), extend `_Batch._decide` or the
method of its kind: every row an operation writes goes through its `_Effect`, so it is written in
the same transaction, in both the set-based and the one-by-one path.
"""

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.exc import DBAPIError

from cloud.cipher import open_record, seal_record, seal_value
from cloud.db import SiteScope, scoped_transaction
from cloud.incidents import record_incident
from cloud.priority.writeback import TERMINAL as WRITE_BACK_STATUSES
from cloud.priority.writeback import applicator_payload, line_serial, order_status_payloads
from cloud.push_reads import BatchView, Key, Row, SerialUse
from cloud.push_writes import Planned, write_batch
from cloud.resolutions import settle as settle_resolution
from cloud.schema import applicator_packages, applicators, removed_seeds, treatments
from store.crypto import PatientCipher
from store.enums import ApplicatorStatus, SignatureMode
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

# pg_advisory_xact_lock key. Every writer of change_log takes CHANGE_LOG_LOCK (use append_changes).
CHANGE_LOG_LOCK = 0x4441_5254_0001  # "DART" + 1

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
# A treatment change touching one of these is (re-)signing it: checked when the mode is `code`.
SIGNATURE_FIELDS = frozenset({"is_complete", "signature_mode", "signed_by_user_id", "completed_by"})

# One statement: the uncorrelated subquery is an InitPlan that PostgreSQL evaluates in a one-time
# filter before the first row is produced, so the lock is held before any sequence number is
# taken (see append_changes). NOT `EXISTS (SELECT lock())`: PostgreSQL drops the target list of an
# EXISTS subquery, and the lock with it.
_APPEND_CHANGES = text(
    "INSERT INTO change_log (site, table_name, record_id, version, op_id, device_id) "
    "SELECT e->>'site', e->>'table_name', e->>'record_id', (e->>'version')::int, e->>'op_id', "
    "e->>'device_id' FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS e "
    "WHERE (SELECT pg_advisory_xact_lock(:key)::text) IS NOT NULL"
)


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
    """Append change_log rows; call as the LAST statement before commit (the lock lasts until then).

    Each row: site, table_name, record_id, version, and optionally op_id and device_id. The rows
    take their sequence numbers in the order given."""
    if not rows:
        return
    conn.execute(_APPEND_CHANGES, {"key": CHANGE_LOG_LOCK, "rows": json.dumps(rows, separators=(",", ":"))})


def _push_once(
    engine: Engine, scope: SiteScope, device_id: str, envelope: PushEnvelope, cipher: PatientCipher
) -> PushReply:
    items = [_Item(raw, *parse_operation(raw)) for raw in envelope.ops]
    try:
        with scoped_transaction(engine, scope) as conn:
            results = _Batch(conn, scope, device_id, cipher).apply_together(items)
        return PushReply(results=results)
    except _Isolate as why:
        log.info("push from %s applied one operation at a time: %s", device_id, why)
    with scoped_transaction(engine, scope) as conn:
        results = _Batch(conn, scope, device_id, cipher).apply_one_by_one(items)
    return PushReply(results=results)


class _Isolate(Exception):
    """The set-based writes did not land as decided: run the batch one operation at a time."""


class _LedgerTaken(Exception):
    """The op's ledger row was written meanwhile by another delivery (or is another site's)."""


class _Rejected(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Item:
    raw: dict[str, Any]
    op: Operation | None  # None: malformed
    problem: str


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
class _Effect:
    """What one operation does: its answer and every row it writes (nothing written yet)."""

    result: OpResult | None = None
    rows: list[Row] = field(default_factory=list)  # clinical records as the op leaves them
    ledger: dict[str, Any] | None = None  # the result the ledger keeps for ever (None: nothing kept)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    write_backs: list[dict[str, Any]] = field(default_factory=list)  # writeback_queue rows
    changes: list[dict[str, Any]] = field(default_factory=list)  # change_log rows

    @property
    def answer(self) -> OpResult:
        assert self.result is not None, "an operation's effect is taken only once it is answered"
        return self.result


@dataclass
class _Batch:
    conn: Connection
    scope: SiteScope
    device_id: str
    cipher: PatientCipher
    view: BatchView = field(init=False)
    effective: set[str] = field(default_factory=set)  # ops of this device that took effect
    failed: dict[str, Code] = field(default_factory=dict)  # ops of this batch rejected, and why
    changes: list[dict[str, Any]] = field(default_factory=list)  # change_log rows, in op order

    def __post_init__(self) -> None:
        self.view = BatchView(self.conn, self.scope, self.device_id)

    # --- the two ways of applying a batch ------------------------------------------------------
    def apply_together(self, items: list[_Item]) -> list[OpResult]:
        """Read for the whole batch, decide each operation, write it all at once."""
        if any(i.op is not None and _writes_now(i.op) for i in items):
            # Its writes would land before the batch's own, and could not see them.
            raise _Isolate("a conflict resolution or an incident report goes one operation at a time")
        planned = Planned()
        try:
            self._fetch_ahead([i.op for i in items if i.op is not None and self._admissible(i.op)])
            results = []
            for item in items:
                effect = self._settle(item)
                for row in effect.rows:
                    self.view.write(row)
                if effect.ledger is not None and item.op is not None:
                    planned.ledger.append(self._ledger_row(item.op, effect.ledger))
                    self.view.remember(item.op.op_id, effect.ledger)
                planned.conflicts += effect.conflicts
                planned.incidents += effect.incidents
                planned.write_backs += effect.write_backs
                self.changes += effect.changes
                results.append(effect.answer)
            expected, written = write_batch(self.conn, self.device_id, self.view.written, planned)
            if written != expected:
                raise _Isolate(f"decided {expected}, written {written}")
        except DBAPIError as exc:
            if _retryable(exc):
                raise
            raise _Isolate(f"the database refused the batch ({_sqlstate(exc)})") from exc
        append_changes(self.conn, self.changes)
        return results

    def apply_one_by_one(self, items: list[_Item]) -> list[OpResult]:
        """Each operation decided on fresh reads and written in its own savepoint."""
        results = [self._settle_alone(item) for item in items]
        append_changes(self.conn, self.changes)
        return results

    def _settle(self, item: _Item) -> _Effect:
        """Decide one operation of a set-based batch (a refusal is an effect too)."""
        if item.op is None:
            return self._malformed(item.raw, item.problem)
        op = item.op
        try:
            self._admit(op)
            effect = self._decide(op)
        except _Rejected as refusal:
            effect = self._refusal(op, refusal)
        self._count(op, effect.answer)
        return effect

    def _settle_alone(self, item: _Item) -> OpResult:
        if item.op is None:
            effect = self._malformed(item.raw, item.problem)
            self._write_incidents(effect.incidents)
            return effect.answer
        op = item.op
        self.view = BatchView(self.conn, self.scope, self.device_id)  # as the savepoints before left it
        try:
            self._admit(op)
            with self.conn.begin_nested():
                self._fetch_ahead([op])
                effect = self._decide(op)
                self._write_alone(op, effect)
        except _Rejected as refusal:
            effect = self._refused_alone(op, refusal)
        except _LedgerTaken:
            effect = self._taken(op)
        except DBAPIError as exc:
            if _retryable(exc):
                raise
            log.exception("op %s from %s could not be stored", op.op_id, self.device_id)
            refusal = _Rejected(
                Code.STORE_FAILED, f"The cloud could not store this change ({_sqlstate(exc)})."
            )
            effect = self._refused_alone(op, refusal)
        self._count(op, effect.answer)
        self.changes += effect.changes
        return effect.answer

    def _write_alone(self, op: Operation, effect: _Effect) -> None:
        for row in effect.rows:
            self.view.write(row)
        planned = Planned(
            conflicts=effect.conflicts, incidents=effect.incidents, write_backs=effect.write_backs
        )
        if effect.ledger is not None:
            planned.ledger.append(self._ledger_row(op, effect.ledger))
        expected, written = write_batch(self.conn, self.device_id, self.view.written, planned)
        if written.ledger != expected.ledger:
            raise _LedgerTaken
        if written.inserted != expected.inserted:
            # Another device inserted the record meanwhile (it waited for their commit).
            raise _Rejected(Code.RECORD_EXISTS, f"Record {op.record_id} already exists at site {op.site}.")
        if written != expected:
            raise AssertionError(f"op {op.op_id}: decided {expected}, written {written}")

    def _taken(self, op: Operation) -> _Effect:
        """The op's ledger row appeared meanwhile: answer with what it holds."""
        self.view = BatchView(self.conn, self.scope, self.device_id)
        stored = self.view.stored_result(op.op_id)
        if stored is None:
            # The id was first used for a site this request cannot see: never apply it a second time.
            refusal = _Rejected(
                Code.INVALID_OPERATION, "This operation id was already used for another site."
            )
            return self._refused_alone(op, refusal)
        return _duplicate(op, stored)

    def _refused_alone(self, op: Operation, refusal: _Rejected) -> _Effect:
        effect = self._refusal(op, refusal)
        if effect.ledger is not None:
            # A final refusal is the op's answer for ever (a row already there stays as it is).
            kept = Planned(ledger=[self._ledger_row(op, effect.ledger)])
            with self.conn.begin_nested():
                write_batch(self.conn, self.device_id, [], kept)
        self._write_incidents(effect.incidents)
        return effect

    def _write_incidents(self, incidents: list[dict[str, Any]]) -> None:
        for incident in incidents:
            try:
                with self.conn.begin_nested():
                    write_batch(self.conn, self.device_id, [], Planned(incidents=[incident]))
            except DBAPIError as exc:
                if _retryable(exc):
                    raise
                # A malformed op must not take the batch down; its refusal still reaches the station.
                log.exception("the incident %s could not be stored", incident.get("kind"))

    def _count(self, op: Operation, result: OpResult) -> None:
        original = result.original or result
        if original.status in ("applied", "conflict"):
            self.effective.add(op.op_id)
        elif original.code is not None:
            self.failed[op.op_id] = original.code

    def _ledger_row(self, op: Operation, result: dict[str, Any]) -> dict[str, Any]:
        return {"op_id": op.op_id, "site": op.site, "result": result}

    # --- reads ahead -----------------------------------------------------------------------------
    def _fetch_ahead(self, ops: list[Operation]) -> None:
        """Everything these operations will ask the view, in a few statements (see push_reads)."""
        changed: list[Key] = []
        existing: list[Key] = []
        serials: list[str] = []
        inventory: list[tuple[str, str]] = []
        ledger: list[str] = []
        signed: list[tuple[str, str]] = []
        for op in ops:
            ledger.append(op.op_id)
            ledger += op.depends_on
            if _code_signature(op) is not None:
                signed.append((op.site, op.record_id))
            if _writes_now(op):
                continue  # reads its own rows (cloud/resolutions.py, cloud/incidents.py)
            if op.kind != "insert":
                changed.append((op.table, op.site, op.record_id))
                continue
            existing.append((op.table, op.site, op.record_id))
            treatment_id = op.payload.get("treatment_id")
            if op.table != "treatments" and treatment_id:
                existing.append(("treatments", op.site, str(treatment_id)))
            if op.table == "applicators":
                serial = _serial(op.payload.get("serial_number"))
                serials.append(serial)
                inventory.append((op.site, serial))
        self.view.lock(rows=changed, serials=serials)
        for op in ops:
            row = self.view.row(op.table, op.site, op.record_id) if op.kind == "update" else None
            if row is None or op.table != "applicators" or "status" not in op.changed:
                continue
            # Its treatment's indication decides the status rule; a final status is written back
            # to the order line the inventory names.
            treatment_id = row.data.get("treatment_id")
            if treatment_id:
                existing.append(("treatments", op.site, str(treatment_id)))
            inventory.append((op.site, line_serial(row.data)))
        self.view.read(rows=existing, ledger=ledger, inventory=inventory, serials=serials, signed=signed)

    # --- deciding one operation ---------------------------------------------------------------
    def _admissible(self, op: Operation) -> bool:
        return op.device_id == self.device_id and self.scope.allows(op.site)

    def _admit(self, op: Operation) -> None:
        if op.device_id != self.device_id:
            raise _Rejected(
                Code.DEVICE_MISMATCH,
                f"This operation names device {op.device_id}, but the credential is device {self.device_id}. "
                "A copied station database cannot sync; enrol this station.",
            )
        if not self.scope.allows(op.site):
            raise _Rejected(Code.SITE_NOT_ALLOWED, f"This device does not sync site {op.site}.")

    def _decide(self, op: Operation) -> _Effect:
        stored = self.view.stored_result(op.op_id)
        if stored is not None:
            return _duplicate(op, stored)
        self._require_dependencies(op)
        self._require_verified_signature(op)
        # A person's decision is recorded before its values merge; a second decision is refused
        # (cloud/resolutions.py). An incident a station reports is kept once (cloud/incidents.py).
        # Both write as they decide, so their batches go one operation at a time (_writes_now).
        refused = settle_resolution(self.conn, self.device_id, op) if op.resolution else None
        if refused is not None or op.table == "incidents":
            effect = _Effect(refused or record_incident(self.conn, self.device_id, op))
        else:
            effect = {"insert": self._insert, "update": self._update, "delete": self._delete}[op.kind](op)
        effect.ledger = _stored(effect.answer)
        return effect

    def _require_dependencies(self, op: Operation) -> None:
        pending = [d for d in op.depends_on if d not in self.effective]
        if not pending:
            return
        failed_here = [d for d in pending if d in self.failed]
        if any(self.failed[d] is Code.DEPENDENCY_MISSING for d in failed_here):
            raise _missing(failed_here)
        if failed_here:
            raise _dependency_rejected(failed_here)
        found = self.view.stored_statuses(pending)
        missing = [d for d in pending if d not in found]
        if missing:
            raise _missing(missing)
        rejected = [d for d, status in found.items() if status == "rejected"]
        if rejected:
            raise _dependency_rejected(rejected)
        # Took effect in an earlier batch: a ledger result never changes, so the next op that
        # depends on them (the rest of a treatment) need not ask again.
        self.effective.update(found)

    def _require_verified_signature(self, op: Operation) -> None:
        """A signature by code is the cloud's to vouch for: the signer and requester the change names
        must be those of a signing code for this treatment that the cloud verified (marked used)."""
        signature = _code_signature(op)
        if signature is None:
            return
        signer, requester = signature
        if (signer, requester) in self.view.code_signatures(op.site, op.record_id):
            return
        raise _Rejected(
            Code.SIGNATURE_UNVERIFIED,
            f"Treatment {op.record_id} is finalised with a signature by code, but the cloud verified no "
            f"signing code for it signed by {signer or '(no signer)'} at the request of "
            f"{requester or '(no requester)'}. Nothing was applied; the finalisation waits in "
            "quarantine for a person to check.",
        )

    # --- insert ------------------------------------------------------------------------------
    def _insert(self, op: Operation) -> _Effect:
        record = {**without_station_local(op.payload), "id": op.record_id}
        if op.table == "treatments":
            record["site"] = op.site
        if op.table != "treatments" and self._treatment(op.site, record["treatment_id"]) is None:
            raise _Rejected(
                Code.UNKNOWN_TREATMENT,
                f"The cloud has no treatment {record['treatment_id']} at site {op.site} yet; "
                "the station keeps this change and sends it again.",
            )
        if op.table == "applicators":
            record["serial_number"] = _serial(record["serial_number"])
            # Two laptops' inserts of one serial are checked one after the other: the second sees the first.
            self.view.lock(serials=[record["serial_number"]])
        if self.view.row(op.table, op.site, op.record_id) is not None:
            raise _Rejected(Code.RECORD_EXISTS, f"Record {op.record_id} already exists at site {op.site}.")
        effect = _Effect()
        effect.rows.append(
            Row(
                op.table,
                op.site,
                op.record_id,
                version=1,
                data=seal_record(record, self.cipher),
                field_hlc=_clocks({name: op.hlc for name in record}, {op.hlc: op.clock_offset_ms}),
                deleted=record.get("deleted_at") is not None,
                columns=_columns(op.table, record),
                inserted=True,
                last_op_id=op.op_id,
            )
        )
        found: list[ConflictInfo] = []
        notes: list[str] = []
        if op.table == "applicators":
            found += self._serial_clashes(op, record, effect)
            found += self._inventory_recheck(op, record, notes, effect)
        self._queue_write_back(op, {}, record, effect)
        effect.result = _result(op, 1, found, notes)
        effect.changes.append(self._change(op, 1))
        return effect

    def _serial_clashes(self, op: Operation, record: dict[str, Any], effect: _Effect) -> list[ConflictInfo]:
        """Invariant 9: one serial live in two treatments is a safety conflict on both records."""
        found: list[ConflictInfo] = []
        for use in self.view.serial_uses(record["serial_number"]):
            if (use.site, use.id) == (op.site, op.record_id) or not _clash(use, op.site, record):
                continue
            rule = (
                "serial_scanned_twice"
                if use.treatment_id == record["treatment_id"]
                else "serial_in_two_treatments"
            )
            found += self._serial_conflict_pair(op, record, use, rule, effect)
        return found

    def _serial_conflict_pair(
        self, op: Operation, record: dict[str, Any], other: SerialUse, rule: str, effect: _Effect
    ) -> list[ConflictInfo]:
        here = {"site": op.site, "treatment_id": record["treatment_id"], "applicator_id": op.record_id}
        there = {"site": other.site, "treatment_id": other.treatment_id, "applicator_id": other.id}
        serial = record["serial_number"]
        mine = self._conflict(op, _serial_conflict(op.site, op.record_id, rule, serial, server=there), effect)
        theirs = self._conflict(op, _serial_conflict(other.site, other.id, rule, serial, server=here), effect)
        details = {"serial": serial, "here": here, "there": there}
        self._incident(op.op_id, op.site, "serial_in_two_treatments", op.record_id, details, effect)
        return [mine, theirs.model_copy(update={"record_id": other.id, "table": "applicators"})]

    def _inventory_recheck(
        self, op: Operation, record: dict[str, Any], notes: list[str], effect: _Effect
    ) -> list[ConflictInfo]:
        """The cloud re-checks every scan against Priority's inventory as last refreshed."""
        serial = record["serial_number"]
        inventory = self.view.inventory(op.site, serial)
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
        self._incident(op.op_id, op.site, rule, op.record_id, details, effect)
        conflict = _serial_conflict(op.site, op.record_id, rule, serial, server=usage)
        return [self._conflict(op, conflict, effect)]

    # --- update and delete -------------------------------------------------------------------
    def _update(self, op: Operation) -> _Effect:
        row = self._lock_record(op)
        server = open_record(row.data, self.cipher)
        changed = {k: tuple(v) for k, v in op.changed.items() if not is_station_local(k)}
        ctx = self._context(op, row, server, changed)
        outcomes = merge(op.table, changed, server, ctx)
        effect = _Effect()
        found = [self._contested(op, o, effect) for o in outcomes if o.contested]
        taken = [o for o in outcomes if o.action is Action.TAKE]
        if not taken:
            effect.result = _result(op, row.version, found, [])
            return effect
        merged = {**server, **{o.field: o.value for o in taken}}
        merged["hlc"] = max(str(server.get("hlc") or ""), op.hlc)
        merged["updated_at"] = _later(server.get("updated_at"), op.payload.get("updated_at"))
        clocks = {**_field_clocks(row.field_hlc), **{o.field: op.hlc for o in taken}}
        offsets = {**_offsets(row.field_hlc), op.hlc: op.clock_offset_ms}
        deleted = merged.get("deleted_at") is not None if "deleted_at" in merged else row.deleted
        version = self._write(op, row, merged, _clocks(clocks, offsets), deleted, effect)
        self._queue_write_back(op, server, merged, effect)
        effect.result = _result(op, version, found, [])
        return effect

    def _delete(self, op: Operation) -> _Effect:
        """A soft delete: the record and its history stay; pulls carry `deleted`."""
        row = self._lock_record(op)
        effect = _Effect()
        if row.deleted:
            effect.result = _result(op, row.version, [], ["Already deleted."])
            return effect
        record = open_record(row.data, self.cipher)
        marks = {k: op.payload[k] for k in ("deleted_at", "deleted_by", "deleted_reason") if k in op.payload}
        clocks = {**_field_clocks(row.field_hlc), **{k: op.hlc for k in marks}}
        offsets = {**_offsets(row.field_hlc), op.hlc: op.clock_offset_ms}
        version = self._write(op, row, {**record, **marks}, _clocks(clocks, offsets), True, effect)
        effect.result = _result(op, version, [], [])
        return effect

    def _lock_record(self, op: Operation) -> Row:
        row = self.view.locked_row(op.table, op.site, op.record_id)
        if row is None:
            raise _Rejected(
                Code.UNKNOWN_RECORD,
                f"The cloud has no {op.table} record {op.record_id} at site {op.site}; "
                "the station keeps this change in quarantine.",
            )
        return row

    def _context(
        self, op: Operation, row: Row, server: dict[str, Any], changed: Mapping[str, tuple[Any, Any]]
    ) -> RuleContext:
        clocks, offsets = _field_clocks(row.field_hlc), _offsets(row.field_hlc)
        indication = server.get("indication") or "unknown"
        if op.table == "applicators" and "status" in changed:
            parent = self._treatment(op.site, server.get("treatment_id"))
            indication = (None if parent is None else parent.data.get("indication")) or "unknown"
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
        self,
        op: Operation,
        row: Row,
        record: dict[str, Any],
        field_hlc: dict[str, Any],
        deleted: bool,
        effect: _Effect,
    ) -> int:
        version = row.version + 1
        effect.rows.append(
            replace(
                row,
                version=version,
                data=seal_record(record, self.cipher),
                field_hlc=field_hlc,
                deleted=deleted,
                columns={**row.columns, **_columns(op.table, record)},
                last_op_id=op.op_id,
            )
        )
        effect.changes.append(self._change(op, version))
        return version

    def _queue_write_back(
        self, op: Operation, before: Mapping[str, Any], after: dict[str, Any], effect: _Effect
    ) -> None:
        """What Priority must learn, queued with the op's rows (cloud/priority/writeback.py: sent later,
        never waited for)."""
        status = after.get("status")
        if op.table == "applicators" and status != before.get("status") and status in WRITE_BACK_STATUSES:
            # (only a final status is written back, to the order line the inventory names)
            line = self.view.inventory(op.site, line_serial(after)).line
            payload = applicator_payload(after, line)
            if payload is not None:
                effect.write_backs.append(_write_back(op.site, "applicator", payload))
        completed = after.get("is_complete") is True and before.get("is_complete") is not True
        if op.table == "treatments" and completed:
            for payload in order_status_payloads(seal_record(after, self.cipher), self.cipher):
                effect.write_backs.append(_write_back(op.site, "order_status", payload))

    # --- conflicts, incidents, refusals --------------------------------------------------------
    def _contested(self, op: Operation, outcome: FieldOutcome, effect: _Effect) -> ConflictInfo:
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
            effect,
        )

    def _conflict(self, op: Operation, row: _Conflict, effect: _Effect) -> ConflictInfo:
        """One conflicts row (patient values sealed); said to the station in clear."""
        conflict_id = str(uuid.uuid4())
        status = "open" if row.resolution is None else "auto_resolved"
        effect.conflicts.append(
            {
                "id": conflict_id,
                "site": row.site,
                "table_name": row.table,
                "record_id": row.record_id,
                "field": row.field,
                "is_safety": row.is_safety,
                "rule": row.rule[:32],
                "local_value": seal_value(row.field, row.local, self.cipher),
                "server_value": seal_value(row.field, row.server, self.cipher),
                "base_value": seal_value(row.field, row.base, self.cipher),
                "status": status,
                "op_id": op.op_id,
                "resolution": row.resolution,
            }
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
        self,
        op_id: str,
        site: str,
        kind: str,
        record_id: str | None,
        details: dict[str, Any],
        effect: _Effect,
    ) -> None:
        """One incident per operation, kind and record, however often the operation is retried."""
        key = f"{self.device_id}:{op_id}:{kind}:{record_id}"
        effect.incidents.append(
            {
                "id": str(uuid.uuid5(INCIDENT_NAMESPACE, key)),
                "site": site,
                "kind": kind[:32],
                "record_id": record_id,
                "details": {**details, "op_id": op_id, "device_id": self.device_id},
            }
        )

    def _refusal(self, op: Operation, refusal: _Rejected) -> _Effect:
        result = OpResult(op_id=op.op_id, status="rejected", code=refusal.code, message=refusal.message)
        effect = _Effect(result)
        if refusal.code not in RETRYABLE_CODES:
            # A final refusal is the op's answer for ever: a retry gets it back as `duplicate`.
            effect.ledger = _stored(result)
        self._incident_for_rejection(op.model_dump(), refusal, effect)
        return effect

    def _malformed(self, raw: dict[str, Any], problem: str) -> _Effect:
        refusal = _Rejected(Code.INVALID_OPERATION, f"This operation is malformed: {problem}")
        effect = _Effect(
            OpResult(
                op_id=str(raw.get("op_id") or ""),
                status="rejected",
                code=refusal.code,
                message=refusal.message,
            )
        )
        self._incident_for_rejection(raw, refusal, effect)
        return effect

    def _incident_for_rejection(self, op: Mapping[str, Any], refusal: _Rejected, effect: _Effect) -> None:
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
        self._incident(str(op.get("op_id") or ""), site, "rejected_applicator", record_id, details, effect)

    # --- reads -------------------------------------------------------------------------------
    def _treatment(self, site: str, treatment_id: Any) -> Row | None:
        """The treatment as this batch sees it (rows are never removed: a deleted one is a flag)."""
        if not treatment_id:
            return None
        return self.view.row("treatments", site, str(treatment_id))

    def _role_of(self, user_id: Any) -> str | None:
        return None if user_id is None else self.view.role(str(user_id))

    def _change(self, op: Operation, version: int) -> dict[str, Any]:
        return {
            "site": op.site,
            "table_name": op.table,
            "record_id": op.record_id,
            "version": version,
            "op_id": op.op_id,
            "device_id": self.device_id,
        }


def _writes_now(op: Operation) -> bool:
    """An op whose handler writes as it decides: a person's resolution, a station's incident."""
    return op.resolution is not None or op.table == "incidents"


def _code_signature(op: Operation) -> tuple[str | None, str | None] | None:
    """(signer, requester) when the op finalises or re-signs a treatment with a signature by code."""
    if op.table != "treatments" or op.kind == "delete":
        return None
    if op.kind == "update" and not SIGNATURE_FIELDS & op.changed.keys():
        return None  # a later change that leaves the signature alone

    def after(name: str) -> Any:
        # What the cloud would store: the changed value where the op names one (sync/rules.py merges
        # `changed`), else the record the op carries.
        return op.changed[name][1] if name in op.changed else op.payload.get(name)

    # Anything but an explicit "not complete" counts as finalising: a forged value must not slip by.
    if after("is_complete") in (None, False, 0, "", "false"):
        return None
    if str(after("signature_mode") or "").strip().lower() != SignatureMode.CODE.value:
        return None
    signer, requester = after("signed_by_user_id"), after("completed_by")
    return (None if signer is None else str(signer), None if requester is None else str(requester))


def _duplicate(op: Operation, stored: dict[str, Any]) -> _Effect:
    original = OpResult.model_validate(stored)
    return _Effect(OpResult(op_id=op.op_id, status="duplicate", version=original.version, original=original))


def _write_back(site: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "site": site, "kind": kind, "payload": payload}


def _serial(value: Any) -> str:
    """A serial as the cloud keys it: trimmed, upper case (as Priority's inventory is)."""
    return str(value).strip().upper()


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
