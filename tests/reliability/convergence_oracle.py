"""What the convergence test remembers while the stations work: every committed edit, and what each
station had seen when it made it (its causal past), so that at the end the rules of sync/rules.py
can say which edits were allowed to disappear and which pairs of edits a person must decide.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from store.enums import TRANSITIONS, ApplicatorStatus, Indication
from sync.rules import SKEW_THRESHOLD_MS, Kind, rule_for, same
from sync.wire import TABLES, typed_changes, typed_value


@dataclass(frozen=True)
class Edit:
    """One field of one committed update, as the clinician's station recorded it."""

    op_id: str
    laptop: str
    device_seq: int
    table: str
    record_id: str
    field: str
    value: Any  # typed wire value
    hlc: str
    offset_ms: int | None
    seen: frozenset[str]  # operations the station had seen (its own and pulled) before this one
    payload: Mapping[str, Any]  # the whole record after the change (for followers' leaders)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.table, self.record_id, self.field

    def trusted_clock(self) -> bool:
        return self.offset_ms is not None and abs(self.offset_ms) <= SKEW_THRESHOLD_MS

    def before(self, other: "Edit") -> bool:
        """Whether this edit is in the causal past of `other` (`other` was made knowing it)."""
        return self.op_id in other.seen


@dataclass
class Oracle:
    edits: list[Edit] = field(default_factory=list)
    seen: dict[str, set[str]] = field(default_factory=dict)  # laptop -> operations it knows
    in_cloud: set[str] = field(default_factory=set)  # operations that took effect in the cloud
    inserted: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, id) -> laptop

    def committed(self, laptop: str, entries: Iterable[Mapping[str, Any]], cipher: Any) -> None:
        """A station's new queue entries (read right after the command that made them)."""
        known = self.seen.setdefault(laptop, set())
        for entry in entries:
            if entry["kind"] == "insert":
                self.inserted[(entry["table_name"], entry["record_id"])] = laptop
            else:
                changes = typed_changes(cipher, entry["table_name"], entry["changed_fields"])
                for name, (_base, new) in changes.items():
                    self.edits.append(
                        Edit(
                            op_id=entry["op_id"],
                            laptop=laptop,
                            device_seq=entry["device_seq"],
                            table=entry["table_name"],
                            record_id=entry["record_id"],
                            field=name,
                            value=new,
                            hlc=entry["hlc"],
                            offset_ms=entry["clock_offset_ms"],
                            seen=frozenset(known),
                            payload=_typed_payload(entry["table_name"], entry["payload"]),
                        )
                    )
            known.add(entry["op_id"])

    def synced(self, laptop: str, known_before_round: set[str], took_effect: Iterable[str]) -> None:
        """A round that reached the cloud: it pulled everything the cloud had, then pushed."""
        self.seen.setdefault(laptop, set()).update(known_before_round)
        self.in_cloud.update(took_effect)

    # --- questions asked at the end ------------------------------------------------------------
    def concurrent_pairs(self) -> list[tuple[Edit, Edit]]:
        """Pairs of edits of one field made on two stations, neither knowing of the other."""
        by_key: dict[tuple[str, str, str], list[Edit]] = {}
        for edit in self.edits:
            by_key.setdefault(edit.key, []).append(edit)
        pairs = []
        for group in by_key.values():
            for i, first in enumerate(group):
                for second in group[i + 1 :]:
                    if (
                        first.laptop != second.laptop
                        and not first.before(second)
                        and not second.before(first)
                    ):
                        pairs.append((first, second))
        return pairs

    def superseded(self, edit: Edit, final: Mapping[str, Any], indication: str) -> Edit | None:
        """An edit that legitimately replaced `edit` under the field's rule, if there is one."""
        rule = rule_for(edit.table, edit.field)
        for other in self.edits:
            if other.key != edit.key or other.op_id == edit.op_id or same(other.value, edit.value):
                continue
            if edit.before(other):
                return other  # made knowing this value: a later edit (same station or another)
            if other.before(edit):
                continue
            if _wins(rule.kind, edit, other, indication):
                return other
        if rule.kind is Kind.FOLLOWS and rule.leader is not None:
            leader = rule.leader
            if leader in edit.payload and not same(edit.payload[leader], final.get(leader)):
                return edit  # its leader lost: the follower goes with it (docs/sync-protocol.md)
        return None


def _wins(kind: Kind, edit: Edit, other: Edit, indication: str) -> bool:
    """Whether a concurrent `other` beats `edit` by the rule itself (no person asked)."""
    if kind is Kind.LATEST_WINS:
        return edit.trusted_clock() and other.trusted_clock() and other.hlc > edit.hlc
    if kind is Kind.TRUE_WINS:
        return other.value is True and edit.value is not True
    if kind is Kind.ADVANCED_STATUS:
        try:
            return ApplicatorStatus(other.value) in reachable(indication)[ApplicatorStatus(edit.value)]
        except ValueError:
            return False
    # Both sides set a follower of one leader: the rule picks a side (the leader is checked on its
    # own). Manual fields and higher-role ties: a person decides.
    return kind is Kind.FOLLOWS


def needs_person(edit: Edit, other: Edit, indication: str) -> bool:
    """Whether the rules hold this concurrent pair for a person (both changed, different values)."""
    if same(edit.value, other.value):
        return False
    rule = rule_for(edit.table, edit.field)
    if rule.kind is Kind.MANUAL:
        return True
    if rule.kind is Kind.LATEST_WINS:
        return not (edit.trusted_clock() and other.trusted_clock())
    if rule.kind is Kind.ADVANCED_STATUS:
        return not _wins(kind=rule.kind, edit=edit, other=other, indication=indication) and not _wins(
            kind=rule.kind, edit=other, other=edit, indication=indication
        )
    return False


@cache
def reachable(indication: str) -> dict[ApplicatorStatus, frozenset[ApplicatorStatus]]:
    """Every status reachable from each status by the indication's moves (written here again, on
    purpose, rather than borrowed from the code under test)."""
    moves = TRANSITIONS[Indication(indication)]
    closure = {}
    for start in ApplicatorStatus:
        seen: set[ApplicatorStatus] = set()
        todo = list(moves.get(start, ()))
        while todo:
            status = todo.pop()
            if status not in seen:
                seen.add(status)
                todo += moves.get(status, ())
        closure[start] = frozenset(seen)
    return closure


def _typed_payload(table_name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    table = TABLES[table_name]
    return {k: typed_value(table, k, v) for k, v in payload.items() if k in table.c}
