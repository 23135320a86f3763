"""The conflict rules: ONE table of data that the station and the cloud both read.

A conflict exists only when both sides changed one field to different values since the common
base (invariant 5); a field only one side changed is simply taken. `RULES` says, per
(table, field), how such a field is decided; `decide` applies one rule to one field and
`merge` applies the whole table to one record change, including the fields that follow a
leader (deployed seeds follow the status, the completer follows the completion, ...).

Nothing here touches a database: both the cloud (cloud/push.py) and the station's sync engine
call these functions with the two records and the clocks, so the two sides can never disagree
about which value wins. docs/sync-protocol.md prints this table.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any

from store.enums import TRANSITIONS, ApplicatorStatus, Indication

SKEW_THRESHOLD_MS = 5 * 60 * 1000  # invariant 8: past this, "latest wins" is not trusted

TREATMENTS = "treatments"
APPLICATORS = "applicators"
PACKAGES = "applicator_packages"
REMOVED_SEEDS = "removed_seeds"


class Kind(StrEnum):
    MANUAL = "manual"  # always held for a person
    TRUE_WINS = "true_wins"  # a flag that, once true on either side, stays true
    ADVANCED_STATUS = "advanced_status"  # the later state of the state machine wins
    FOLLOWS = "follows"  # the value of the side whose leader field won
    HIGHER_ROLE = "higher_role"  # the approval of the higher role wins
    LATEST_WINS = "latest_wins"  # the later hybrid logical clock wins, unless a clock is skewed


class Tie(StrEnum):
    """What a follower does when both sides agree on its leader but not on the follower."""

    SERVER = "server"  # the side that arrived first keeps it (first to complete, first to remove)
    MANUAL = "manual"  # a person decides (two seed counts for one status)


@dataclass(frozen=True)
class Rule:
    kind: Kind
    safety: bool = False  # held conflicts of this field block finalising until a person resolves them
    leader: str | None = None  # for FOLLOWS
    on_tie: Tie = Tie.SERVER  # for FOLLOWS

    @property
    def name(self) -> str:
        """The rule's name as stored with a conflict (at most 32 characters)."""
        return f"follows_{self.leader}" if self.kind is Kind.FOLLOWS else self.kind.value


_MANUAL_SAFETY = Rule(Kind.MANUAL, safety=True)
_LATEST = Rule(Kind.LATEST_WINS)
DEFAULT_RULE = _LATEST  # anything unlisted: latest wins by HLC (skew -> manual)


def _follows(leader: str, *, on_tie: Tie = Tie.SERVER, safety: bool = False) -> Rule:
    return Rule(Kind.FOLLOWS, safety=safety, leader=leader, on_tie=on_tie)


