"""The conflict rules, one row per case: what each rule decides when both sides changed a field."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sync.rules import (
    RULES,
    SKEW_THRESHOLD_MS,
    Action,
    Kind,
    RuleContext,
    decide,
    merge,
    rule_for,
    same,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sync-protocol.md"
HELD = "<held>"  # the expected outcome when a person must decide
EARLY, LATE = "001790000000000-000000-st-a", "001790000000001-000000-st-b"
ROLES = {"u-hospital": "hospital", "u-hospital-2": "hospital", "u-alphatau": "alphatau", "u-admin": "admin"}


@dataclass(frozen=True)
class Case:
    name: str
    table: str
    field: str
    local: Any
    server: Any
    base: Any
    expected: Any  # the value that stands, or HELD
    safety: bool = False  # for HELD: a safety conflict
    rule: str | None = None
    ctx: dict[str, Any] = field(default_factory=dict)


def _ctx(**overrides: Any) -> RuleContext:
    values: dict[str, Any] = {
        "local_hlc": LATE,
        "local_offset_ms": 0,
        "server_hlcs": {"comments": EARLY, "surgeon": EARLY, "reason_text": EARLY, "lot": EARLY},
        "server_offsets": {"comments": 0, "surgeon": 0, "reason_text": 0, "lot": 0},
        "role_of": ROLES.get,
    }
    return RuleContext(**(values | overrides))


def _ctx_for_latest(name: str) -> dict[str, Any]:
    return {"server_hlcs": {name: EARLY}, "server_offsets": {name: 0}}


def _records(leader: str, local: Any, server: Any, base: Any) -> dict[str, Any]:
    return {"local_record": {leader: local}, "server_record": {leader: server}, "local_base": {leader: base}}


MANUAL = [
    Case(f"{t}.{f} is held for a person", t, f, "mine", "theirs", "before", HELD, safety=True, rule="manual")
    for (t, f), rule in RULES.items()
    if rule.kind is Kind.MANUAL
]

COMPLETION = [
    Case("completion: true wins, local completes", "treatments", "is_complete", True, False, False, True),
    Case("completion: true wins, server completed", "treatments", "is_complete", False, True, False, True),
    Case(
        "completed_by comes from the completing side (local)",
        "treatments",
        "completed_by",
        "u-local",
        "u-server",
        None,
        "u-local",
        rule="follows_is_complete",
        ctx=_records("is_complete", True, False, False),
    ),
    Case(
        "completed_at comes from the completing side (server)",
        "treatments",
        "completed_at",
        "2026-11-26T10:00:00+00:00",
        "2026-11-26T09:00:00+00:00",
        None,
        "2026-11-26T09:00:00+00:00",
        ctx=_records("is_complete", False, True, False),
    ),
    Case(
        "both completed: the first completion (server) stands",
        "treatments",
        "completed_by",
        "u-local",
        "u-server",
        None,
        "u-server",
        ctx=_records("is_complete", True, True, False),
    ),
]

STATUS = [
    Case("status: loaded beats opened", "applicators", "status", "LOADED", "OPENED", "SEALED", "LOADED"),
    Case(
        "status: server's loaded beats opened",
        "applicators",
        "status",
        "OPENED",
        "LOADED",
        "SEALED",
        "LOADED",
    ),
    Case(
        "status: reached through several moves",
        "applicators",
        "status",
        "INSERTED",
        "OPENED",
        "SEALED",
        "INSERTED",
    ),
    Case("status: faulty after opened", "applicators", "status", "OPENED", "FAULTY", "SEALED", "FAULTY"),
    Case(
        "status: inserted vs faulty held", "applicators", "status", "INSERTED", "FAULTY", "LOADED", HELD, True
    ),
    Case(
        "status: two terminals held", "applicators", "status", "DISPOSED", "DISCHARGED", "OPENED", HELD, True
    ),
    Case(
        "status: skin goes straight to inserted",
        "applicators",
        "status",
        "SEALED",
        "INSERTED",
        "SEALED",
        "INSERTED",
        ctx={"indication": "skin"},
    ),
    Case(
        "status: loaded is not a skin state",
        "applicators",
        "status",
        "LOADED",
        "SEALED",
        "SEALED",
        HELD,
        True,
        ctx={"indication": "skin"},
    ),
    Case(
        "status: pancreas never goes sealed to inserted",
        "applicators",
        "status",
        "INSERTED",
        "SEALED",
        "SEALED",
        "INSERTED",  # through OPENED and LOADED
        ctx={"indication": "pancreas"},
    ),
    Case(
        "status: unknown indication allows both workflows",
        "applicators",
        "status",
        "INSERTED",
        "SEALED",
        "OPENED",
        "INSERTED",
        ctx={"indication": "unknown"},
    ),
    Case("status: not a status at all", "applicators", "status", "BROKEN", "OPENED", "SEALED", HELD, True),
    Case(
        "deployed seeds follow the status that won",
        "applicators",
        "deployed_seeds",
        10,
        0,
        0,
        10,
        ctx=_records("status", "INSERTED", "LOADED", "LOADED"),
    ),
    Case(
        "one status, two seed counts: held",
        "applicators",
        "deployed_seeds",
        3,
        5,
        0,
        HELD,
        True,
        ctx=_records("status", "FAULTY", "FAULTY", "OPENED"),
    ),
    Case(
        "seed count of a held status is held",
        "applicators",
        "deployed_seeds",
        10,
        4,
        0,
        HELD,
        True,
        ctx=_records("status", "INSERTED", "FAULTY", "LOADED"),
    ),
    Case(
        "usage follows the status",
        "applicators",
        "usage",
        "full",
        "none",
        "none",
        "full",
        ctx=_records("status", "INSERTED", "LOADED", "LOADED"),
    ),
]

REMOVAL = [
    Case("removal: true wins", "applicators", "is_removed", False, True, False, True),
    Case(
        "removal time from the removing side",
        "applicators",
        "removal_time",
        None,
        "2026-12-10T08:00:00+00:00",
        None,
        "2026-12-10T08:00:00+00:00",
        ctx=_records("is_removed", False, True, False),
    ),
    Case(
        "removed_by from the removing side (local)",
        "applicators",
        "removed_by",
        "u-local",
        None,
        None,
        "u-local",
        ctx=_records("is_removed", True, False, False),
    ),
]

LATEST = [
    Case("comments: the later clock wins", "applicators", "comments", "mine", "theirs", None, "mine"),
    Case(
        "comments: the earlier local edit loses",
        "applicators",
        "comments",
        "mine",
        "theirs",
        None,
        "theirs",
        ctx={"local_hlc": "001789999999999-000000-st-a"},
    ),
    Case("surgeon: latest wins", "treatments", "surgeon", "Dr. A", "Dr. B", "Dr. C", "Dr. A"),
    Case("seed reason text: latest wins", "removed_seeds", "reason_text", "a", "b", None, "a"),
    Case("an unlisted field: latest wins", "applicators", "lot", "L2", "L3", "L1", "L2", rule="latest_wins"),
    Case(
        "local clock skewed: held",
        "applicators",
        "comments",
        "mine",
        "theirs",
        None,
        HELD,
        rule="latest_wins_skewed",
        ctx={"local_offset_ms": SKEW_THRESHOLD_MS + 1},
    ),
    Case(
        "server side's clock skewed (negative): held",
        "applicators",
        "comments",
        "mine",
        "theirs",
        None,
        HELD,
        rule="latest_wins_skewed",
        ctx={"server_offsets": {"comments": -(SKEW_THRESHOLD_MS + 1)}},
    ),
    Case(
        "an offset just within the threshold is trusted",
        "applicators",
        "comments",
        "mine",
        "theirs",
        None,
        "mine",
        ctx={"local_offset_ms": SKEW_THRESHOLD_MS},
    ),
    Case(
        "a clock never measured is not trusted",
        "applicators",
        "comments",
        "mine",
        "theirs",
        None,
        HELD,
        rule="latest_wins_skewed",
        ctx={"local_offset_ms": None},
    ),
    Case(
        "no clock for the server value: held",
        "applicators",
        "comments",
        "mine",
        "theirs",
        None,
        HELD,
        rule="latest_wins_no_clock",
        ctx={"server_hlcs": {}, "server_offsets": {"comments": 0}},
    ),
]

APPROVAL = [
    Case(
        "signature: admin beats hospital",
        "treatments",
        "signed_by_user_id",
        "u-admin",
        "u-hospital",
        None,
        "u-admin",
    ),
    Case(
        "signature: alphatau beats hospital",
        "treatments",
        "signed_by_user_id",
        "u-hospital",
        "u-alphatau",
        None,
        "u-alphatau",
    ),
    Case(
        "signature: same role is unclear",
        "treatments",
        "signed_by_user_id",
        "u-hospital",
        "u-hospital-2",
        None,
        HELD,
    ),
    Case(
        "signature: unknown user is unclear",
        "treatments",
        "signed_by_user_id",
        "u-ghost",
        "u-hospital",
        None,
        HELD,
    ),
    Case(
        "signer's name travels with the signature that won",
        "treatments",
        "signer_name",
        "Admin Person",
        "Nurse Person",
        None,
        "Admin Person",
        ctx=_records("signed_by_user_id", "u-admin", "u-hospital", None),
    ),
]

# Every other listed field, generated from the table itself so that a new entry gets a case too.
LEADER_WON_LOCALLY = {
    "is_complete": (True, False, False),
    "status": ("INSERTED", "LOADED", "LOADED"),
    "is_removed": (True, False, False),
    "signed_by_user_id": ("u-admin", "u-hospital", None),
}
LISTED = [
    *(
        Case(f"{t}.{f}: latest wins", t, f, "mine", "theirs", None, "mine", ctx=_ctx_for_latest(f))
        for (t, f), rule in RULES.items()
        if rule.kind is Kind.LATEST_WINS
    ),
    *(
        Case(
            f"{t}.{f}: follows {rule.leader}",
            t,
            f,
            "mine",
            "theirs",
            None,
            "mine",
            ctx=_records(rule.leader or "", *LEADER_WON_LOCALLY[rule.leader or ""]),
        )
        for (t, f), rule in RULES.items()
        if rule.kind is Kind.FOLLOWS
    ),
]

CASES = [*MANUAL, *COMPLETION, *STATUS, *REMOVAL, *LATEST, *APPROVAL, *LISTED]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule(case: Case) -> None:
    decision = decide(case.table, case.field, case.local, case.server, case.base, _ctx(**case.ctx))

    if case.expected == HELD:
        assert decision.manual, decision
        assert decision.is_safety == case.safety
    else:
        assert not decision.manual and decision.value == case.expected, decision
        assert not decision.is_safety  # a value a rule chose is never a safety conflict
    if case.rule is not None:
        assert decision.rule == case.rule


def test_every_rule_of_the_table_has_a_case() -> None:
    assert set(RULES) <= {(c.table, c.field) for c in CASES}
    assert {rule_for(c.table, c.field).kind for c in CASES} == set(Kind)


def test_rule_names_fit_the_conflict_tables() -> None:
    assert max(len(rule.name) for rule in RULES.values()) <= 32


def test_the_documentation_prints_every_rule() -> None:
    text = DOCS.read_text()
    missing = [f"{t}.{f}" for (t, f) in RULES if f"`{f}`" not in text]
    assert not missing, f"docs/sync-protocol.md does not mention {missing}"


# --- merging a whole change -------------------------------------------------------------------
def test_fields_only_one_side_changed_are_taken_and_equal_ones_left() -> None:
    server = {"status": "OPENED", "comments": "server's", "lot": "L1"}
    changed = {"comments": ["server's", "mine"], "lot": ["L0", "L1"]}

    outcomes = {o.field: o for o in merge("applicators", changed, server, _ctx())}

    assert outcomes["comments"].action is Action.TAKE and not outcomes["comments"].contested
    assert outcomes["lot"].action is Action.KEEP and not outcomes["lot"].contested


def test_a_held_status_holds_its_seed_count_even_where_the_server_never_touched_it() -> None:
    server = {"status": "DISCHARGED", "deployed_seeds": 0}
    local = {"status": "INSERTED", "deployed_seeds": 10}
    changed = {"status": ["LOADED", "INSERTED"], "deployed_seeds": [0, 10]}
    ctx = _ctx(local_record=local, server_record=server, local_base={"status": "LOADED", "deployed_seeds": 0})

    outcomes = {o.field: o for o in merge("applicators", changed, server, ctx)}

    assert outcomes["status"].action is Action.HOLD and outcomes["status"].is_safety
    assert outcomes["deployed_seeds"].action is Action.HOLD and outcomes["deployed_seeds"].is_safety
    assert outcomes["deployed_seeds"].rule == "follows_status"


def test_a_lost_status_drops_its_companions() -> None:
    server = {"status": "INSERTED", "status_changed_at": "2026-11-26T10:00:00+00:00"}
    local = {"status": "LOADED", "status_changed_at": "2026-11-26T09:30:00+00:00"}
    changed = {
        "status": ["OPENED", "LOADED"],
        "status_changed_at": ["2026-11-26T09:00:00+00:00", local["status_changed_at"]],
    }
    ctx = _ctx(local_record=local, server_record=server, local_base={k: v[0] for k, v in changed.items()})

    outcomes = {o.field: o for o in merge("applicators", changed, server, ctx)}

    assert outcomes["status"].action is Action.KEEP and outcomes["status"].contested
    assert outcomes["status_changed_at"].action is Action.KEEP
    assert outcomes["status_changed_at"].value == server["status_changed_at"]


def test_two_spellings_of_one_instant_are_the_same_value() -> None:
    assert same("2026-11-26T09:00:00Z", "2026-11-26T09:00:00+00:00")
    assert same("2026-11-26T11:00:00+02:00", "2026-11-26T09:00:00+00:00")
    assert not same("2026-11-26T09:00:00", "2026-11-26T09:00:00+00:00")  # naive is not an instant
    assert not same("2026-11-26", "2026-11-27") and same(2, 2.0)
