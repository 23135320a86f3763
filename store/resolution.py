"""A person's decision on a sync conflict: the commands the conflict review page calls.

`conflicts_awaiting` lists what waits for a person; `keep_local`, `keep_server`, `keep_merged` and,
for one serial in two treatments, `keep_in_treatment` decide. Each decision is ONE audited
operation (one transaction, like every command): the record takes the chosen values here, the
conflict rows are marked resolved (who, when, how, why), and a queue entry carries the values
and the decision to the cloud, which marks its own conflict rows resolved and applies the values
(cloud/resolutions.py). Another station of the site sees a resolved serial clash when it pulls
the removal that settled it (store/pulled_resolutions.py).

What the choices mean (docs/sync-protocol.md, "Manual resolution"):

- a field's value: `keep_local` the value this station had, `keep_server` the cloud's, `keep_merged`
  values the person gives. A leader's held followers (the seed count of a held status) are decided
  with it, so a status never lands without its count;
- one serial in two treatments: the decision says which treatment keeps the applicator; the other
  treatment's applicator row is removed (a soft delete, with the reason), so that treatment cannot
  keep it. `keep_local` keeps it where the conflict row's applicator is, `keep_server` where the
  other one is;
- a serial Priority does not list, or lists as used: `keep_local` keeps the applicator in its
  treatment (the person checked it), `keep_server` removes it;
- a cloud record this station's constraints refused: an administrator acknowledges it; nothing
  can be written here, so nothing is sent.

Who may decide (domain.md, "Roles"): anyone who may work at the record's site; a decision that
changes or removes an applicator in a final status is an amendment, so only a supervisor
(`Settings.supervisor_roles`); a record refused by this station is an administrator's matter
("resolve admin-only conflicts").
"""

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, update
from sqlalchemy.exc import IntegrityError

from store import fastsql, remote
from store.enums import (
    TERMINAL_STATUSES,
    ConflictResolution,
    ConflictStatus,
    OperationKind,
    Priority,
    Role,
    RowSyncStatus,
)
from store.errors import InvalidInput, NotFound, NotPermitted
from store.fastsql import codec
from store.guards import clean_text
from store.journal import Change, Journal, transaction
from store.models import SyncConflict
from store.pulled_resolutions import PAIR_RULES
from store.station import Actor, Station
from sync.protocol import IMMUTABLE_FIELDS
from sync.rules import RULES, rule_for
from sync.wire import CLEAR, SEALED, TABLES, station_field, station_values, typed_value

CONFLICTS = SyncConflict.__table__
PRESENCE_RULES = ("not_in_inventory", "used_in_priority")  # one applicator Priority does not vouch for
ADMIN_ONLY_RULES = ("refused_by_station",)
LOCAL_ONLY = frozenset({"usage", "sync_status", "cloud_version", "local_version"})


@dataclass(frozen=True)
class AwaitingConflict:
    """One conflict waiting for a person, as the review page shows it (a serial clash is ONE item,
    although each of its two applicators has a row)."""

    conflict_id: str  # pass this to the commands
    row_ids: tuple[str, ...]
    table: str
    record_id: str
    field: str  # the wire's name (a patient field in clear)
    rule: str
    is_safety: bool
    local_value: Any
    server_value: Any
    detected_at: datetime
    treatment_ids: tuple[str, ...]  # the treatments it blocks or concerns
    admin_only: bool
    summary: str


def conflicts_awaiting(station: Station) -> list[AwaitingConflict]:
    """Every open conflict, oldest first; safety conflicts (which block finalising) first of all."""
    with station.engine.connect() as conn:
        rows = codec(CONFLICTS).select(conn, "status = 'open' ORDER BY detected_at, id", ())
        items: list[AwaitingConflict] = []
        seen_pairs: set[frozenset[str]] = set()
        for row in rows:
            if row["rule"] in PAIR_RULES:
                pair = frozenset({row["record_id"], str((row["server_value"] or {}).get("applicator_id"))})
                if pair in seen_pairs:
                    continue
                seen_pairs.add(pair)
                partner = _partner(conn, row)
                items.append(_item(station, conn, row, (row, *([partner] if partner else []))))
            else:
                items.append(_item(station, conn, row, (row,)))
    return sorted(items, key=lambda c: not c.is_safety)