# The table (architecture.md, "Default conflict rules"; a deployment may override entries).
RULES: dict[tuple[str, str], Rule] = {
    # Who the patient is and which applicator is where: never merged (wrong-patient hazard,
    # invariant 9). The seed plan is held too: a wrong seed count is a hazard of its own.
    (TREATMENTS, "type"): _MANUAL_SAFETY,
    (TREATMENTS, "subject_id"): _MANUAL_SAFETY,
    (TREATMENTS, "patient_label"): _MANUAL_SAFETY,
    (TREATMENTS, "indication"): _MANUAL_SAFETY,
    (TREATMENTS, "insertion_treatment_id"): _MANUAL_SAFETY,
    (TREATMENTS, "parent_treatment_id"): _MANUAL_SAFETY,
    (TREATMENTS, "planned_seeds"): _MANUAL_SAFETY,
    (TREATMENTS, "activity_per_seed"): _MANUAL_SAFETY,
    (APPLICATORS, "serial_number"): _MANUAL_SAFETY,
    (APPLICATORS, "treatment_id"): _MANUAL_SAFETY,
    (APPLICATORS, "seed_quantity"): _MANUAL_SAFETY,
    (APPLICATORS, "reused_from_id"): _MANUAL_SAFETY,
    # Completion: true wins; who completed it and when come from the completing side.
    (TREATMENTS, "is_complete"): Rule(Kind.TRUE_WINS),
    (TREATMENTS, "completed_by"): _follows("is_complete"),
    (TREATMENTS, "completed_at"): _follows("is_complete"),
    # Approval: the signature of the higher role wins; its details travel with it.
    (TREATMENTS, "signed_by_user_id"): Rule(Kind.HIGHER_ROLE),
    (TREATMENTS, "signer_name"): _follows("signed_by_user_id"),
    (TREATMENTS, "signer_position"): _follows("signed_by_user_id"),
    (TREATMENTS, "signed_at"): _follows("signed_by_user_id"),
    (TREATMENTS, "signature_mode"): _follows("signed_by_user_id"),
    (TREATMENTS, "signature_status"): _follows("signed_by_user_id"),
    # Seed accounting of the removal form: two different explanations of a gap are not merged.
    (TREATMENTS, "gap_lost"): _MANUAL_SAFETY,
    (TREATMENTS, "gap_retrieved"): _MANUAL_SAFETY,
    (TREATMENTS, "gap_in_tissue"): _MANUAL_SAFETY,
    (TREATMENTS, "gap_other"): _MANUAL_SAFETY,
    # Applicator lifecycle: the status is the truth; its companions follow it.
    (APPLICATORS, "status"): Rule(Kind.ADVANCED_STATUS, safety=True),
    (APPLICATORS, "deployed_seeds"): _follows("status", on_tie=Tie.MANUAL, safety=True),
    (APPLICATORS, "usage"): _follows("status", safety=True),
    (APPLICATORS, "status_changed_at"): _follows("status"),
    (APPLICATORS, "amended_at"): _follows("status"),
    (APPLICATORS, "amended_by"): _follows("status"),
    (APPLICATORS, "amendment_reason"): _follows("status"),
    # Removal: once removed, removed; when and by whom come from the removing side.
    (APPLICATORS, "is_removed"): Rule(Kind.TRUE_WINS),
    (APPLICATORS, "removal_time"): _follows("is_removed"),
    (APPLICATORS, "removed_by"): _follows("is_removed"),
    (APPLICATORS, "removal_treatment_id"): _follows("is_removed"),
    (APPLICATORS, "removal_photo_path"): _follows("is_removed"),
    # Descriptive text: latest wins by hybrid logical clock, manual past the skew threshold.
    # (Listed for the reader; it is also what every unlisted field gets.)
    (TREATMENTS, "surgeon"): _LATEST,
    (TREATMENTS, "removal_other_reason"): _LATEST,
    (TREATMENTS, "gap_other_text"): _LATEST,
    (TREATMENTS, "deleted_reason"): _LATEST,
    (APPLICATORS, "comments"): _LATEST,
    (APPLICATORS, "removal_comment"): _LATEST,
    (APPLICATORS, "photo_path"): _LATEST,
    (APPLICATORS, "applicator_type"): _LATEST,
    (APPLICATORS, "catalogue_number"): _LATEST,
    (REMOVED_SEEDS, "reason_text"): _LATEST,
}

ROLE_RANK = {"hospital": 1, "alphatau": 2, "admin": 3}


def rule_for(table: str, field_name: str) -> Rule:
    return RULES.get((table, field_name), DEFAULT_RULE)


def followers_of(table: str, leader: str) -> tuple[str, ...]:
    """The fields whose value follows `leader`'s (deployed seeds and the status, ...)."""
    return tuple(name for (t, name), rule in RULES.items() if t == table and rule.leader == leader)


@dataclass(frozen=True)
class RuleContext:
    """What a rule may look at besides the three values of the field."""

    local_hlc: str | None = None  # the hybrid logical clock of the incoming (local) change
    local_offset_ms: int | None = None  # that device's measured clock offset; None = never measured
    server_hlcs: Mapping[str, str] = field(default_factory=dict)  # field -> clock of the server value
    server_offsets: Mapping[str, int | None] = field(default_factory=dict)  # field -> writer's offset
    indication: str = Indication.UNKNOWN.value  # the applicator's treatment: which state machine
    local_record: Mapping[str, Any] = field(default_factory=dict)  # the whole record after the change
    server_record: Mapping[str, Any] = field(default_factory=dict)
    local_base: Mapping[str, Any] = field(default_factory=dict)  # base values of the changed fields
    role_of: Callable[[Any], str | None] = lambda _user_id: None
    skew_threshold_ms: int = SKEW_THRESHOLD_MS


@dataclass(frozen=True)
class Decision:
    """A value chosen by a rule, or `manual`: a person decides (the value is then meaningless).

    `is_safety` marks a held decision that blocks finalising until a person resolves it; a value a
    rule chose is never a safety conflict (the cloud refuses an auto-resolved safety conflict).
    """

    value: Any
    manual: bool
    rule: str
    is_safety: bool = False


def decide(
    table: str, field_name: str, local: Any, server: Any, base: Any, ctx: RuleContext | None = None
) -> Decision:
    """Decide one field that both sides changed (local -> `local`, server -> `server`, from `base`)."""
    ctx = ctx or RuleContext()
    rule = rule_for(table, field_name)
    if same(local, server):
        return _take(rule, local)
    return _DECIDERS[rule.kind](rule, table, field_name, local, server, base, ctx)


# --- one function per kind of rule ---------------------------------------------------------------
def _manual(rule: Rule, *_args: Any) -> Decision:
    return _hold(rule)


def _true_wins(
    rule: Rule, _table: str, _field: str, local: Any, server: Any, _base: Any, _ctx: RuleContext
) -> Decision:
    if local is True or server is True:
        return _take(rule, True)
    return _hold(rule)  # neither is true (e.g. None against False): nothing to prefer


def _advanced_status(
    rule: Rule, _table: str, _field: str, local: Any, server: Any, _base: Any, ctx: RuleContext
) -> Decision:
    """The later state wins where the indication's state machine leads from the other to it."""
    try:
        here, there = ApplicatorStatus(local), ApplicatorStatus(server)
        reachable = _reachable(Indication(ctx.indication))
    except ValueError:
        return _hold(rule)
    if here in reachable.get(there, frozenset()):
        return _take(rule, local)
    if there in reachable.get(here, frozenset()):
        return _take(rule, server)
    return _hold(rule)  # e.g. INSERTED against FAULTY: no move joins them


def _higher_role(
    rule: Rule, _table: str, _field: str, local: Any, server: Any, _base: Any, ctx: RuleContext
) -> Decision:
    here, there = ROLE_RANK.get(ctx.role_of(local) or ""), ROLE_RANK.get(ctx.role_of(server) or "")
    if here is None or there is None or here == there:
        return _hold(rule)  # unclear: a person decides whose approval stands
    return _take(rule, local if here > there else server)


def _latest_wins(
    rule: Rule, _table: str, field_name: str, local: Any, server: Any, _base: Any, ctx: RuleContext
) -> Decision:
    server_offset = ctx.server_offsets.get(field_name)
    if _skewed(ctx.local_offset_ms, ctx.skew_threshold_ms) or _skewed(server_offset, ctx.skew_threshold_ms):
        return Decision(None, True, "latest_wins_skewed", rule.safety)
    server_hlc = ctx.server_hlcs.get(field_name)
    if ctx.local_hlc is None or server_hlc is None:
        return Decision(None, True, "latest_wins_no_clock", rule.safety)
    # HLC stamps are fixed-width "wall-counter-device" strings: string order is time order.
    return _take(rule, local if ctx.local_hlc > server_hlc else server)


def _follow_leader(
    rule: Rule, table: str, _field: str, local: Any, server: Any, _base: Any, ctx: RuleContext
) -> Decision:
    side = leader_side(table, rule.leader or "", ctx)
    leader_rule = rule_for(table, rule.leader or "")
    if side is Side.LOCAL:
        return _take(rule, local)
    if side is Side.SERVER or (side is Side.TIE and rule.on_tie is Tie.SERVER):
        return _take(rule, server)
    return Decision(None, True, rule.name, rule.safety or leader_rule.safety)


_DECIDERS: dict[Kind, Callable[..., Decision]] = {
    Kind.MANUAL: _manual,
    Kind.TRUE_WINS: _true_wins,
    Kind.ADVANCED_STATUS: _advanced_status,
    Kind.FOLLOWS: _follow_leader,
    Kind.HIGHER_ROLE: _higher_role,
    Kind.LATEST_WINS: _latest_wins,
}


class Side(StrEnum):
    LOCAL = "local"
    SERVER = "server"
    TIE = "tie"  # both sides hold the same leader value
    MANUAL = "manual"  # the leader itself is held for a person


def leader_side(table: str, leader: str, ctx: RuleContext) -> Side:
    """Whose value of `leader` stands, seen from the two whole records."""
    if leader not in ctx.local_record or leader not in ctx.server_record:
        return Side.MANUAL  # the records do not say: never guess a follower
    local, server = ctx.local_record[leader], ctx.server_record[leader]
    base = ctx.local_base.get(leader, local)  # a field the local side did not change is its base
    if same(local, server):
        return Side.TIE
    if same(local, base):
        return Side.SERVER  # only the server changed the leader
    if same(server, base):
        return Side.LOCAL
    decision = decide(table, leader, local, server, base, ctx)
    if decision.manual:
        return Side.MANUAL
    return Side.LOCAL if same(decision.value, local) else Side.SERVER