def keep_local(station: Station, actor: Actor, conflict_id: str, reason: str) -> Change:
    """The value this station had stands (a serial clash: this row's treatment keeps the applicator)."""
    return _decide(station, actor, conflict_id, ConflictResolution.KEEP_LOCAL, reason)


def keep_server(station: Station, actor: Actor, conflict_id: str, reason: str) -> Change:
    """The cloud's value stands (a serial clash: the other treatment keeps the applicator)."""
    return _decide(station, actor, conflict_id, ConflictResolution.KEEP_SERVER, reason)


def keep_merged(
    station: Station, actor: Actor, conflict_id: str, values: Mapping[str, Any], reason: str
) -> Change:
    """Values the person gives (wire names: `subject_id`, `status`, `deployed_seeds`, ...) stand;
    they must include the conflict's field and may set other fields of the same record."""
    return _decide(station, actor, conflict_id, ConflictResolution.MERGED, reason, values=values)


def keep_in_treatment(
    station: Station, actor: Actor, conflict_id: str, treatment_id: str, reason: str
) -> Change:
    """One serial in two treatments: `treatment_id` keeps the applicator; the other one's is removed."""
    return _decide(station, actor, conflict_id, None, reason, keeper=treatment_id)


# --- the decision --------------------------------------------------------------------------------
def _decide(
    station: Station,
    actor: Actor,
    conflict_id: str,
    how: ConflictResolution | None,
    reason: str,
    *,
    values: Mapping[str, Any] | None = None,
    keeper: str | None = None,
) -> Change:
    text = clean_text(reason, field="reason", label="The reason for this decision", required=True)
    assert text is not None
    with transaction(station, actor) as journal:
        row = _open_row(journal.conn, conflict_id)
        _require_site(actor, journal.conn, row)
        if row["rule"] in ADMIN_ONLY_RULES:
            return _acknowledge(journal, actor, row, how, text)
        decision = _Decision(station, journal, actor, row, text)
        if row["rule"] in PAIR_RULES:
            return decision.serial_pair(how, keeper)
        if keeper is not None:
            raise InvalidInput("Only a serial in two treatments is resolved by choosing a treatment.")
        if row["rule"] in PRESENCE_RULES:
            return decision.presence(how)
        assert how is not None
        return decision.field_values(how, values)