# --- merging a whole record change -----------------------------------------------------------
class Action(StrEnum):
    TAKE = "take"  # write `value`
    KEEP = "keep"  # the server value stays (it already equals the change, or it won)
    HOLD = "hold"  # both changed and a person decides: the server value stays meanwhile


@dataclass(frozen=True)
class FieldOutcome:
    field: str
    action: Action
    value: Any  # what the field holds after the merge (the server value for KEEP and HOLD)
    local: Any
    server: Any
    base: Any
    contested: bool  # both sides changed it to different values: a rule decided (or a person will)
    rule: str | None = None
    is_safety: bool = False


def merge(
    table: str,
    changed: Mapping[str, tuple[Any, Any] | list[Any]],
    server_record: Mapping[str, Any],
    ctx: RuleContext,
) -> list[FieldOutcome]:
    """Field by field: taken where only the local side changed, decided by the table where both did.

    A follower never lands without its leader: when the leader is held or lost, so is the follower,
    even where the server never touched the follower (a held FAULTY must not leave its seed count).
    """
    outcomes = {
        name: _merge_field(table, name, base, new, server_record.get(name), ctx)
        for name, (base, new) in changed.items()
    }
    for name, outcome in list(outcomes.items()):
        rule = rule_for(table, name)
        leader = outcomes.get(rule.leader or "")
        if rule.kind is not Kind.FOLLOWS or leader is None or same(outcome.local, outcome.server):
            continue
        if leader.action is Action.HOLD:
            outcomes[name] = _as(outcome, Action.HOLD, outcome.server, rule, leader.is_safety or rule.safety)
        elif leader.contested and leader.action is Action.KEEP:
            outcomes[name] = _as(outcome, Action.KEEP, outcome.server, rule, False)
    return list(outcomes.values())


def _merge_field(table: str, name: str, base: Any, new: Any, server: Any, ctx: RuleContext) -> FieldOutcome:
    if same(server, new):
        return FieldOutcome(name, Action.KEEP, server, new, server, base, contested=False)
    if same(server, base):
        return FieldOutcome(name, Action.TAKE, new, new, server, base, contested=False)
    decision = decide(table, name, new, server, base, ctx)
    if decision.manual:
        action, value = Action.HOLD, server
    elif same(decision.value, server):
        action, value = Action.KEEP, server
    else:
        action, value = Action.TAKE, decision.value
    return FieldOutcome(name, action, value, new, server, base, True, decision.rule, decision.is_safety)


def _as(outcome: FieldOutcome, action: Action, value: Any, rule: Rule, safety: bool) -> FieldOutcome:
    return FieldOutcome(
        outcome.field, action, value, outcome.local, outcome.server, outcome.base, True, rule.name, safety
    )


# --- helpers ---------------------------------------------------------------------------------
def same(a: Any, b: Any) -> bool:
    """Equal as the wire means it: two spellings of one instant are one value."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):
        first, second = _instant(a), _instant(b)
        return first is not None and first == second
    return False


def _instant(text: str) -> datetime | None:
    if len(text) < 19 or text[4] != "-" or "T" not in text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _skewed(offset_ms: int | None, threshold_ms: int) -> bool:
    # An unmeasured clock is an untrusted clock (invariant 8): it cannot order edits by time.
    return offset_ms is None or abs(offset_ms) > threshold_ms


def _take(rule: Rule, value: Any) -> Decision:
    return Decision(value, False, rule.name)


def _hold(rule: Rule) -> Decision:
    return Decision(None, True, rule.name, rule.safety)


@cache
def _reachable(indication: Indication) -> dict[ApplicatorStatus, frozenset[ApplicatorStatus]]:
    """Every status reachable from each status by allowed moves (the transitive closure)."""
    moves = TRANSITIONS[indication]
    closure: dict[ApplicatorStatus, frozenset[ApplicatorStatus]] = {}
    for start in ApplicatorStatus:
        seen: set[ApplicatorStatus] = set()
        frontier = set(moves.get(start, frozenset()))
        while frontier:
            status = frontier.pop()
            if status not in seen:
                seen.add(status)
                frontier |= moves.get(status, frozenset())
        closure[start] = frozenset(seen)
    return closure