class _Decision:
    """One decision inside its transaction: the record written, the rows closed, the entry queued."""

    def __init__(self, station: Station, journal: Journal, actor: Actor, row: dict[str, Any], text: str):
        self.station = station
        self.journal = journal
        self.conn = journal.conn
        self.actor = actor
        self.row = row
        self.text = text

    # --- one serial in two treatments ------------------------------------------------------------
    def serial_pair(self, how: ConflictResolution | None, keeper: str | None) -> Change:
        row = self.row
        if how is ConflictResolution.MERGED:
            raise InvalidInput("Say which treatment keeps the applicator: a serial cannot be merged.")
        here = _applicator(self.conn, row["record_id"])
        other_id = str((row["server_value"] or {}).get("applicator_id"))
        there = _applicator(self.conn, other_id)
        if here is None or there is None:
            raise NotFound(
                "Both applicators of this conflict must be on this station to resolve it; sync first, "
                "or resolve it on a station that holds both treatments."
            )
        if keeper is not None:
            if here["treatment_id"] == there["treatment_id"]:
                raise InvalidInput(
                    "Both rows are in the same treatment: keep this row or the other one instead."
                )
            if keeper not in (here["treatment_id"], there["treatment_id"]):
                raise InvalidInput(
                    f"Treatment {keeper} is not one of the two treatments of serial {here['serial_number']}."
                )
            how = (
                ConflictResolution.KEEP_LOCAL
                if keeper == here["treatment_id"]
                else ConflictResolution.KEEP_SERVER
            )
        assert how is not None
        kept, loser = (here, there) if how is ConflictResolution.KEEP_LOCAL else (there, here)
        partner = _partner(self.conn, row)
        rows = [row, *([partner] if partner else [])]
        because = (
            f"Serial {loser['serial_number']} stays in treatment {kept['treatment_id']} "
            f"(conflict resolved by {self.actor.name}): {self.text}"
        )
        self._require_supervisor_to_remove(loser)
        settles = [_settled(self.conn, r) for r in rows]
        if partner is None:  # the other applicator's row was never recorded here: settle it by place
            settles.append(_place(self.conn, there, row["rule"]))
        return self._apply(
            loser,
            "applicators",
            _removal(self.journal, self.actor, loser, because),
            how,
            rows,
            settles,
            keep_treatment_id=kept["treatment_id"],
            also=(kept["id"],),
            audit_new={"kept_in_treatment": kept["treatment_id"], "removed_applicator": loser["id"]},
        )

    # --- an applicator Priority does not vouch for -----------------------------------------------------
    def presence(self, how: ConflictResolution | None) -> Change:
        if how not in (ConflictResolution.KEEP_LOCAL, ConflictResolution.KEEP_SERVER):
            raise InvalidInput("Keep the applicator in its treatment, or remove it: nothing can be merged.")
        applicator = _applicator(self.conn, self.row["record_id"])
        if applicator is None:
            raise NotFound("The applicator of this conflict is not on this station.")
        changes: dict[str, Any] = {}
        if how is ConflictResolution.KEEP_SERVER:
            self._require_supervisor_to_remove(applicator)
            because = f"Removed after Priority's check ({self.row['rule']}): {self.text}"
            changes = _removal(self.journal, self.actor, applicator, because)
        return self._apply(
            applicator, "applicators", changes, how, [self.row], [_settled(self.conn, self.row)]
        )

    # --- a field's value ----------------------------------------------------------------------------
    def field_values(self, how: ConflictResolution, values: Mapping[str, Any] | None) -> Change:
        row = self.row
        table = TABLES[row["table_name"]]
        record = _load(self.conn, row["table_name"], row["record_id"])
        if record is None:
            raise NotFound("The record of this conflict is not on this station.")
        wire_field = CLEAR.get(row["field"], row["field"])
        group = [row, *self._held_followers(wire_field)]
        chosen: dict[str, Any] = {}
        seen: dict[str, Any] = {}  # the cloud's value the person saw: the base the cloud checks
        for held in group:
            name = CLEAR.get(held["field"], held["field"])
            seen[name] = self._open(held["field"], held["server_value"])
            if how is ConflictResolution.KEEP_LOCAL:
                chosen[name] = self._open(held["field"], held["local_value"])
            elif how is ConflictResolution.KEEP_SERVER:
                chosen[name] = seen[name]
        if how is ConflictResolution.MERGED:
            chosen = self._merged_values(table.name, wire_field, values or {})
        else:
            chosen |= self._followers_of_side(how, record, wire_field, chosen)
        changes = station_values(self.station.cipher, table.name, _typed(table, chosen), row=record)
        current = record.get("status")
        moves_final = current in TERMINAL_STATUSES and chosen.get("status", current) != current
        if row["table_name"] == "applicators" and moves_final:
            self._require_supervisor("change a final applicator status")
        base = {name: seen.get(name, self._current(record, name)) for name in chosen}
        return self._apply(
            record,
            row["table_name"],
            changes,
            how,
            group,
            [_settled(self.conn, r) for r in group],
            wire_changed=(base, chosen),
        )

    def _followers_of_side(
        self, how: ConflictResolution, record: Mapping[str, Any], leader: str, chosen: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The followers of the chosen side (a status's seed count, its time), so the record stays
        whole: a status never lands without the count that goes with it."""
        names = [
            name
            for (table_name, name), rule in RULES.items()
            if table_name == self.row["table_name"] and rule.leader == leader
            and name not in chosen and name not in LOCAL_ONLY
        ]  # fmt: skip
        if not names:
            return {}
        if how is ConflictResolution.KEEP_LOCAL:
            entry = codec(remote.QUEUE).select(self.conn, "op_id = ?", (self.row["op_id"],))
            side = entry[0]["payload"] if entry else {}
        elif self.row["cloud_conflict_id"] is None:
            raise InvalidInput(
                f"The cloud's values that go with its {leader} are not on this station yet: sync first, "
                "or give them with a merged decision."
            )
        else:
            side = {name: self._current(record, name) for name in names}  # taken from the cloud's answer
        return {name: side[name] for name in names if name in side}

    def _held_followers(self, leader: str) -> list[dict[str, Any]]:
        """The open rows of the same record whose field follows the conflict's field."""
        rows = codec(CONFLICTS).select(
            self.conn,
            "status = 'open' AND table_name = ? AND record_id = ? AND id <> ?",
            (self.row["table_name"], self.row["record_id"], self.row["id"]),
        )
        return [
            r for r in rows if rule_for(r["table_name"], CLEAR.get(r["field"], r["field"])).leader == leader
        ]

    def _merged_values(self, table_name: str, wire_field: str, values: Mapping[str, Any]) -> dict[str, Any]:
        if wire_field not in values:
            raise InvalidInput(
                f"Give the value of {wire_field}: it is the field in conflict.", field=wire_field
            )
        table = TABLES[table_name]
        unknown = [
            name
            for name in values
            if name in IMMUTABLE_FIELDS
            or name in LOCAL_ONLY
            or name.endswith(("_enc", "_hash"))
            or station_field(name) not in table.c
        ]
        if unknown:
            raise InvalidInput(f"These fields cannot be set by a decision: {', '.join(sorted(unknown))}.")
        return dict(values)

    def _open(self, column: str, value: Any) -> Any:
        return self.station.cipher.decrypt(value) if column in CLEAR and value is not None else value

    def _current(self, record: Mapping[str, Any], name: str) -> Any:
        column = station_field(name)
        return self._open(column, record.get(column))

    # --- permissions ---------------------------------------------------------------------------------
    def _require_supervisor_to_remove(self, applicator: Mapping[str, Any]) -> None:
        if applicator["status"] in TERMINAL_STATUSES and applicator["deleted_at"] is None:
            self._require_supervisor(
                f"remove applicator {applicator['serial_number']} ({applicator['status']})"
            )

    def _require_supervisor(self, what: str) -> None:
        if self.actor.role not in self.station.settings.supervisor_roles:
            raise NotPermitted(
                f"Only a supervisor may {what}: it amends a final status. Ask an Alpha Tau specialist or "
                "an administrator to resolve this conflict."
            )

    # --- the write ---------------------------------------------------------------------------------
    def _apply(
        self,
        record: Mapping[str, Any],
        table_name: str,
        changes: dict[str, Any],
        how: ConflictResolution,
        rows: list[dict[str, Any]],
        settles: list[dict[str, Any]],
        *,
        keep_treatment_id: str | None = None,
        also: tuple[str, ...] = (),
        wire_changed: tuple[dict[str, Any], dict[str, Any]] | None = None,
        audit_new: dict[str, Any] | None = None,
    ) -> Change:
        journal, table = self.journal, TABLES[table_name]
        changed = {k: v for k, v in changes.items() if record.get(k) != v}
        # NOTE: the journal's own building blocks (store-internal): a decision is queued even when
        # this station already holds the chosen values (the cloud must still learn of it), which
        # Journal.update refuses ("nothing was changed").
        hlc = journal._tick()
        after = dict(record)
        if changed:
            meta = {
                "local_version": record["local_version"] + 1,
                "sync_status": RowSyncStatus.PENDING.value,
                "hlc": hlc,
                # Forward, as Journal.update does, so the touch trigger never overwrites it.
                "updated_at": max(journal.now, record["updated_at"] + timedelta(microseconds=1)),
            }
            try:
                with self.conn.begin_nested():
                    codec(table).update(self.conn, record["id"], {**changed, **meta})
            except (IntegrityError, sqlite3.IntegrityError) as exc:
                raise InvalidInput(f"These values cannot be stored together: {_words(exc)}") from None
            after |= changed | meta
        if wire_changed is None:
            queued_changes = {k: [record.get(k), v] for k, v in changed.items()}
        else:
            queued_changes = self._queued_changes(table, *wire_changed)
        depends_on = journal._open_ops([(table_name, record["id"]), *(("applicators", a) for a in also)])
        treatment_id = record["id"] if table_name == "treatments" else record.get("treatment_id")
        op_id = journal._enqueue(
            table_name,
            record["id"],
            OperationKind.UPDATE,
            {k: v for k, v in after.items() if k not in LOCAL_ONLY},
            queued_changes,
            base_version=record.get("cloud_version"),
            hlc=hlc,
            priority=Priority.CRITICAL_TREATMENT,  # it unblocks a treatment: before routine changes
            depends_on=depends_on,
            treatment_id=treatment_id,
        )
        decision = {
            "how": how.value,
            "reason": self.text,
            "resolved_by": self.actor.user_id,
            "resolved_at": journal.now.isoformat(),
            "settles": settles,
            "keep_treatment_id": keep_treatment_id,
        }
        self.conn.execute(
            update(remote.QUEUE).where(remote.QUEUE.c.op_id == op_id).values(resolution=decision)
        )
        chosen = wire_changed[1] if wire_changed else {}
        for held in rows:
            name = CLEAR.get(held["field"], held["field"])
            self.conn.execute(
                update(CONFLICTS)
                .where(CONFLICTS.c.id == held["id"])
                .values(
                    status=ConflictStatus.RESOLVED.value,
                    resolved_at=journal.now,
                    resolved_by=self.actor.user_id,
                    resolution=how.value,
                    resolved_value=_sealed_for(self.station, held["field"], chosen.get(name)),
                    reason=self.text,
                )
            )
        journal._audit(
            "conflict_resolved",
            table_name,
            record["id"],
            op_id,
            old={k: record.get(k) for k in changed},
            new={
                "how": how.value,
                "conflict_ids": [r["id"] for r in rows],
                "rule": self.row["rule"],
                "field": self.row["field"],
                **changed,
                **(audit_new or {}),
            },
            reason=self.text,
        )
        for applicator_id in {record["id"], *also} if table_name == "applicators" else {record["id"]}:
            remote.receipt(self.conn, table_name, applicator_id, None)
        return Change(op_id, after)

    def _queued_changes(
        self, table: Any, base: Mapping[str, Any], chosen: Mapping[str, Any]
    ) -> dict[str, list[Any]]:
        """{column: [the cloud's value the person saw, the chosen one]}, patient fields sealed as the
        queue keeps them (the wire opens them again)."""
        queued: dict[str, list[Any]] = {}
        for name, value in chosen.items():
            old = base.get(name)
            if name in SEALED:
                cipher = self.station.cipher
                queued[SEALED[name]] = [cipher.encrypt(old), cipher.encrypt(value)]
            else:
                queued[name] = [
                    _jsonable(typed_value(table, name, old)),
                    _jsonable(typed_value(table, name, value)),
                ]
        return queued


def _acknowledge(
    journal: Journal, actor: Actor, row: dict[str, Any], how: ConflictResolution | None, text: str
) -> Change:
    """A cloud record this station refused: an administrator acknowledges it; nothing is sent."""
    if actor.role != Role.ADMIN:
        raise NotPermitted(
            "This station could not store the cloud's version of a record: only an administrator can "
            "resolve that (it is a technical fault, not a clinical choice)."
        )
    if how is not ConflictResolution.KEEP_LOCAL:
        raise InvalidInput("A record this station refused can only be acknowledged (keep this station's).")
    journal.conn.execute(
        update(CONFLICTS)
        .where(CONFLICTS.c.id == row["id"])
        .values(
            status=ConflictStatus.RESOLVED.value,
            resolved_at=journal.now,
            resolved_by=actor.user_id,
            resolution=ConflictResolution.KEEP_LOCAL.value,
            reason=text,
        )
    )
    journal.audit_only(
        "conflict_resolved",
        table=row["table_name"],
        record_id=row["record_id"],
        new={"how": "acknowledged", "conflict_ids": [row["id"]], "rule": row["rule"]},
        reason=text,
    )
    remote.receipt(journal.conn, row["table_name"], row["record_id"], None)
    return Change("", {})


# --- reads and small helpers --------------------------------------------------------------------
def _open_row(conn: Connection, conflict_id: str) -> dict[str, Any]:
    rows = codec(CONFLICTS).select(conn, "id = ?", (conflict_id,))
    if not rows:
        raise NotFound("This conflict does not exist on this station.")
    row = rows[0]
    if row["status"] != ConflictStatus.OPEN.value:
        who = f" by {row['resolved_by']}" if row["resolved_by"] else ""
        raise InvalidInput(f"This conflict was already resolved{who}; refresh the review page.")
    return row


def _partner(conn: Connection, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The other applicator's row of a serial clash."""
    other = str((row["server_value"] or {}).get("applicator_id"))
    for candidate in codec(CONFLICTS).select(
        conn,
        "table_name = 'applicators' AND record_id = ? AND rule = ? AND status = 'open'",
        (other, row["rule"]),
    ):
        if str((candidate["server_value"] or {}).get("applicator_id")) == row["record_id"]:
            return candidate
    return None


def _settled(conn: Connection, row: Mapping[str, Any]) -> dict[str, Any]:
    """How the cloud finds a conflict this decision settles: its id if known, its place always."""
    return {
        "site": _site(conn, row["table_name"], row["record_id"]),
        "table": row["table_name"],
        "record_id": row["record_id"],
        "field": CLEAR.get(row["field"], row["field"]),
        "rule": row["rule"],
        "conflict_id": row["cloud_conflict_id"],
    }


def _place(conn: Connection, applicator: Mapping[str, Any], rule: str) -> dict[str, Any]:
    return {
        "site": _site(conn, "applicators", applicator["id"]),
        "table": "applicators",
        "record_id": applicator["id"],
        "field": "serial_number",
        "rule": rule,
        "conflict_id": None,
    }


def _removal(journal: Journal, actor: Actor, applicator: Mapping[str, Any], because: str) -> dict[str, Any]:
    if applicator["deleted_at"] is not None:
        return {}  # already removed (by an earlier decision pulled here): the decision still settles
    return {"deleted_at": journal.now, "deleted_by": actor.user_id, "deleted_reason": because}


def _require_site(actor: Actor, conn: Connection, row: Mapping[str, Any]) -> None:
    site = _site(conn, row["table_name"], row["record_id"])
    if site is None or not actor.may_access(site):
        raise NotPermitted(f"You are not authorised for site {site or 'of this record'}.")


def _site(conn: Connection, table_name: str, record_id: str) -> str | None:
    if table_name == "treatments":
        rows = fastsql.execute(conn, "SELECT site FROM treatments WHERE id = ?", (record_id,))
    else:
        rows = fastsql.execute(
            conn,
            f"SELECT t.site FROM {table_name} r JOIN treatments t ON t.id = r.treatment_id WHERE r.id = ?",
            (record_id,),
        )
    return rows[0][0] if rows else None


def _applicator(conn: Connection, applicator_id: str) -> dict[str, Any] | None:
    return _load(conn, "applicators", applicator_id)


def _load(conn: Connection, table_name: str, record_id: str) -> dict[str, Any] | None:
    rows = codec(TABLES[table_name]).select(conn, "id = ?", (record_id,))
    return rows[0] if rows else None


def _item(
    station: Station, conn: Connection, row: Mapping[str, Any], rows: tuple[Mapping[str, Any], ...]
) -> AwaitingConflict:
    opened = (
        (lambda v: station.cipher.decrypt(v) if v is not None else None)
        if row["field"] in CLEAR
        else (lambda v: v)
    )
    field = CLEAR.get(row["field"], row["field"])
    treatments = _treatments_of(conn, row)
    if row["rule"] in PAIR_RULES:
        other = (row["server_value"] or {}).get("treatment_id")
        treatments = tuple(dict.fromkeys([*treatments, *([str(other)] if other else [])]))
        summary = (
            f"Applicator {row['local_value']} is recorded in {len(treatments)} treatment(s) at once: "
            "say which treatment keeps it. Neither can be finalised until then."
        )
    elif row["rule"] in ADMIN_ONLY_RULES:
        summary = row["reason"] or "This station could not store the cloud's version of the record."
    else:
        summary = (
            f"{row['table_name']}.{field}: this station has one value, the cloud another ({row['rule']})."
        )
    return AwaitingConflict(
        conflict_id=row["id"],
        row_ids=tuple(r["id"] for r in rows),
        table=row["table_name"],
        record_id=row["record_id"],
        field=field,
        rule=row["rule"],
        is_safety=any(r["is_safety"] for r in rows),
        local_value=opened(row["local_value"]),
        server_value=opened(row["server_value"]),
        detected_at=row["detected_at"],
        treatment_ids=treatments,
        admin_only=row["rule"] in ADMIN_ONLY_RULES,
        summary=summary,
    )


def _treatments_of(conn: Connection, row: Mapping[str, Any]) -> tuple[str, ...]:
    if row["table_name"] == "treatments":
        return (row["record_id"],)
    rows = fastsql.execute(
        conn, f"SELECT treatment_id FROM {row['table_name']} WHERE id = ?", (row["record_id"],)
    )
    return (rows[0][0],) if rows else ()


def _typed(table: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if k in SEALED else typed_value(table, station_field(k), v) for k, v in values.items()}


def _sealed_for(station: Station, column: str, value: Any) -> Any:
    if column in CLEAR and value is not None:
        return station.cipher.encrypt(str(value))
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _words(exc: Exception) -> str:
    return str(exc.orig if isinstance(exc, IntegrityError) else exc).split("\n")[0]
